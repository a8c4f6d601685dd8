"""FedCAC (Wu et al., ICCV 2023, "Bold but Cautious"): each client's critical parameters are shared
only with collaborators whose critical parameters sit in the same places; the rest is FedAvg.

The equations, as PFLlib's ``clientcac.py`` / ``servercac.py`` compute them:

  sensitivity, per parameter, after local training:   c = |(θ_after − θ_before) ⊙ θ_after|          (1)
  critical mask, per tensor: the top τ of c            m = c ≥ t,  t = the ⌊τ·n⌋-th largest c      (2)
      (t ≤ 1e-10: t becomes the smallest nonzero c; ⌊τ·n⌋ = 0: nothing is critical)
  overlap of clients i and j                           o_ij = 1 − Σ|m_i − m_j| / (2 Σ m_i)          (3)
  collaborator threshold in round r (0-based)          θ_r = ō + (r + 1)/β · (max o − ō)           (4)
  collaborators of i                                   C_i = {i} ∪ {j ≠ i : o_ij ≥ θ_r}
  customized model                                     w̃_i = mean over j ∈ C_i of θ_j              (5)
  client i's next model                                θ_i ← m_i ⊙ w̃_i + (1 − m_i) ⊙ w_global      (6)

The global model is the average of the clients' trained models (an item row: of its holders'); the
config's ``row_average: participants`` / ``server_lr``, which scale steps taken from the global model,
do not apply, since a FedCAC client starts from its own model. As θ_r rises past the largest
overlap (after about β rounds), C_i = {i}: critical parameters become purely local.

Adapted to the autoencoder: FedCAC applies to the shared decoder, PersonalFR's roles otherwise
(personal encoder, partial compression: a client trains and sends the rows of its own items). Its
tensors are dec_W1, dec_b1 and its own rows of dec_out and dec_ob (τ per tensor, as (2)); an item
row's entries in (3) exist only for the clients holding the item, and (5) averages an item row over
the collaborators that hold it.

Partial participation: the server keeps each client's last trained decoder and its mask (the masks
bit-packed), as the reference code keeps every client's model. The server computes the mask itself:
it sent θ_before (the model (6)) and receives θ_after (the usual message), so a client sends nothing
extra. Overlaps, (4)'s mean and max, and collaborators are over the round's clients against every
client that has trained; a client that has not trained yet starts from the global model. Because
the server needs each client's own update, FedCAC does not combine with secure aggregation or DP.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field

from federation.strategies.base import RoundInfo, personal_copies
from federation.strategies.personalfr import PersonalFR
from recsys.models.autoencoder import DENSE_DECODER_KEYS, AEShape

DENSE, ROWS, DMASK, RMASK, TRAINED = "cac.dense", "cac.rows", "cac.dmask", "cac.rmask", "cac.trained"
PREFIX = "cac"


class FedCACOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tau: float = Field(0.5, ge=0, le=1)      # fraction of each tensor that is critical (the paper's τ)
    beta: int = Field(170, ge=1)             # rounds until critical parameters become local (the paper's β)


# -- pure equations ----------------------------------------------------------------------------
def sensitivity(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(1): |(after − before) ⊙ after|, any shape."""
    return ((after - before) * after).abs()


def critical_mask(c: torch.Tensor, tau: float) -> torch.Tensor:
    """(2) for one tensor's sensitivities c (any shape) -> bool mask of the same shape."""
    flat = c.reshape(-1)
    nz = int(tau * flat.numel())
    if nz == 0:
        return torch.zeros_like(c, dtype=torch.bool)
    t = torch.topk(flat, nz).values[-1]
    if t <= 1e-10:
        nonzero = flat[flat > 1e-20]
        if len(nonzero):
            t = nonzero.min()
    return c >= t


def critical_masks(c: torch.Tensor, tau: float) -> torch.Tensor:
    """(2) for a batch of tensors of one shape: c (B, ...) -> (B, ...) bool, row b equal to
    ``critical_mask(c[b], tau)``."""
    flat = c.reshape(c.shape[0], -1)
    nz = int(tau * flat.shape[1])
    if nz == 0:
        return torch.zeros_like(c, dtype=torch.bool)
    t = torch.topk(flat, nz, dim=1).values[:, -1]                                        # (B,)
    nonzero = torch.where(flat > 1e-20, flat, torch.full_like(flat, float("inf"))).min(1).values
    t = torch.where((t <= 1e-10) & torch.isfinite(nonzero), nonzero, t)
    return (flat >= t[:, None]).reshape(c.shape)


