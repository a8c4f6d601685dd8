"""One device (a Flower SuperNode): the users it hosts, their personal state, their turn in a round.

Transport-free: the Flower ClientApp (federation/deploy/flower_app.py) turns messages into these calls, tests
call them directly. What a node sends is built here and nowhere else:
  hello     -> HELLO_KEYS: its users' ids, the catalogue size and fingerprint, the fingerprint of its
               item content (content-aware jobs; public catalogue features, no user data), and for
               holder-weighted content (content.holder_weight > 0) one count per item: how many of its
               users hold it. The server sums these once into the federation's holder counts and sends
               them back with every train/evaluate message (the counts reveal less than the item ids
               each sampled user's update carries anyway under partial compression)
  train     -> one federation.strategies.messages update per sampled user + node totals (users, loss sum)
  evaluate  -> sums over its users (squared error and count, or NDCG sum and user count)
  prototypes -> federation.engine.prototypes stats summed over its users for the broadcast centroids: per
               centroid the sum of the codes nearest to it, their count and their summed |code|^2
               (prototypes.enabled; after the last round)
Encoders and optimizer state never leave: they live in ``state_dir`` (safetensors, written atomically).

Exactly-once rounds: the state file records the last round the node trained and keeps the state from
before it (``state.prev.safetensors``). Asked to train a round it already trained (the server restarted
before aggregating it), the node rewinds to the state before that round and trains it again, so a
restarted server never applies a client's local steps twice.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import save_file

from federation.runs.config import JobConfig
from federation.strategies.messages import RejectedUpdate, unpack_starts
from federation.privacy.dp import clip_update
from recsys.io import atomic_path
from recsys.metrics import ranking_metrics, topk_from_scores
from recsys.splits import partition_users  # noqa: F401  (re-exported: the node's user block)

log = logging.getLogger(__name__)

DECODER_KEYS = ("dec_W1", "dec_b1", "dec_out", "dec_ob")
STATE_FILE, PREV_FILE = "state.safetensors", "state.prev.safetensors"
HELLO_USERS, HELLO_N_ITEMS, HELLO_CATALOGUE, HELLO_CONFIG = "users", "n_items", "catalogue", "config"
HELLO_CONTENT, HELLO_HOLDERS = "content", "holders"
HELLO_KEYS = (HELLO_USERS, HELLO_N_ITEMS, HELLO_CATALOGUE, HELLO_CONFIG, HELLO_CONTENT)   # + HELLO_HOLDERS if weighted
TOTAL_USERS, TOTAL_LOSS = "num-users", "loss-sum"
EVAL_SUM, EVAL_COUNT = "sum", "count"


def catalogue_checksum(item_ids: np.ndarray) -> str:
    """Fingerprint of the item catalogue (ids in index order): every node must index items alike."""
    return hashlib.sha256("\x1f".join(map(str, item_ids)).encode()).hexdigest()[:16]


def decoder_keys(shape) -> tuple[str, ...]:
    """The global parameters the server sends a node (an AEShape): the decoder, plus the content
    projection and the user embedder when the model has them."""
    return DECODER_KEYS + shape.extra_dense_keys()


def content_fingerprint(content: np.ndarray | None) -> str:
    """"" without content, else "F:sha256[:16]" of the (N, F) float32 item content: every node must
    score items with the same content vectors, or the shared projection means different things."""
    if content is None:
        return ""
    c = np.ascontiguousarray(content, dtype=np.float32)
    return f"{c.shape[1]}:{hashlib.sha256(c.tobytes()).hexdigest()[:16]}"


def content_dim_of(fingerprint: str) -> int:
    return int(fingerprint.split(":", 1)[0]) if fingerprint else 0


def config_fingerprint(cfg: JobConfig) -> str:
    """What server and nodes must agree on: model, federation, optimizer, privacy, split and seed."""
    keep = cfg.model_dump(mode="json", include={"seed", "split", "model", "federation", "optimizer", "privacy"})
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


SEALED_A, SEALED_B = "sealed_a", "sealed_b"
   # secure aggregation: a user's shares sealed to A and to B


@dataclass
class TrainReply:
    updates: dict[int, dict[str, np.ndarray]]   # user -> federation.strategies.messages update
    num_users: int
    loss_sum: float


class ClientNode:
    """Users ``users`` of a dataset, trained with the job config ``cfg``; state under ``state_dir``."""

    def __init__(self, cfg: JobConfig, users: np.ndarray, state_dir: str | Path, data=None, split=None):
        from federation.runs.jobs import build_federation, holder_counts, item_content, prepare_data

        self.cfg = cfg
        if data is None:
            data, split = prepare_data(cfg)
        self.data, self.split = data, split
        self.users = np.asarray(users, dtype=np.int64)
        full = split.matrix(data, "train")
        keep = np.zeros(full.shape[0], bool)
        keep[self.users] = True
        n = np.where(keep, np.diff(full.indptr), 0)
        entries = np.repeat(keep, np.diff(full.indptr))
        # The node's rows only (others empty); user and item indices stay global.
        own = sp.csr_matrix((full.data[entries], full.indices[entries], np.r_[0, np.cumsum(n)]), shape=full.shape)
        # The public item content, unweighted: holder weights need the federation's counts (server).
        self.raw_content = item_content(cfg, data, split) if cfg.content.enabled else None     # (N, F) | None
        self.weighted = self.raw_content is not None and cfg.content.holder_weight > 0
        self.own_holders = holder_counts(own)                                                  # (N,)
        self.holders: np.ndarray | None = None     # the server's counts the content is weighted by now
        # Until the server's counts arrive the content is weighted by this node's own (never trained on).
        self.fed = build_federation(cfg, data, split, train=own, content=self.raw_content, holders=self.own_holders)
        self.fed.server_state = {}      # a node keeps no server-side state (FedCAC's lives on the server)
        self.active = np.intersect1d(self.users, self.fed.active_users)
        self.content_fp = content_fingerprint(self.raw_content)
        self.state_dir = Path(state_dir)
        self.fingerprint = config_fingerprint(cfg) + ":" + hashlib.sha256(self.users.tobytes()).hexdigest()[:16]
        self.trained_round = -1                 # last round (0-based) whose local steps are in the state
        self._load_state()

    # -- hello -------------------------------------------------------------------------------
    def hello(self) -> dict:
        out = {HELLO_USERS: self.active.copy(), HELLO_N_ITEMS: int(self.data.n_items),
               HELLO_CATALOGUE: catalogue_checksum(self.data.item_ids), HELLO_CONFIG: config_fingerprint(self.cfg),
               HELLO_CONTENT: self.content_fp}
        if self.weighted:
            out[HELLO_HOLDERS] = self.own_holders.copy()                                      # (N,) int64
        return out

    def _set_holders(self, holders: np.ndarray | None) -> None:
        """Weight the item content by the federation's holder counts (N,) from the server."""
        if not self.weighted:
            if holders is not None:
                raise RejectedUpdate("server sent holder counts, but this job has no holder-weighted content")
            return
        if holders is None:
            raise RejectedUpdate("server sent no holder counts; this job weights item content by them "
                                 "(content.holder_weight)")
        h = np.asarray(holders)
        if h.shape != (self.data.n_items,) or not np.issubdtype(h.dtype, np.integer) or (len(h) and h.min() < 0):
            raise RejectedUpdate(f"server holder counts: {h.dtype} {h.shape}, expected {self.data.n_items} "
                                 "non-negative integers")
        if self.holders is not None and np.array_equal(h, self.holders):
            return
        from federation.runs.jobs import weigh_content

        self.fed.set_content(*weigh_content(self.cfg, self.raw_content, h.astype(np.int64)))
        self.holders = h.astype(np.int64)

    # -- train -------------------------------------------------------------------------------
    def train(self, rnd: int, lr: float, users: np.ndarray, decoder: dict[str, np.ndarray],
              dp_clip: float | None = None, holders: np.ndarray | None = None, secagg=None,
              starts: dict[str, np.ndarray] | None = None) -> TrainReply:
        """Train ``users`` (a subset of this node's users) for round ``rnd`` (0-based) from the
        server's ``decoder`` (and holder counts (N,), holder-weighted jobs; per-user start models,
        strategies whose server sends each client its own: messages.pack_starts); persist their new
        personal state; return their messages."""
        users = np.asarray(users, dtype=np.int64)
        foreign = np.setdiff1d(users, self.active)
        if len(foreign):
            raise RejectedUpdate(f"asked to train {len(foreign)} user(s) this node does not host")
        self._set_decoder(decoder)               # both check the message before any state changes
        self._set_holders(holders)
        if rnd == self.trained_round and (self.state_dir / PREV_FILE).exists():
            log.warning("round %d was already trained here (server restarted before aggregating it): "
                        "rewinding to the state before it", rnd + 1)
            self._load_file(self.state_dir / PREV_FILE)
        elif rnd < self.trained_round:
            log.warning("server asks for round %d but this node already trained round %d; training "
                        "from the current state", rnd + 1, self.trained_round + 1)
        self.fed.round = rnd
        if len(users) == 0:
            return TrainReply({}, 0, 0.0)
        given = None
        if self.fed.strategy.individual_updates:
            given = unpack_starts(starts or {})
            if not set(given) <= set(users.tolist()):
                raise RejectedUpdate("start models for users this round does not train")
        msgs, losses = self.fed.client_messages(users, lr, starts=given)
        if dp_clip is not None:
            msgs = {u: clip_update(m, self.fed.global_p, dp_clip)[0] for u, m in msgs.items()}
        if secagg is not None:
            msgs = self._sealed(msgs, rnd, secagg)
        elif self.fed.cfg.secagg is not None:
            raise RejectedUpdate("this node's job config has secure aggregation on; the server asked for plain "
                                 "updates")
        else:                         # the strategy's compressed message (e.g. pFedGate: its kept blocks only)
            msgs = {u: self.fed.strategy.compress(m, self.fed.global_p) for u, m in msgs.items()}
        if rnd > self.trained_round and (self.state_dir / STATE_FILE).exists():
            os.replace(self.state_dir / STATE_FILE, self.state_dir / PREV_FILE)
        self.trained_round = max(rnd, self.trained_round)
        self._save_state()
        return TrainReply(msgs, len(users), float(sum(losses.values())))

    def _sealed(self, msgs: dict[int, dict[str, np.ndarray]], rnd: int, req) -> dict[int, dict[str, np.ndarray]]:
        """Each user's message as secure-aggregation shares (federation.privacy.secagg), sealed to the two
        aggregators: nothing of the plain message leaves the node."""
        from federation.privacy import secagg as sa

        st = self.fed.cfg.secagg
        if st is None:
            raise RejectedUpdate("server asks for secure aggregation, but this node's job config has it off")
        lay = self.fed.secure_layout()
        out = {}
        for u, m in msgs.items():
            plain = sa.client_payloads(*self.fed.secure_payload_parts(int(u), m), lay, st)
            a, b = sa.seal_payloads(tuple(req.public), req.run_id, rnd, int(u), plain)
            out[u] = {SEALED_A: np.frombuffer(a, np.uint8), SEALED_B: np.frombuffer(b, np.uint8)}
        return out

    # -- prototypes --------------------------------------------------------------------------
    def _checked_prototypes(self, centroids: np.ndarray | None) -> torch.Tensor | None:
        """The server's centroids (K, H1) as a tensor, after checking them; None stays None."""
        if centroids is None:
            return None
        C = np.asarray(centroids)
        h = self.fed.shape.h1
        if C.ndim != 2 or C.shape[1] != h or not 1 <= C.shape[0] <= 4096 or not np.isfinite(C).all():
            raise RejectedUpdate(f"server prototypes: {C.dtype} {C.shape}, expected finite (K, {h})")
        return torch.as_tensor(C, dtype=self.fed.dtype).to(self.fed.device)

    @torch.no_grad()
    def prototype_stats(self, decoder: dict[str, np.ndarray], centroids: np.ndarray,
                        holders: np.ndarray | None = None, secagg=None) -> dict[str, np.ndarray]:
        """One prototype round: this node's users' codes under the server's decoder, summed into
        their nearest of ``centroids`` (K, H1) (federation.engine.prototypes.client_stats). Under
        secure aggregation (``secagg``: a SecAggRequest whose run id carries the round's tag) each
        user's own stats instead, as additive shares sealed to the two aggregators: users (U,),
        sealed_a (U, 76), sealed_b (U, 60 + 4 (K H1 + 2K)) uint8; nothing is summed on the node."""
        self._set_decoder(decoder)
        self._set_holders(holders)
        if centroids is None:
            raise RejectedUpdate("server sent a prototype round without centroids")
        C = self._checked_prototypes(centroids)
        st = self.fed.cfg.secagg
        if (secagg is None) != (st is None):
            raise RejectedUpdate("prototype round: the server's and this node's secure-aggregation settings differ")
        if secagg is None:
            return self.fed.prototype_stats(C, self.active).as_message()
        from federation.engine.prototypes import secure_client_vectors
        from federation.privacy import channel, secagg as sa

        run_id, tag = secagg.run_id.rsplit("|", 1)
        h3, _ = self.fed.user_codes(self.active)
        vecs = secure_client_vectors(h3, C, st.frac_bits, st.max_clients).numpy()
        a, b = [], []
        for u, v in zip(self.active.tolist(), vecs):
            sa_, sb_ = sa.dense_payloads(v)
            a.append(channel.seal(secagg.public[0], sa_, sa.aad(run_id, tag, u, 0)))
            b.append(channel.seal(secagg.public[1], sb_, sa.aad(run_id, tag, u, 1)))
        U = len(a)
        return {"users": self.active.astype(np.int64),
                SEALED_A: np.frombuffer(b"".join(a), np.uint8).reshape(U, -1) if U else np.zeros((0, 0), np.uint8),
                SEALED_B: np.frombuffer(b"".join(b), np.uint8).reshape(U, -1) if U else np.zeros((0, 0), np.uint8)}

    # -- evaluate ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, decoder: dict[str, np.ndarray], part: str = "valid", k: int | None = None,
                 holders: np.ndarray | None = None, prototypes: np.ndarray | None = None) -> dict[str, float]:
        """Sums over this node's users: explicit -> squared error and rating count; implicit ->
        NDCG@k sum and the number of users with held-out items (train items excluded). With the
        server's ``prototypes`` (K, H1) each user scores with its blended code."""
        k = k or self.cfg.eval.k[0]
        self._set_decoder(decoder)
        self._set_holders(holders)
        self.fed.prototypes = self._checked_prototypes(prototypes)
        truth = self.split.matrix(self.data, part)
        rows = truth[self.users]
        if self.cfg.model.mode == "explicit":
            coo = rows.tocoo()
            if coo.nnz == 0:
                return {EVAL_SUM: 0.0, EVAL_COUNT: 0}
            uniq, pos = np.unique(self.users[coo.row], return_inverse=True)
            scores = self.fed.user_scores(uniq).float().cpu().numpy()
            r = self.data.ratings.data
            pred = np.clip(scores[pos, coo.col], float(r.min()), float(r.max()))
            return {EVAL_SUM: float(((pred - coo.data) ** 2).sum()), EVAL_COUNT: int(coo.nnz)}
        have = self.users[np.diff(rows.indptr) > 0]
        if len(have) == 0:
            return {EVAL_SUM: 0.0, EVAL_COUNT: 0}
        seen = self.split.matrix(self.data, "train")
        if part == "test":
            seen = (seen + self.split.matrix(self.data, "valid")).tocsr()
        scores = self.fed.user_scores(have).float().cpu().numpy()
        topk, _ = topk_from_scores(scores, k, seen, rows=have)
        m = ranking_metrics(topk, sp.csr_matrix(truth), have, (k,))
        return {EVAL_SUM: float(m[f"ndcg@{k}"] * len(have)), EVAL_COUNT: int(len(have))}

    # -- state -------------------------------------------------------------------------------
    def _set_decoder(self, decoder: dict[str, np.ndarray]) -> None:
        for k in decoder_keys(self.fed.shape):
            if k not in decoder:
                raise RejectedUpdate(f"server decoder lacks {k} (does the server run a content-free job?)")
            want = tuple(self.fed.global_p[k].shape)
            if tuple(np.shape(decoder[k])) != want:
                raise RejectedUpdate(f"server decoder {k}: shape {np.shape(decoder[k])}, expected {want}")
            self.fed.global_p[k] = torch.as_tensor(np.asarray(decoder[k]), dtype=self.fed.dtype).to(self.fed.device)

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.fed.store.tensors.items()}
        with atomic_path(self.state_dir / STATE_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"round": str(self.trained_round), "fingerprint": self.fingerprint})

    def _load_state(self) -> None:
        p = self.state_dir / STATE_FILE
        if not p.exists():
            log.info("no saved state in %s: %d users start from the initial encoder", self.state_dir,
                     len(self.users))
            return
        self._load_file(p)

    def _load_file(self, p: Path) -> None:
        try:
            from safetensors import safe_open

            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("fingerprint") != self.fingerprint:
                raise ValueError("it belongs to another config, dataset or partition")
            self.fed.store.load(tensors)
        except Exception as e:  # noqa: BLE001 - any unreadable state means the same thing: start over
            log.warning("client state %s unusable (%s): re-initialized the encoders of %d users; "
                        "nothing else is lost", p, str(e).splitlines()[0][:120] or type(e).__name__,
                        len(self.users))
            self._reinit()
            return
        self.trained_round = int(meta.get("round", -1))
        log.info("restored the state of %d users after round %d from %s", len(self.users),
                 self.trained_round + 1, p)

    def _reinit(self) -> None:
        from recsys.models.autoencoder import init_params

        f = self.fed
        init = init_params(f.shape, f.cfg.seed, f.dtype)
        f.store = f.new_store(init, f.store.dtype)
        self.trained_round = -1
        for name in (STATE_FILE, PREV_FILE):
            (self.state_dir / name).unlink(missing_ok=True)
