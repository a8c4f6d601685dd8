"""Single-client reference update: one user's local training written plainly with nn.Module,
torch.optim.SGD and clip_grad_norm_. Slow and obviously correct; the vectorized cohort engine
must reproduce it (tests/test_engine_equivalence.py)."""
from __future__ import annotations

import torch
from torch import nn

from federation.engine.local_sgd import SGDConfig
from federation.strategies.base import Strategy
from recsys.models.autoencoder import CONTENT_KEY, ITEM_ROW_KEYS, AEShape, dropout_keep, item_rows, rows_kept


class ClientModel(nn.Module):
    """The autoencoder as one client sees it: only the encoder rows of its own items and the decoder
    rows it holds (its own items, or all of them)."""

    def __init__(self, shape: AEShape, start: dict[str, torch.Tensor], out_items: torch.Tensor,
                 frozen_out: torch.Tensor | None, frozen_ob: torch.Tensor | None,
                 content: torch.Tensor | None = None, tie_rows: torch.Tensor | None = None):
        super().__init__()
        self.shape = shape
        self.p = nn.ParameterDict({k: nn.Parameter(v.clone()) for k, v in start.items()})
        self.out_items = out_items
        self.frozen_out, self.frozen_ob = frozen_out, frozen_ob
        self.content = content                                   # (N, F) fixed item content, or None
        self.tie_rows = tie_rows                                 # (L, H1) alpha * received rows (input_tie), or None

    def forward(self, x: torch.Tensor, keep: torch.Tensor, rows_on: float = 1.0,
                content: torch.Tensor | None = None) -> torch.Tensor:
        """x (L,) input values of the client's items -> scores of its held rows (M,) or all items (N,).
        rows_on 0: this step scores from content alone (the rows stay in the graph with a zero
        gradient, so weight decay and momentum still move them, as in the closed-form engine).
        content (N, F): the content this step scores with, if not the model's own."""
        p = self.p
        c = self.content if content is None else content
        enc_in = p["enc_in"] if self.tie_rows is None else p["enc_in"] + self.tie_rows   # a constant: no grad
        h1 = torch.tanh(x @ enc_in + p["enc_b1"])
        h2 = torch.tanh(p["enc_W2"] @ h1 + p["enc_b2"])
        h3 = torch.tanh(p["dec_W1"] @ (h2 * keep) + p["dec_b1"])
        local = rows_on * (p["dec_out"] @ h3 + p["dec_ob"])
        g = h3 @ p[CONTENT_KEY] if CONTENT_KEY in p else None                       # (F,) projected user
        if g is not None:
            local = local + c[self.out_items] @ g
        if self.frozen_out is None:
            return local
        full = rows_on * (self.frozen_out @ h3 + self.frozen_ob)
        if g is not None:
            full = full + c @ g
        full = full.index_put((self.out_items,), local)
        return full


def reference_client_update(shape: AEShape, strategy: Strategy, items: torch.Tensor, values: torch.Tensor,
                            global_p: dict[str, torch.Tensor], personal: dict[str, torch.Tensor], sgd: SGDConfig,
                            lr: float, local_epochs: int, seed: int, rnd: int, user: int,
                            content: torch.Tensor | None = None, content_drop: torch.Tensor | None = None
                            ) -> tuple[dict[str, torch.Tensor], float]:
    """Train one client. items (L,) its item ids, values (L,) its encoder inputs (see input_values).

    personal: this client's personal parameters (item-row keys hold only its items' rows)
    returns the trained value of every parameter it holds and its mean local loss
    """
    n = shape.n_items
    out_items = items if strategy.rows == "touched" else torch.arange(n)
    start = {}
    keys = ("enc_in", "enc_b1", "enc_W2", "enc_b2", "dec_W1", "dec_b1", "dec_out", "dec_ob")
    for k in keys + ((CONTENT_KEY,) if CONTENT_KEY in global_p else ()):
        if k in strategy.personal:
            start[k] = personal[k]
        elif k in ITEM_ROW_KEYS:
            start[k] = global_p[k][items if k == "enc_in" else out_items]
        else:
            start[k] = global_p[k]
    frozen = strategy.rows == "touched" and shape.mode == "implicit"
    dt = start["enc_in"].dtype
    tie = shape.input_tie * item_rows(global_p, content, items).to(dt) if shape.input_tie else None
    model = ClientModel(shape, start, out_items, global_p["dec_out"] if frozen else None,
                        global_p["dec_ob"] if frozen else None,
                        content.to(dt) if content is not None else None, tie)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=sgd.momentum, nesterov=sgd.nesterov,
                          weight_decay=sgd.weight_decay)
    x = values.to(dt)
    total = 0.0
    for step in range(local_epochs):
        keep = dropout_keep(seed, rnd, torch.tensor([user]), step, shape.h2, shape.dropout)[0].to(x.dtype)
        on = float(rows_kept(seed, rnd, torch.tensor([user]), step, shape.content_dropout)[0]) if content is not None else 1.0
        drop = content_drop.to(x.dtype) if on == 0.0 and content_drop is not None else None
        scores = model(x, keep, on, drop)             # a content-only step scores with content_drop
        if shape.mode == "explicit":
            pred = scores if strategy.rows == "touched" else scores[items]
            loss = ((pred - x) ** 2).mean()
        else:
            logp = torch.log_softmax(scores, 0)
            loss = -logp[items].sum()
        opt.zero_grad()
        loss.backward()
        if sgd.clip_norm:
            nn.utils.clip_grad_norm_(model.parameters(), sgd.clip_norm)
        opt.step()
        total += float(loss.detach())
    return {k: v.detach() for k, v in model.p.items()}, total / max(1, local_epochs)