def overlaps(dots: torch.Tensor, sizes_i: torch.Tensor, sizes_j: torch.Tensor) -> torch.Tensor:
    """(3) from mask inner products: Σ|m_i − m_j| = |m_i| + |m_j| − 2 m_i·m_j for 0/1 masks.
    dots (B, U) = m_i·m_j, sizes_i (B,) = |m_i|, sizes_j (U,) -> (B, U); 0 where |m_i| = 0."""
    diff = sizes_i[:, None] + sizes_j[None, :] - 2 * dots
    den = 2 * sizes_i[:, None]
    return torch.where(den > 0, 1 - diff / den.clamp(min=1), torch.zeros_like(diff))


def collaborator_threshold(o: torch.Tensor, valid: torch.Tensor, rnd: int, beta: int) -> float:
    """(4) over the valid pairs (bool, same shape as o): mean + (rnd + 1)/β (max − mean)."""
    v = o[valid]
    if v.numel() == 0:
        return float("inf")
    mean, mx = float(v.mean()), float(v.max())
    return mean + (rnd + 1) / beta * (mx - mean)


def pack(mask: torch.Tensor) -> torch.Tensor:
    """(R, P) bool -> (R, ceil(P/8)) uint8 (numpy.packbits, big-endian bit order)."""
    return torch.from_numpy(np.packbits(mask.cpu().numpy().astype(np.uint8), axis=1))


