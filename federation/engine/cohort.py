"""Vectorized cohort engine: trains many clients at once, in closed form.

Why closed form: a client's local data set is one example (its rating row), so the gradient of every
weight matrix at every local step is rank one (delta_out x input), and SGD with momentum, Nesterov and
weight decay is linear. After s local steps a client's parameter is therefore
    P_s = a[s] * P_0 + sum_{j<s} b[s][j] * c_j * u_j v_j^T            (see local_sgd.sgd_coefficients)
with scalars a, b shared by all clients, c_j the client's gradient-clipping factor and (u_j, v_j) the
rank-one factors it computed at step j. The forward pass needs only P_0 @ h (one GEMM for layers whose
start value is the shared global) plus inner products with earlier factors; no client ever
materializes a copy of a shared layer during training. Trained values are materialized once at the end
(``value``), or summed over clients directly (``weighted_sum``: one GEMM), which is all FedAvg needs.

``federation.engine.reference.reference_client_update`` is the plain one-client nn.Module/torch.optim version;
tests/test_engine_equivalence.py checks that both give the same updates and aggregates.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from federation.engine import kernels
from federation.engine.local_sgd import SGDConfig, sgd_coefficients
from federation.engine.state import ClientStore, Cohort
from federation.strategies.base import Strategy
from recsys.models.autoencoder import (CONTENT_KEY, AEShape, client_loss, item_rows,
                                      rows_kept_steps, segment_sum)

# For each parameter: the names of its (u, v) gradient factors; v None for vectors.
# enc_in rows use u = delta1 per interaction scaled by the input value x; rows use u = e per row.
_FACTORS = {"enc_b1": ("d1", None), "enc_W2": ("d2", "h1"), "enc_b2": ("d2", None),
            "dec_W1": ("d3", "z"), "dec_b1": ("d3", None),
            # content projection: y_i += h3 . (P c_i)  =>  dL/dP = h3 (sum_i e_i c_i)^T = h3 q^T
            CONTENT_KEY: ("h3", "q")}


class Gate:
    """A personal transform of the item layer's input with its own per-client parameters (pFedGate's gate):
    ``apply(h3, values) -> h3'`` (B, H1); ``values`` (B, ...) start values, trained by plain SGD."""

    def __init__(self, apply, values: dict[str, torch.Tensor]):
        self.apply, self.values = apply, values


