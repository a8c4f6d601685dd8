"""A user the run has never seen: a list from a handful of items, at once.

The user's device starts a personal encoder as any new client would (the run's initial values for its
items' rows and the other encoder parameters; with ``model.input_tie`` those rows already read the
received decoder rows, so the very first code reflects the items), optionally folds it in with a few
local steps of the run's own local loss against the received (frozen) decoder, and scores every item
with the received decoder, blended towards the nearest federated prototype when the run has them. Nothing
leaves the device: the decoder and prototypes are what every client already receives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from federation.engine import prototypes as proto
from federation.engine.reference import reference_client_update
from recsys.errors import ConfigError, FedrecError
from recsys.models.autoencoder import ENCODER_KEYS, decode_hidden, encode, init_params, input_values, item_rows


@dataclass(frozen=True)
class FoldIn:
    """steps: local SGD steps on the new user's items (0: the fresh encoder as it starts); lr: their step
    size (None: the run's base learning rate)."""
    steps: int = 0
    lr: float | None = None


def parse_history(data, text: str) -> np.ndarray:
    """"id1,id2,..." (external item ids) -> (k,) item indices, in order, each once. One clear error for
    an empty list or an unknown id."""
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids:
        raise FedrecError("--history: give at least one item id, e.g. --history \"50,181\"")
    out = []
    for t in ids:
        try:
            i = data.item_index(t)
        except FedrecError:
            raise FedrecError(f"--history: unknown item id {t!r} ({data.name} has {data.n_items} items)") from None
        if i not in out:
            out.append(i)
    return np.asarray(out, dtype=np.int64)


def check_supported(fed) -> None:
    """Refuse (ConfigError) a strategy whose clients keep more than an encoder: a new user has none of it."""
    extra = set(fed.strategy.personal) - set(ENCODER_KEYS)
    if extra:
        raise ConfigError(f"new users: strategy {fed.strategy.name} keeps {', '.join(sorted(extra))} per client, "
                          "which a new user does not have; onboarding needs a personal encoder only "
                          "(e.g. personalfr, feddpa, fedloge)")


def new_client_start(fed) -> dict[str, torch.Tensor]:
    """The encoder every new client of this run starts from: the run's initial values (enc_in (N, H1) for
    every item). Computing them draws the whole initial model (about 1 s at 100,000 items): a caller
    serving many new users keeps this and passes it to new_user_code / new_user_scores."""
    init = init_params(fed.shape, fed.cfg.seed, fed.dtype)
    return {k: init[k] for k in ENCODER_KEYS}


def new_user_code(fed, items: np.ndarray, ratings: np.ndarray | None = None, fold: FoldIn = FoldIn(),
                  start: dict[str, torch.Tensor] | None = None, embedder: bool = True) -> torch.Tensor:
    """The code h3 (H1,) a new client with ``items`` (k,) (and explicit ``ratings`` (k,)) scores with.
    start: new_client_start(fed), if the caller keeps it. embedder: use the run's user embedder when it
    has one (False: a fresh encoder only, as in a run without one)."""
    check_supported(fed)
    shape = fed.shape
    items_t = torch.as_tensor(np.asarray(items, dtype=np.int64))
    r = np.ones(len(items)) if ratings is None else np.asarray(ratings, dtype=np.float64)
    x = torch.as_tensor(input_values(shape, r, np.array([len(items)])), dtype=fed.dtype)        # (k,)
    received = {k: v.detach().cpu() for k, v in fed.global_p.items()}
    content = fed.content.cpu() if fed.content is not None else None
    ze = (embedder_vector(fed, items_t, torch.as_tensor(r, dtype=fed.dtype), received)
          if shape.embedder_heads and embedder else None)
    if ze is not None and fold.steps == 0:
        with torch.no_grad():
            return decode_hidden(received, ze[None])[0]                                         # (H1,)
    init = new_client_start(fed) if start is None else start
    personal = {k: (init[k][items_t] if k == "enc_in" else init[k]) for k in ENCODER_KEYS}
    if ze is not None:                  # the fresh encoder starts at the embedder's vector (its h2 == z_e)
        personal["enc_b2"] = start_at(personal, ze, x, shape.input_tie * item_rows(received, content, items_t)
                                      if shape.input_tie else None)
    if fold.steps > 0:
        lr = fold.lr if fold.lr is not None else fed.cfg.sgd.lr
        newcomer = fed.train.shape[0]          # a client id no trained client has (its dropout masks)
        trained, _ = reference_client_update(shape, fed.strategy, items_t, x, received, personal, fed.cfg.sgd, lr,
                                             fold.steps, fed.cfg.seed, fed.round, newcomer, content,
                                             fed.content_drop.cpu() if fed.content_drop is not None else None)
        personal = {k: trained[k] for k in ENCODER_KEYS}
    p = dict(personal)
    if shape.input_tie:
        p["enc_in"] = p["enc_in"] + shape.input_tie * item_rows(received, content, items_t)
    p["dec_W1"], p["dec_b1"] = received["dec_W1"], received["dec_b1"]
    seg = torch.zeros(len(items), dtype=torch.long)
    with torch.no_grad():
        return decode_hidden(p, encode(p, seg, x, 1))[0]                                       # (H1,)


def embedder_vector(fed, items: torch.Tensor, ratings: torch.Tensor,
                    received: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """z_e (H2,): the run's shared user embedder (a ``persona`` run) over a history of ``items`` (k,) with
    ``ratings`` (k,) (implicit: ones). No personal parameter. received: the global parameters on the CPU,
    if the caller has them."""
    from federation.strategies.persona import entry_values
    from recsys.models.embedder import user_vector

    g = {k: v.detach().cpu() for k, v in fed.global_p.items()} if received is None else received
    content = fed.content.cpu().to(fed.dtype) if fed.content is not None else None
    seg = torch.zeros(len(items), dtype=torch.long)
    with torch.no_grad():
        return user_vector(g, item_rows(g, content, items), entry_values(fed.shape, ratings), seg, 1)[0]


def start_at(personal: dict[str, torch.Tensor], z: torch.Tensor, x: torch.Tensor, tie: torch.Tensor | None
             ) -> torch.Tensor:
    """enc_b2 (H2,) that makes a fresh encoder's output h2 = tanh(W2 h1 + b2) equal z (H2,) for its
    input x (k,): b2 = atanh(z) - W2 h1 (z kept inside (-1, 1))."""
    enc = personal["enc_in"] if tie is None else personal["enc_in"] + tie
    with torch.no_grad():
        h1 = torch.tanh(x @ enc + personal["enc_b1"])                                            # (H1,)
        return torch.atanh(z.clamp(-1 + 1e-6, 1 - 1e-6)) - personal["enc_W2"] @ h1


def new_user_scores(fed, items: np.ndarray, ratings: np.ndarray | None = None, fold: FoldIn = FoldIn(),
                    start: dict[str, torch.Tensor] | None = None, embedder: bool = True) -> np.ndarray:
    """(N,) scores of every item for a new client; its own items are -inf."""
    h3 = new_user_code(fed, items, ratings, fold, start, embedder)[None].to(fed.device)
    with torch.no_grad():
        if fed.prototypes is not None:
            h3 = proto.blend(h3, fed.prototypes, fed.prototype_blend)
        s = fed.strategy.score(fed.global_p, h3, {}, fed.content)[0].float().cpu().numpy()
    s[np.asarray(items)] = -np.inf
    return s


def recommend_new_user(run, history: str, k: int = 10, fold: FoldIn = FoldIn()) -> list[dict]:
    """Top-k for a user the run has never seen, from a comma list of item ids (items the user likes:
    an explicit run reads each as rated at the top of the scale)."""
    items = parse_history(run.data, history)
    ratings = None
    if run.fed.shape.mode == "explicit":
        ratings = np.full(len(items), float(run.data.ratings.data.max()))
    s = new_user_scores(run.fed, items, ratings, fold)
    top = np.argsort(-s, kind="stable")[:k]
    return [{"rank": j + 1, "item_id": str(run.data.item_ids[i]), "title": run.data.title(int(i)), "score": float(s[i])}
            for j, i in enumerate(top) if np.isfinite(s[i])]