def unpack(packed: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``pack``: (R, ceil(P/8)) uint8 -> (R, P) 0/1 values of ``dtype``."""
    bits = np.unpackbits(packed.cpu().numpy(), axis=1, count=width)
    return torch.from_numpy(bits).to(dtype)


class FedCAC(PersonalFR):
    name = "fedcac"
    summary = ("PersonalFR roles; each client's critical decoder parameters (top tau of |dθ ⊙ θ|) averaged "
               "only with collaborators whose critical masks overlap, the rest FedAvg")
    paper = "Wu et al. 2023, Bold but Cautious: Unlocking the Potential of Personalized FL through Cautiously Aggressive Collaboration (FedCAC)"
    Options = FedCACOptions
    closed_form = True            # plain loss and SGD from a per-client start: the closed form applies
    individual_updates = True
    server_entry_keys = (ROWS, RMASK)
    extra_personal = personal_copies(DENSE_DECODER_KEYS, PREFIX)

    def inference_key(self, key: str) -> str:
        """A user scores with the personalized dense layer (6) it received in its last round, the model
        PFLlib evaluates (right after ``send_models``); rows of items it has not seen are the global ones."""
        return f"{PREFIX}.{key}" if key in DENSE_DECODER_KEYS else key

    def local_update(self, run) -> torch.Tensor:
        run.values.update(self.start_personal(run.start, run.size))
        return super().local_update(run)

    def aggregate_rows(self, key: str, old: torch.Tensor, sums: torch.Tensor, wsum: torch.Tensor,
                       total_weight: float, info: RoundInfo) -> torch.Tensor:
        """The global rows are the average of the holders' models, as PFLlib's global model is the
        average of the clients' models. ``row_average: participants`` and ``server_lr`` scale updates
        as steps from the global model; a FedCAC client starts from its own model, so they do not apply."""
        from federation.strategies.aggregation import finalize_rows

        return finalize_rows(old, sums, wsum)

    def start_personal(self, start: dict[str, torch.Tensor], n_clients: int) -> dict[str, torch.Tensor]:
        out = {}
        for k in DENSE_DECODER_KEYS:
            v = start[k]
            out[f"{PREFIX}.{k}"] = (v if v.dim() == (3 if k == "dec_W1" else 2) else
                                    v.unsqueeze(0).expand(n_clients, *v.shape)).clone()
        return out

    no_content = "customizes the free decoder parameters"

    # -- the server's state (every client's last decoder and mask) ----------------------------------
    @staticmethod
    def _dense_width(shape: AEShape) -> int:
        return shape.h1 * shape.h2 + shape.h1

    def server_state_init(self, shape: AEShape, train, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        U, nnz, D, R = train.shape[0], train.nnz, self._dense_width(shape), shape.h1 + 1
        return {DENSE: torch.zeros(U, D, dtype=dtype), ROWS: torch.zeros(nnz, R, dtype=dtype),
                DMASK: torch.zeros(U, (D + 7) // 8, dtype=torch.uint8),
                RMASK: torch.zeros(nnz, (R + 7) // 8, dtype=torch.uint8),
                TRAINED: torch.zeros(U, dtype=torch.bool)}

    @staticmethod
    def _flat_dense(v: dict[str, torch.Tensor]) -> torch.Tensor:
        """[dec_W1 flattened, dec_b1] per client: (B, H1*H2 + H1)."""
        return torch.cat([v["dec_W1"].reshape(v["dec_W1"].shape[0], -1), v["dec_b1"]], 1)

    @staticmethod
    def _flat_rows(v: dict[str, torch.Tensor]) -> torch.Tensor:
        """[dec_out, dec_ob] per entry: (T, H1 + 1)."""
        return torch.cat([v["dec_out"], v["dec_ob"][:, None]], 1)

    def begin_round(self, state: dict[str, torch.Tensor], users: np.ndarray, rnd: int, train) -> dict | None:
        """Collaborators of the round's clients (5): a dict with the selected users, their positions in
        the round and their collaborator matrix (B, U) bool; None when no client has trained yet."""
        trained = state[TRAINED]
        if rnd == 0 or not bool(trained.any()):
            return None
        H = state[DENSE].shape[1]
        users_t = torch.as_tensor(np.asarray(users, dtype=np.int64))
        have = trained.nonzero().squeeze(1)                                               # clients with a mask
        dm_have = unpack(state[DMASK].index_select(0, have), H)                           # (U', Pd)
        dm_sel = unpack(state[DMASK].index_select(0, users_t), H)                          # (B, Pd)
        dots = torch.zeros(len(users_t), len(trained))
        dots[:, have] = dm_sel @ dm_have.T                                                # (B, U)
        indptr = np.asarray(train.indptr)
        row_bits = torch.from_numpy(_POPCOUNT[state[RMASK].numpy()].sum(1).astype(np.float32))   # (nnz,)
        dense_bits = torch.zeros(len(trained))
        dense_bits[have] = dm_have.sum(1)
        size_all = dense_bits + torch.zeros(len(trained)).index_add_(
            0, torch.as_tensor(np.repeat(np.arange(len(trained)), np.diff(indptr))), row_bits)
        # rows part of m_i·m_j: the round's entries against every holder of the same item
        dots += _row_dots(users, train, state[RMASK])
        sizes_i = size_all.index_select(0, users_t)
        o = overlaps(dots, sizes_i, size_all)                                             # (B, U)
        sel_trained = trained.index_select(0, users_t)
        valid = sel_trained[:, None] & trained[None, :]
        valid[torch.arange(len(users_t)), users_t] = False
        thr = collaborator_threshold(o, valid, rnd, self.options.beta)
        collab = valid & (o >= thr)
        collab[torch.arange(len(users_t)), users_t] = sel_trained                         # i itself, if trained
        return {"users": users_t, "pos": {int(u): k for k, u in enumerate(users_t.tolist())},
                "collab": collab}

    def client_start(self, state: dict[str, torch.Tensor], plan: dict | None, cohort, global_p: dict[str, torch.Tensor],
                     train, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """(6) for the cohort's clients: decoder start values (B, ...) and (T, ...) ({} before any training)."""
        if plan is None:
            return {}
        B, H1, H2 = cohort.size, global_p["dec_W1"].shape[0], global_p["dec_W1"].shape[1]
        pos = torch.as_tensor([plan["pos"][int(u)] for u in cohort.users.cpu().tolist()])
        collab = plan["collab"].index_select(0, pos)                                      # (B, U)
        users = cohort.users.cpu()
        n = collab.sum(1)                                                                 # (B,)
        cust = (collab.to(state[DENSE].dtype) @ state[DENSE]) / n.clamp(min=1)[:, None]    # (B, Pd)
        g = torch.cat([global_p["dec_W1"].reshape(-1), global_p["dec_b1"]]).cpu().to(cust.dtype)
        m = unpack(state[DMASK].index_select(0, users), cust.shape[1], cust.dtype)         # (B, Pd)
        m = m * (n > 0)[:, None]
        dense = m * cust + (1 - m) * g[None, :]
        rows_cust, rows_n = _row_means(cohort, collab, train, state[ROWS])                # (T, R), (T,)
        R = rows_cust.shape[1]
        gr = torch.cat([global_p["dec_out"], global_p["dec_ob"][:, None]], 1).cpu().to(cust.dtype)
        gr = gr.index_select(0, cohort.items.cpu())
        rm = unpack(state[RMASK].index_select(0, cohort.pos.cpu()), R, cust.dtype) * (rows_n > 0)[:, None]
        rows = rm * rows_cust + (1 - rm) * gr
        dev = global_p["dec_W1"].device
        return {"dec_W1": dense[:, :H1 * H2].reshape(B, H1, H2).to(dev, dtype), "dec_b1": dense[:, H1 * H2:].to(dev, dtype),
                "dec_out": rows[:, :-1].contiguous().to(dev, dtype), "dec_ob": rows[:, -1].contiguous().to(dev, dtype)}

    def observe(self, state: dict[str, torch.Tensor], cohort, start: dict[str, torch.Tensor],
                trained: dict[str, torch.Tensor]) -> None:
        """Keep each client's trained decoder and its critical mask (1)-(2) (the server can compute it: it
        sent ``start`` and received ``trained``)."""
        tau = self.options.tau
        users, seg, pos = cohort.users.cpu(), cohort.seg.cpu(), cohort.pos.cpu()
        B = cohort.size
        dmask = torch.cat([critical_masks(sensitivity(start[k], trained[k]), tau).reshape(B, -1).cpu()
                           for k in ("dec_W1", "dec_b1")], 1)                                  # (B, Pd)
        rmasks = torch.zeros(len(seg), state[ROWS].shape[1], dtype=torch.bool)
        bounds = np.concatenate([[0], np.cumsum(np.bincount(seg.numpy(), minlength=B))])   # seg is contiguous
        for b in range(B):
            ent = slice(int(bounds[b]), int(bounds[b + 1]))
            mo = critical_mask(sensitivity(start["dec_out"][ent], trained["dec_out"][ent]), tau)   # (n_u, H1)
            mb = critical_mask(sensitivity(start["dec_ob"][ent], trained["dec_ob"][ent]), tau)     # (n_u,)
            rmasks[ent] = torch.cat([mo, mb[:, None]], 1).cpu()
        state[DMASK][users] = pack(dmask)
        state[RMASK][pos] = pack(rmasks)
        state[DENSE][users] = self._flat_dense(trained).cpu().to(state[DENSE].dtype)
        state[ROWS][pos] = self._flat_rows(trained).cpu().to(state[ROWS].dtype)
        state[TRAINED][users] = True


def _item_holders(train) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSC view of the training matrix: (indptr by item, entry positions in CSR order, their users)."""
    csr = train.tocsr()
    n_users = csr.shape[0]
    entry_user = np.repeat(np.arange(n_users), np.diff(csr.indptr))
    order = np.argsort(csr.indices, kind="stable")
    counts = np.bincount(csr.indices, minlength=csr.shape[1])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, order, entry_user[order]


def _holder_pairs(items: np.ndarray, train) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For entries with item ids ``items`` (T,): every (entry k, holder entry e', holder user) pair of the
    same item, as arrays (k (P,), e' (P,) in CSR order, owner (P,))."""
    indptr, ent, owner = _item_holders(train)
    lens = indptr[items + 1] - indptr[items]                                              # holders per entry
    k = np.repeat(np.arange(len(items)), lens)
    at = np.repeat(indptr[items], lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
    return k, ent[at], owner[at]


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _row_dots(users: np.ndarray, train, rmask_packed: torch.Tensor) -> torch.Tensor:
    """Σ over common items of m_i,t · m_j,t for the round's users i (B) and every user j: (B, U), from
    the bit-packed row masks (popcount of the AND of every pair of same-item entries)."""
    users = np.asarray(users, dtype=np.int64)
    U = train.shape[0]
    csr = train.tocsr()
    sel = np.concatenate([np.arange(csr.indptr[u], csr.indptr[u + 1]) for u in users]) if len(users) else np.zeros(0, np.int64)
    seg = np.repeat(np.arange(len(users)), np.diff(csr.indptr)[users])
    k, e2, owner = _holder_pairs(csr.indices[sel], csr)
    packed = rmask_packed.numpy()
    out = np.zeros(len(users) * U, dtype=np.int64)
    for lo in range(0, len(k), 1 << 20):                   # pairs in chunks: (chunk, bytes) temporaries
        kk = k[lo:lo + (1 << 20)]
        bits = _POPCOUNT[packed[sel[kk]] & packed[e2[lo:lo + (1 << 20)]]].sum(1)
        np.add.at(out, seg[kk] * U + owner[lo:lo + (1 << 20)], bits)
    return torch.from_numpy(out.reshape(len(users), U)).to(torch.float32)


def _row_means(cohort, collab: torch.Tensor, train, rows_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(5) for item rows: for each of the cohort's entries (client i, item t), the mean of the stored rows
    of item t over i's collaborators that hold it, and their number: (T, R), (T,). One sparse product:
    Q (T, nnz) holds 1 where entry e' is item t's row of a collaborator of i."""
    items, seg = cohort.items.cpu().numpy(), cohort.seg.cpu().numpy()
    T = len(items)
    k, e2, owner = _holder_pairs(items, train)
    w = collab.numpy()[seg[k], owner]
    Q = sp.csr_matrix((w[w].astype(np.float64), (k[w], e2[w])), shape=(T, rows_all.shape[0]))
    n = np.asarray(Q.sum(1)).ravel()
    sums = Q @ rows_all.numpy().astype(np.float64)                                        # (T, R)
    out = sums / np.maximum(n, 1)[:, None]
    return torch.from_numpy(out).to(rows_all.dtype), torch.from_numpy(n).to(rows_all.dtype)