@dataclass
class FactoredResult:
    """The trained state of a cohort: start values + per-step rank-one factors."""
    cohort: Cohort
    all_rows: bool                          # decoder rows: every item (B, N) vs own items (T,)
    a_end: float
    b_end: list[float]
    start: dict[str, torch.Tensor]          # per-client (B|T, ...) or shared (unbatched) start values
    per_client: set[str]                    # keys whose start value is per client (B, ...)
    per_row: set[str]                       # item-row keys whose start value is per interaction (T, ...)
    # Factors of all steps, (B|T, S, ...) per name (d1, h1, d2, z, d3, h3, e, c[, q]); "e" is (T, S)
    # for own rows and (B, S, N) for all rows. train_cohort writes step s into [:, s].
    hist: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None        # (B,) mean loss over local steps
    store: ClientStore | None = None        # where personal start values not in ``start`` are read from
    work: set[str] = field(default_factory=set)   # start values in the store's reusable buffers
    committed: bool = False                 # commit() has written (and may have overwritten) the start values
    written: set[str] = field(default_factory=set)   # personal keys the kernel already wrote into the store
    dtype: torch.dtype = torch.float32      # compute dtype of the values
    _item_order: tuple | None = field(default=None, repr=False)   # (entries sorted by item, CSR row starts)
    personal: dict[str, torch.Tensor] = field(default_factory=dict)   # a strategy's own personal values, trained
                                                                      # outside the closed form (split_update)
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)      # shared values set after training (pFedGate's
                                                                      # dropped blocks): value and sums use them

    @property
    def K(self) -> torch.Tensor:
        """(B, S) each step's end coefficient times the client's clipping factor."""
        return self.hist["c"] * torch.tensor(self.b_end, dtype=self.hist["c"].dtype, device=self.hist["c"].device)

    def _enc_in_step_sum(self, K: torch.Tensor) -> torch.Tensor:
        """(B, H1): g_u with trained enc_in row i = a_end * start row i + x_i * g_u."""
        return _bvm(K, self.hist["d1"])

    def _UV(self, key: str, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, S, out) scaled output factors and (B, S, in) input factors (None for vectors) of key."""
        u, v = _FACTORS[key]
        return K[:, :, None] * self.hist[u], (self.hist[v] if v else None)

    def _start(self, key: str) -> torch.Tensor:
        if key in self.written:
            raise RuntimeError(f"{key}: the kernel wrote the trained values into the store in place; read them there")
        if self.committed and (key in self.work or key not in self.start):
            raise RuntimeError(f"{key}: start value overwritten by commit(); read values before committing")
        if key not in self.start:              # personal encoder rows: materialized on demand
            return self.store.gather(key, self.cohort, self.dtype)
        v = self.start[key]
        return v.materialize() if isinstance(v, kernels.Rows) else v

    def commit(self, store: ClientStore, keys) -> None:
        """Write the trained personal ``keys`` into ``store`` (what a client keeps). Updates the
        encoder rows in their affine form and the per-client matrices (read in place as kernels.Rows,
        or held in the store's reusable buffers) in place; afterwards value() of those keys is refused."""
        c, K = self.cohort, self.K
        for k in keys:
            if k in self.written:
                continue
            if k in self.personal:
                store.scatter(k, c, self.personal[k])
            elif k == "enc_in" and "enc_in" not in self.start:
                store.update_encoder_rows(c, self.a_end, self._enc_in_step_sum(K))
            elif k in self.work and self.start[k].dim() == 3:
                U, V = self._UV(k, K)
                store.write_trained(k, c, self.start[k], self.a_end, U.transpose(1, 2), V)
            else:
                store.scatter(k, c, self.value(k))
        self.committed = True

    def value(self, key: str) -> torch.Tensor:
        """Each client's trained value: (B, ...) for per-client shapes, (T, ...) for its item rows,
        (B, N, ...) for all rows."""
        if key in self.personal:
            return self.personal[key]
        if key in self.fixed:
            return self.fixed[key]
        c = self.cohort
        P0 = self._start(key)
        batched = key in self.per_client or key == "enc_in" or (key in ("dec_out", "dec_ob") and not self.all_rows)
        if not batched:
            P0 = P0.unsqueeze(0).expand(c.size, *P0.shape)
        K = self.K                                                              # (B, S)
        if key == "enc_in":
            return torch.addcmul(self.a_end * P0, c.x[:, None], self._enc_in_step_sum(K).index_select(0, c.seg))
        if key in ("dec_out", "dec_ob"):
            if self.all_rows:
                KE = K[:, None, :] * self.hist["e"].transpose(1, 2)            # (B, N, S)
                if key == "dec_ob":
                    return self.a_end * P0 + KE.sum(-1)
                return torch.baddbmm(P0, KE, self.hist["h3"], beta=self.a_end)  # (B, N, H1)
            shared = P0.shape[0] != c.items.shape[0] or key not in self.per_row
            KE = K.index_select(0, c.seg) * self.hist["e"]                      # (T, S)
            if key == "dec_out" and shared and P0.dim() == 2:                   # no (T, S, H1) gather
                return kernels.rows_from_factors(P0, c.items, c.seg, KE, self.hist["h3"], self.a_end)
            if shared:
                P0 = P0.index_select(0, c.items)                                # shared start rows
            if key == "dec_ob":
                return self.a_end * P0 + KE.sum(-1)
            H = self.hist["h3"].index_select(0, c.seg)                          # (T, S, H1)
            return torch.baddbmm(P0.unsqueeze(1), KE.unsqueeze(1), H, beta=self.a_end).squeeze(1)
        U, V = self._UV(key, K)                                                 # (B, S, out), (B, S, in)
        if V is None:
            return self.a_end * P0 + U.sum(1)
        return torch.baddbmm(P0, U.transpose(1, 2), V, beta=self.a_end)          # (B, out, in)

    def row_sums(self, key: str, w: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For a shared item-row key trained on the clients' own items: sum_b w_b * row_b,i over the
        clients b holding item i, and the weight sum per item. Uses one sparse (N x B*S) x (B*S x H)
        product instead of materializing every client's rows."""
        c = self.cohort
        if key in self.fixed:
            from federation.strategies.aggregation import accumulate_rows

            return accumulate_rows(n_items, c.items, self.fixed[key], w.index_select(0, c.seg))
        wt = w.index_select(0, c.seg)                                           # (T,)
        wsum = torch.zeros(n_items, dtype=w.dtype, device=w.device).index_add_(0, c.items, wt)
        P0 = self.start[key]
        if key in self.per_row:                                                # enc_in: start is per row
            base = torch.zeros_like(self.start[key][:1]).expand(n_items, *P0.shape[1:]).clone()
            base.index_add_(0, c.items, self.a_end * wt.view(-1, *([1] * (P0.dim() - 1))) * P0)
        else:
            base = self.a_end * wsum.view(-1, *([1] * (P0.dim() - 1))) * P0
        K = self.K                                                              # (B, S)
        if key == "enc_in":
            # sum over holders of x_i * g_b: (N x B) sparse times g (B, H1)
            return self._item_sums((wt * c.x)[:, None], self._enc_in_step_sum(K).unsqueeze(1), base), wsum
        KE = (K.index_select(0, c.seg) * self.hist["e"]) * wt[:, None]          # (T, S)
        if key == "dec_ob":
            return base.index_add_(0, c.items, KE.sum(1)), wsum
        return self._item_sums(KE, self.hist["h3"], base), wsum

    def row_sums_all(self, keys, w: torch.Tensor, n_items: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """row_sums of each of ``keys``, with dec_out and dec_ob (shared start rows) taken together in
        one kernel pass over the entries by item where it applies. Each key gets its own weight-sum
        tensor (callers add into them in place)."""
        out = {}
        if ("dec_out" in keys and "dec_ob" in keys and not self.all_rows
                and not ({"dec_out", "dec_ob"} & (self.per_row | self.per_client | set(self.fixed)))):
            self._by_item_order(n_items)
            order, crow = self._item_order
            r = kernels.decoder_row_sums(order, crow, self.cohort.seg, w, self.K, self.hist["e"], self.hist["h3"],
                                         self.start["dec_out"], self.start["dec_ob"], self.a_end)
            if r is not None:
                out["dec_out"], out["dec_ob"] = (r[0], r[2]), (r[1], r[2].clone())
        for k in keys:
            if k not in out:
                out[k] = self.row_sums(k, w, n_items)
        return out

    def _item_sums(self, vals: torch.Tensor, H: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """base (N, D) plus, in row i, the sum over the entries t of item i and steps s of
        vals[t, s] * H[b_t, s]; vals (T, S), H (B, S, D). The kernel where it applies (adding into base
        in place: no zeroed (N, D) buffer and no extra pass), else one sparse (N x B*S) x (B*S x D)
        product."""
        n_items = base.shape[0]
        self._by_item_order(n_items)
        order, crow = self._item_order
        if kernels.item_sums(order, crow, self.cohort.seg, vals, H, base):
            return base
        return torch.addmm(base, self._by_item(vals, n_items), H.reshape(-1, H.shape[2]))

    def _by_item_order(self, n_items: int) -> None:
        if self._item_order is None:
            c = self.cohort
            order = _stable_order(c.items, n_items)                              # (T,) entries by item
            counts = torch.bincount(c.items, minlength=n_items)
            self._item_order = (order, torch.cat([counts.new_zeros(1), counts.cumsum(0)]))

    def _by_item(self, vals: torch.Tensor, n_items: int) -> torch.Tensor:
        """vals (T, S) per entry and step -> sparse CSR M (N, B*S) with M[i_t, b_t*S + s] = vals[t, s].
        CSR by item (entries sorted by item once per result) so M @ dense is one sparse-dense product
        without a COO coalesce."""
        c = self.cohort
        T, S = vals.shape
        self._by_item_order(n_items)
        order, crow = self._item_order
        cols = (c.seg.index_select(0, order)[:, None] * S + torch.arange(S, device=vals.device)).reshape(-1)
        with warnings.catch_warnings():      # "sparse CSR support is in beta": used for mm only
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow * S, cols, vals.index_select(0, order).reshape(-1),
                                           (n_items, c.size * S), check_invariants=False)

    def weighted_sum(self, key: str, w: torch.Tensor) -> torch.Tensor:
        """sum_b w_b * value_b for per-client-shaped keys and all-row decoder keys: one GEMM over all
        (client, step) pairs."""
        if key in self.fixed:
            return torch.tensordot(w, self.fixed[key], dims=([0], [0]))
        if key in self.personal:               # trained by the strategy's own phase (Persona's embedder)
            return torch.tensordot(w, self.personal[key], dims=([0], [0]))
        P0 = self.start[key]
        out = self.a_end * (torch.tensordot(w, P0, dims=([0], [0])) if key in self.per_client else w.sum() * P0)
        k = (w[:, None] * self.K).reshape(-1)                                   # (B*S,)
        BS = k.shape[0]
        if key in ("dec_out", "dec_ob"):
            E = self.hist["e"].reshape(BS, -1)                                  # (B*S, N)
            if key == "dec_ob":
                return out + k @ E                                              # (N,)
            return torch.addmm(out, (k[:, None] * E).T, self.hist["h3"].reshape(BS, -1))   # (N, H1)
        u, v = _FACTORS[key]
        U = self.hist[u].reshape(BS, -1)                                        # (B*S, out)
        if v is None:
            return out + k @ U
        return torch.addmm(out, (k[:, None] * U).T, self.hist[v].reshape(BS, -1))         # (out, in)


def _stable_order(items: torch.Tensor, n_items: int) -> torch.Tensor:
    """argsort(items, stable=True), (T,): on CPU with fewer than 2^16 items as numpy's radix sort of
    16-bit ids (~10x faster than torch's comparison sort at T ~ 8k)."""
    if items.device.type == "cpu" and n_items <= 1 << 16:
        return torch.from_numpy(np.argsort(items.numpy().astype(np.uint16), kind="stable"))
    return torch.argsort(items, stable=True)


def start_values(shape: AEShape, strategy: Strategy, cohort: Cohort, global_p: dict[str, torch.Tensor],
                 store: ClientStore | None, dtype: torch.dtype, in_place: bool = False, indexed: bool = False,
                 override: dict[str, torch.Tensor] | None = None
                 ) -> tuple[dict[str, torch.Tensor], set[str], set[str], set[str]]:
    """Start value of every parameter a client of the cohort holds; which keys start per client
    (B, ...), which item-row keys start per interaction (T, ...), and which start values are the
    store's own rows or its reusable buffers (in_place). Personal encoder rows are not gathered: the
    forward pass needs only their input-weighted sums (ClientStore.encoder_input). indexed: per-client
    matrices are read where they are (kernels.Rows), for the kernels of the written-out backward."""
    start, per_client, per_row, work = {}, set(), {"enc_in"}, set()
    keys = ("enc_in", "enc_b1", "enc_W2", "enc_b2", "dec_W1", "dec_b1", "dec_out", "dec_ob")
    for k in keys + ((CONTENT_KEY,) if CONTENT_KEY in global_p else ()):
        if k == "enc_in" and k in strategy.personal:
            continue
        if k in strategy.personal:
            # a client's own rows (T, ...), or a whole personal item layer (B, N, ...) (FedPer)
            per_client_key = k not in ("dec_out", "dec_ob") or k not in store.row_keys
            src = store.tensors[k]
            if (in_place and indexed and per_client_key and src.dim() == 3 and src.dtype == dtype
                    and kernels.available(dtype, src.device)):
                start[k] = store.rows(k, cohort)                   # no copy: the kernels read the store
            else:
                start[k] = store.gather(k, cohort, dtype, work=in_place and per_client_key)
            if in_place and per_client_key and src.dtype == dtype and k in _FACTORS:
                work.add(k)
            (per_client if per_client_key else per_row).add(k)
        elif k == "enc_in":
            start[k] = global_p[k].to(dtype).index_select(0, cohort.items)       # (T, H1)
        elif k in ("dec_out", "dec_ob") and strategy.rows == "touched":
            start[k] = global_p[k].to(dtype)                 # shared rows, read by item id when needed
        else:
            start[k] = global_p[k].to(dtype)                                     # shared, unbatched
    for k, v in (override or {}).items():    # per-client starts the server sent (Strategy.client_start)
        start[k] = v.to(dtype)
        (per_row if k in ("dec_out", "dec_ob") else per_client).add(k)
    return start, per_client, per_row, work


def cohort_pattern(cohort: Cohort, n_items: int, dtype: torch.dtype) -> torch.Tensor:
    """The cohort's entries as a sparse CSR (B, N) pattern (values 0); its rows are the clients, in the
    cohort's entry order (seg is sorted, items ascending within a client)."""
    counts = torch.bincount(cohort.seg, minlength=cohort.size)                   # (B,)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])                    # (B + 1,)
    with warnings.catch_warnings():      # "sparse CSR support is in beta": we use sampled_addmm and mm only
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cohort.items, torch.zeros(len(cohort.items), dtype=dtype,
                                                                       device=cohort.items.device),
                                       (cohort.size, n_items), check_invariants=False)


class _SampledScores(torch.autograd.Function):
    """y_t = h[b_t] . W[i_t] for the entries t = (b_t, i_t) of a CSR pattern; W is a constant.
    Forward: sampled dense-dense product (SDDMM); backward dL/dh = G @ W with G the sparse (B, N)
    matrix of dL/dy. Both cost T x H1 instead of the B x N x H1 of scoring every item."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, W: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(W)
        ctx.pattern = pattern
        return kernels.sampled_dots(pattern, h.detach(), W.detach())

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (W,) = ctx.saved_tensors
        return kernels.pattern_mm(ctx.pattern, g, W), None, None


def sampled_scores(h: torch.Tensor, W: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """h (B, H1), W (N, H1) constant, pattern (B, N) CSR with T entries -> (T,) scores, differentiable in h."""
    return _SampledScores.apply(h, W, pattern)


def _dots(U: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """U (B, s, n), v (B, n) -> (B, s): u_j . v per client."""
    # Broadcast and sum, not bmm: torch.bmm runs one (s x n)(n x 1) GEMV per client, ~4x slower at
    # B = 94..283, s <= 4, n = 256 on CPU (docs/benchmarks.md, speed, 2026-12-03 late).
    return (U * v.unsqueeze(1)).sum(2)


def _bvm(w: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """w (B, s), W (B, s, ...) -> (B, ...): sum_j w_j W_j per client."""
    return torch.bmm(w.unsqueeze(1), W.reshape(W.shape[0], W.shape[1], -1)).reshape(W.shape[0], *W.shape[2:])


def _mvT(P0: torch.Tensor, d: torch.Tensor, per_client: bool) -> torch.Tensor:
    """P0^T d: P0 (B, out, in) or shared (out, in), d (B, out) -> (B, in) (the backward of _mv)."""
    return kernels.bmtv(P0, d) if per_client else d @ P0


def _softmax_grad(a_s: float, seg, flat, cnt, y, full0, W_out) -> tuple[torch.Tensor, ...]:
    """Implicit mode with shared start rows: loss (B,), e = dL/dy (T,) and dL/dh3 (B, H1) through the
    rows' start term, from full0 (B, N) = h3 @ W^T + b (overwritten) and the own items' scores y (T,)."""
    B = full0.shape[0]
    full = full0.view(-1).index_put_((flat,), y).view(B, -1)                    # (B, N) in place: full0 is spent
    G = torch.softmax(full, 1)                                                  # (B, N)
    p = G.view(-1).index_select(0, flat)                                        # (T,) own items' probabilities
    # The loss is only reported (the gradient is G): the log of p, floored at the smallest normal
    # float so that an underflowed item counts ~-87 (float32) instead of -inf. One pass over (B, N)
    # fewer than log_softmax followed by exp.
    loss = -segment_sum(p.clamp_min(torch.finfo(p.dtype).tiny).log_(), seg, B)
    G.mul_(cnt[:, None])                                                        # (B, N) n_u softmax
    e = p * cnt.index_select(0, seg) - 1                                        # (T,) dL/dy
    G.view(-1).index_copy_(0, flat, a_s * e)
    return loss, e, G @ W_out                                                   # (B,), (T,), (B, H1)


def _shared_rows_backward(shape: AEShape, a_s: float, K: torch.Tensor | None, hist: dict[str, torch.Tensor],
                          s: int, x, seg, flat, cnt, y, full0, W_out, pattern, start, per_client, h1, t2, keep,
                          z, h3) -> tuple[torch.Tensor, ...]:
    """Loss (B,) and gradients d1 (B, H1), d2 (B, H2), d3 (B, H1), e (T,) of one local step of
    train_cohort's forward with shared start rows and no content, written out (autograd's result):
        explicit  L_u = sum_t (y_t - x_t)^2 / n_u             dL/dy_t = 2 (y_t - x_t) / n_u
        implicit  L_u = -sum_t log softmax(full_u)_{i_t}      dL/dfull_u = n_u softmax(full_u) - 1[own]
    where full (B, N) is full0 = h3 @ W^T + b with each client's own items replaced by y; y's start
    term is a_s times the same rows, so dL/dh3 = G @ W with G = dL/dfull, own items scaled by a_s.
    Earlier steps' terms (sum_j K_j (u_j . v + 1) w_j in the forward) give sum_j K_j (w_j . dw) u_j."""
    B = h3.shape[0]
    if shape.mode == "explicit":
        r = y - x                                                               # (T,)
        loss = segment_sum(r * r, seg, B) / cnt
        e = 2 * r / cnt.index_select(0, seg)                                    # (T,)
        dh3 = a_s * kernels.pattern_mm(pattern, e, W_out)                       # (B, H1) = dL/dy (B, N) @ W
    else:
        loss, e, dh3 = _softmax_grad(a_s, seg, flat, cnt, y, full0, W_out)
    if s:
        dh3 = dh3 + _bvm(K * segment_sum(e[:, None] * hist["e"][:, :s], seg, B), hist["h3"][:, :s])
    d3 = dh3 * (1 - h3 * h3)                                                    # (B, H1)
    dz = a_s * _mvT(start["dec_W1"], d3, "dec_W1" in per_client)                # (B, H2)
    if s:
        dz = kernels.add_lowrank_(dz, K, hist["d3"], d3, 0.0, hist["z"], s)
    d2 = dz * keep * (1 - t2 * t2)                                              # (B, H2)
    dh1 = a_s * _mvT(start["enc_W2"], d2, "enc_W2" in per_client)               # (B, H1)
    if s:
        dh1 = kernels.add_lowrank_(dh1, K, hist["d2"], d2, 0.0, hist["h1"], s)
    d1 = dh1 * (1 - h1 * h1)                                                    # (B, H1)
    return loss, d1, d2, d3, e


def _new_hist(shape: AEShape, B: int, T: int, S: int, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Empty step factors of train_cohort's manual path: (B, S, H) per client, e (T, S), c (B, S)."""
    dims = {"d1": shape.h1, "h1": shape.h1, "d2": shape.h2, "z": shape.h2, "d3": shape.h1, "h3": shape.h1}
    hist = {n: torch.empty((B, S, d), dtype=dtype, device=device) for n, d in dims.items()}
    hist["e"] = torch.empty((T, S), dtype=dtype, device=device)
    hist["c"] = torch.empty((B, S), dtype=dtype, device=device)
    return hist


def _mv(P0: torch.Tensor, h: torch.Tensor, per_client: bool) -> torch.Tensor:
    """P0 (B, out, in) or shared (out, in) times h (B, in) -> (B, out)."""
    return kernels.bmv(P0, h) if per_client else h @ P0.T


def train_cohort(shape: AEShape, strategy: Strategy, cohort: Cohort, global_p: dict[str, torch.Tensor],
                 store: ClientStore | None, sgd: SGDConfig, lr: float, local_epochs: int, seed: int, rnd: int,
                 dtype: torch.dtype = torch.float32, content: torch.Tensor | None = None,
                 content_drop: torch.Tensor | None = None, in_place: bool = False,
                 start: dict[str, torch.Tensor] | None = None, gate: "Gate | None" = None) -> FactoredResult:
    """Run ``local_epochs`` SGD steps (one per local epoch: a client has one example) for all clients.

    content (N, F): item content vectors when the model has a content projection (global_p['dec_P']).
    content_drop (N, F): the content a content-only step (AEShape.content_dropout) scores with, when it
    differs from ``content`` (holder-weighted content: those steps see every item at full weight).
    in_place: read personal per-client matrices from the store in place (kernels) or gather them into
    its reusable buffers; the caller must ``commit`` the result before the next in-place call on the
    same store. The fused kernels may write a personal matrix read in place straight into the store
    (its key is then in ``result.written``: commit skips it, value refuses it)."""
    a, b = sgd_coefficients(local_epochs, lr, sgd)
    all_rows = strategy.rows == "all"
    # start: per-client start values of shared parameters ((B, ...) / (T, ...) rows) in place of the
    # received global ones (FedCAC's customized models); rows with a per-client start are trained like
    # personal rows (the other items keep the global rows), the dense layers like personal layers.
    shared_rows = not all_rows and "dec_out" not in strategy.personal and "dec_out" not in (start or {})
    # The product's path (personalfr rows, no content) has its backward written out below: the same
    # gradients as autograd (tests/test_engine_equivalence.py) at a third of the tensor ops, which is
    # what a round of ~100 clients costs on a CPU. Other strategies and content models use autograd.
    manual = shared_rows and CONTENT_KEY not in global_p and gate is None
    gvals = {k: v.to(dtype).clone() for k, v in gate.values.items()} if gate is not None else {}
    gbuf: dict[str, torch.Tensor] = {}
    override = start
    start, per_client, per_row, work = start_values(shape, strategy, cohort, global_p, store, dtype, in_place,
                                                    indexed=manual, override=override)
    frozen = not all_rows and shape.mode == "implicit"
    res = FactoredResult(cohort, all_rows, a[-1], b[-1], start, per_client, per_row, store=store, work=work,
                         dtype=dtype)
    B, seg, items, x = cohort.size, cohort.seg, cohort.items, cohort.x.to(dtype)
    flat = seg * shape.n_items + items                                           # (T,) into (B*N)
    if shared_rows:
        W_out = global_p["dec_out"].to(dtype)                                    # (N, H1)
        if not frozen:
            pattern = cohort_pattern(cohort, shape.n_items, dtype)               # (B, N) sparse, T entries
            ob_t = global_p["dec_ob"].to(dtype).index_select(0, items)           # (T,)
    full0 = None
    xx1 = segment_sum(x * x, seg, B) + 1                                         # (B,) |x|^2 + 1 (bias)
    if "enc_in" in start:                                                        # shared rows (fedavg)
        E0x = segment_sum(x[:, None] * start["enc_in"], seg, B) + start["enc_b1"]    # (B, H1): constant
    else:
        E0x = store.encoder_input(cohort, dtype) + start["enc_b1"]

    tie = 0.0
    if shape.input_tie:   # the received rows' part of the encoder input: constant, so no decay and no grad
        R = item_rows({k: v.to(dtype) for k, v in global_p.items() if k in ("dec_out", CONTENT_KEY)},
                      content, items)                                            # (T, H1) received rows
        tie = shape.input_tie * segment_sum(x[:, None] * R, seg, B)              # (B, H1)
    loss_sum = torch.zeros(B, dtype=dtype, device=x.device)
    use_content = CONTENT_KEY in start
    if use_content:
        if CONTENT_KEY in per_client:
            raise ValueError("a personal content projection is not supported (strategy 'local')")
        C = content.to(dtype)                                                    # (N, F)
        Ct = None if all_rows else C.index_select(0, items)                      # (T, F) the clients' items
        P0 = start[CONTENT_KEY]                                                  # (H1, F)
        # Content-only steps add (1 - on) * m . (content_drop - content): precompute the difference.
        Cd = None if content_drop is None else content_drop.to(dtype) - C       # (N, F)
        Cdt = None if Cd is None or all_rows else Cd.index_select(0, items)     # (T, F)
    S = local_epochs
    cnt = segment_sum(torch.ones_like(x), seg, B).clamp(min=1)                   # (B,) interactions
    keep = kernels.dropout_keep_steps(seed, rnd, cohort.users, range(S), shape.h2, shape.dropout).to(dtype)   # (S, B, H2)
    kept = (rows_kept_steps(seed, rnd, cohort.users, range(S), shape.content_dropout).to(dtype)
            if use_content and shape.content_dropout > 0 else None)                                # (S, B)
    hist: dict[str, torch.Tensor] = {}   # factors of the steps so far, (B|T, S, ...); the result keeps them
    # A personal enc_W2 read in place from the store (in_place): the fused kernels write each client's
    # trained matrix back while it is still in cache, instead of commit() reading it once more.
    write_P2 = isinstance(start.get("enc_W2"), kernels.Rows)
    if manual and (shape.mode == "explicit" or frozen) and not use_content and kept is None:
        # The whole local loop as one kernel (kernels.local_steps_explicit / local_steps_implicit): a
        # client's own layer is read once per step (implicit, whose softmax products over all items are
        # BLAS calls inside the kernel) or once per round (explicit) instead of twice per step; the loop
        # below is their torch version.
        hist = _new_hist(shape, B, len(items), S, dtype, x.device)
        crow = torch.cat([seg.new_zeros(1), torch.bincount(seg, minlength=B).cumsum(0)])      # (B+1,)
        lead = (start["enc_W2"], start["enc_b2"], start["dec_W1"], start["dec_b1"], E0x,
                tie if torch.is_tensor(tie) else torch.zeros_like(E0x), xx1, keep, a, b, sgd.clip_norm, crow, items)
        ob = global_p["dec_ob"].to(dtype)
        if (kernels.local_steps_explicit(*lead, x, W_out, ob, cnt, hist, loss_sum, write_P2)
                if shape.mode == "explicit" else
                kernels.local_steps_implicit(*lead, W_out, ob, cnt, hist, loss_sum, write_P2)):
            res.hist, res.written = hist, ({"enc_W2"} if write_P2 else set())
            res.loss = loss_sum / max(1, local_epochs)
            return res
        hist = {}
    for s in range(S):
        # Earlier steps' rank-one terms, all j < s at once: sum_j K_j (u_j . v + 1) w_j as two bmm.
        K = hist["c"][:, :s] * torch.tensor(b[s][:s], dtype=dtype, device=x.device) if s else None   # (B, s)
        pre1 = a[s] * E0x + tie
        if s:
            pre1 = pre1 + xx1[:, None] * _bvm(K, hist["d1"][:, :s])
        if not manual:
            pre1 = pre1.detach().requires_grad_(True)    # depends on constants only: the graph's root
        h1 = torch.tanh(pre1)                                                    # (B, H1)
        pre2 = a[s] * (_mv(start["enc_W2"], h1, "enc_W2" in per_client) + start["enc_b2"])
        if s:
            pre2 = kernels.add_lowrank_(pre2, K, hist["h1"], h1, 1.0, hist["d2"], s)
        t2 = torch.tanh(pre2)
        z = t2 * keep[s]                                                         # (B, H2)
        pre3 = a[s] * (_mv(start["dec_W1"], z, "dec_W1" in per_client) + start["dec_b1"])
        if s:
            pre3 = kernels.add_lowrank_(pre3, K, hist["z"], z, 1.0, hist["d3"], s)
        h3 = torch.tanh(pre3)                                                    # (B, H1)
        if gate is not None:     # a personal transform of the item layer's input (pFedGate): h3 is its output
            gleaf = {k: v.detach().requires_grad_(True) for k, v in gvals.items()}
            h3 = gate.apply(h3, gleaf)
        g3 = K * _dots(hist["h3"][:, :s], h3) if s else None                     # (B, s) h3_j . h3 terms
        if use_content:
            # m = h3^T P_s in closed form: P_s = a_s P0 + sum_j k_j h3_j q_j^T (no bias term)
            m = a[s] * (h3 @ P0)                                                 # (B, F)
            if s:
                m = m + _bvm(g3, hist["q"][:, :s])
        if all_rows:
            y = a[s] * (_mv(start["dec_out"], h3, "dec_out" in per_client) + start["dec_ob"])   # (B, N)
        elif shared_rows and not frozen:
            # Start rows are the global rows and only the clients' own items are scored: a sampled
            # product over the cohort's (B, N) pattern, T dot products, no (T, H1) gather of rows.
            y = a[s] * (sampled_scores(h3, W_out, pattern) + ob_t)                       # (T,)
        elif shared_rows:
            # Start rows are the global rows and the implicit softmax needs every item's score: one GEMM.
            full0 = torch.addmm(global_p["dec_ob"].to(dtype), h3, W_out.T)                # (B, N)
            y = a[s] * full0.reshape(-1).index_select(0, flat)                           # (T,)
        else:
            if frozen:   # personal rows (local strategy): the other items keep the global start rows
                full0 = h3 @ global_p["dec_out"].to(dtype).T + global_p["dec_ob"].to(dtype)
            y = a[s] * ((start["dec_out"] * h3.index_select(0, seg)).sum(1) + start["dec_ob"])   # (T,)
        if s:                                    # the rows' earlier updates: sum_j k_j (h3_j . h3 + 1) e_j
            w = g3 + K
            y = y + (_bvm(w, hist["e"][:, :s]) if all_rows
                     else (w.index_select(0, seg) * hist["e"][:, :s]).sum(1))
        on = None
        if kept is not None:
            # Content-only steps (AEShape.content_dropout): the free rows' scores are switched off for
            # the whole step; their gradient below is then zero, weight decay still applies.
            on = kept[s]                                                         # (B,)
            y = y * (on[:, None] if all_rows else on.index_select(0, seg))
            full0 = full0 * on[:, None] if full0 is not None else None
        frozen_scores = full0 if frozen else None
        if use_content:
            drop = on is not None and Cd is not None     # content-only steps score with content_drop
            if all_rows:
                y = y + m @ C.T                                                  # (B, N)
                if drop:
                    y = y + (1 - on)[:, None] * (m @ Cd.T)
            else:
                mt = m.index_select(0, seg)                                      # (T, F)
                y = y + (mt * Ct).sum(1)                                         # (T,)
                if drop:
                    y = y + (1 - on.index_select(0, seg)) * (mt * Cdt).sum(1)
                if frozen:   # the other items' scores move with the projection the client trains
                    frozen_scores = full0 + m @ C.T                              # (B, N)
                    if drop:
                        frozen_scores = frozen_scores + (1 - on)[:, None] * (m @ Cd.T)
        if manual:
            loss, d1, d2, d3, e = _shared_rows_backward(
                shape, a[s], K, hist, s, x, seg, flat, cnt, y, full0, W_out, pattern if not frozen else None,
                start, per_client, h1, t2, keep[s], z, h3)
            grads = ()
        else:
            loss = client_loss(shape, y, seg, items, x, B, frozen_scores)
            roots = [pre1, pre2, pre3, y] + ([m] if use_content else [])
            gkeys = list(gvals)
            grads = torch.autograd.grad(loss.sum(), roots + [gleaf[k] for k in gkeys])
            ggrad = dict(zip(gkeys, grads[len(roots):]))
            grads = grads[:len(roots)]
            d1, d2, d3, e = grads[:4]
        if on is not None:                       # the rows' own gradient: dL/dy times the step's switch
            e = e * (on[:, None] if all_rows else on.index_select(0, seg))
        q = grads[4] if use_content else None                                    # (B, F) = sum_i e_i c_i
        # Per-client gradient norm over all parameters: |u v^T|^2 = |u|^2 |v|^2 (+ bias |u|^2).
        h1, z, h3 = h1.detach(), z.detach(), h3.detach()
        e_sq = (e * e).sum(1) if all_rows else segment_sum(e * e, seg, B)
        sq = ((d1 * d1).sum(1) * xx1 + (d2 * d2).sum(1) * ((h1 * h1).sum(1) + 1)
              + (d3 * d3).sum(1) * ((z * z).sum(1) + 1) + e_sq * ((h3 * h3).sum(1) + 1))
        if use_content:
            sq = sq + (q * q).sum(1) * (h3 * h3).sum(1)
        if gvals:
            for g in ggrad.values():
                sq = sq + (g * g).reshape(B, -1).sum(1)
        c = (sgd.clip_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0) if sgd.clip_norm else torch.ones_like(sq)
        for k, g in (ggrad.items() if gvals else ()):          # the transform's own parameters: plain SGD
            g = g * c.view(-1, *([1] * (g.dim() - 1)))
            if sgd.weight_decay:
                g = g + sgd.weight_decay * gvals[k]
            if sgd.momentum:
                gbuf[k] = g.clone() if k not in gbuf else gbuf[k].mul_(sgd.momentum).add_(g)
                g = g + sgd.momentum * gbuf[k] if sgd.nesterov else gbuf[k]
            gvals[k] = gvals[k] - lr * g
        step = {"d1": d1, "h1": h1, "d2": d2, "z": z, "d3": d3, "h3": h3, "e": e, "c": c,
                **({"q": q} if use_content else {})}
        if not hist:
            hist = {n: t.new_empty((t.shape[0], S, *t.shape[1:])) for n, t in step.items()}
        for n, t in step.items():
            hist[n][:, s] = t
        loss_sum += loss.detach()
    res.hist = hist
    res.loss = loss_sum / max(1, local_epochs)
    res.personal = gvals
    return res
