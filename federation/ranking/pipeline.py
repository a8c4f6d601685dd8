"""The two-stage pipeline: candidate sources → features on the device → the federated re-ranker.

Which interactions train what (no leakage): the candidate generators (the federation run, federated
EASE) are fitted on the split's **train** part only. The re-ranker learns from the **valid** part:
for each user, candidates and features come from the train history alone, labels say which candidates
are in the user's valid items — interactions no generator saw. Early stopping uses other users' valid
labels. The **test** part is used once, for the reported figures, with train + valid items excluded.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from federation.ranking.boosting import Holder
from federation.ranking.config import RankerJobConfig
from recsys.errors import ManifestError
from recsys.ranking.candidates import Candidates, candidates, feature_names, features, item_stats, labels, masked, ranks

log = logging.getLogger(__name__)


def manifest_sha(run_dir: str | Path) -> str:
    return hashlib.sha256((Path(run_dir) / "manifest.json").read_bytes()).hexdigest()


@dataclass
class Sources:
    """The loaded candidate sources over one dataset and split."""
    data: object                          # InteractionData
    split: object                         # Split
    names: tuple[str, ...]
    runs: dict                            # source name -> run dir (str)
    personal: object | None               # FederatedAutoencoder
    ease: object | None                   # EaseRecommender
    content: np.ndarray | None            # (N, D) unit item vectors
    pop: np.ndarray                       # (N,) log(1 + holders)
    age: np.ndarray                       # (N,) days

    def part(self, name: str) -> sp.csr_matrix:
        """The split part ``name`` (U, N) CSR, computed once."""
        cache = self.__dict__.setdefault("_parts", {})
        if name not in cache:
            if name == "train+valid":
                cache[name] = (self.part("train") + self.part("valid")).tocsr()
            else:
                cache[name] = self.split.matrix(self.data, name)
        return cache[name]

    @property
    def train(self) -> sp.csr_matrix:
        return self.part("train")

    def seen(self, part: str) -> sp.csr_matrix:
        """Items a user already has before ``part``: train for valid, train + valid for test."""
        return self.part("train" if part == "valid" else "train+valid")

    def scores(self, users: np.ndarray, history: sp.csr_matrix) -> dict[str, np.ndarray]:
        """Raw scores (B, N) of each source for ``users``; history (B, N): their train items."""
        out = {}
        if self.personal is not None:
            out["personalfr"] = np.asarray(self.personal.score(users), np.float32)
        if self.ease is not None:
            out["ease"] = self.ease.score(users)
        if self.content is not None:
            H = (history != 0).astype(np.float32)
            prof = np.asarray(H @ self.content)                                          # (B, D)
            prof /= np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-9)
            out["content"] = prof @ self.content.T
        if "popularity" in self.names:
            out["popularity"] = np.broadcast_to(self.pop, (len(users), len(self.pop))).copy()
        return {k: out[k] for k in self.names}


def load_sources(cfg: RankerJobConfig, progress: bool = False) -> Sources:
    """Load the configured runs; they must share one dataset and one split (else ManifestError)."""
    from federation.ranking.jobs import load_ease, split_checksum

    runs, personal, ease, data, split = {}, None, None, None, None
    if cfg.sources.personalfr:
        from federation.runs.jobs import load_run

        run = load_run(cfg.sources.personalfr)
        personal, data, split = run.model(), run.data, run.split
        runs["personalfr"] = str(cfg.sources.personalfr)
        if run.cfg.model.mode != "implicit":
            raise ManifestError(f"{cfg.sources.personalfr}: the ranker needs an implicit-feedback run "
                                f"(this one predicts ratings)")
    if cfg.sources.ease:
        er = load_ease(cfg.sources.ease)
        if data is not None and (er.data.checksum() != data.checksum() or split_checksum(er.split) != split_checksum(split)):
            raise ManifestError(f"{cfg.sources.ease}: its dataset or split differs from {cfg.sources.personalfr}'s; "
                                "the sources must rank the same users on the same split")
        ease, data, split = er.recommender(), er.data, er.split
        runs["ease"] = str(cfg.sources.ease)
    content = None
    if cfg.sources.content:
        from recsys.features import ClipSpec, build_features

        c = cfg.content
        feats, _ = build_features(data, Path(data_path(cfg)), ClipSpec(c.backend, c.model, c.pretrained, c.fusion),
                                  progress=progress)
        content = (feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-9)).astype(np.float32)
    names = tuple(n for n, on in (("personalfr", personal is not None), ("ease", ease is not None),
                                   ("content", content is not None), ("popularity", cfg.sources.popularity)) if on)
    train = split.matrix(data, "train")
    pop, age = item_stats(train, split.matrix(data, "train", "timestamps"))
    return Sources(data, split, names, runs, personal, ease, content, pop, age)


def data_path(cfg: RankerJobConfig) -> str:
    """The dataset directory of the first source run (from its config)."""
    from federation.runs.config import read_yaml

    run = cfg.sources.personalfr or cfg.sources.ease
    return read_yaml(Path(run) / "config.yaml")["data"]["path"]


@dataclass
class Batch:
    users: np.ndarray          # (B,)
    cands: Candidates
    X: np.ndarray              # (P, F)
    y: np.ndarray | None       # (P,)
    scores: dict               # source -> masked (B, N)


def batch(src: Sources, users: np.ndarray, part: str, n: int) -> Batch:
    """Candidates and features for ``users`` ranking ``part`` (valid: labels from valid; test)."""
    train = src.train
    history = train[users]
    seen = src.seen(part)[users]
    raw = src.scores(users, history)
    sc = {k: masked(v, seen) for k, v in raw.items()}
    rk = {k: ranks(v) for k, v in sc.items()}
    c = candidates(rk, n, np.diff(seen.indptr))
    X = features(c, sc, rk, n, history, src.pop, src.age, src.content)
    y = labels(c, src.part(part)[users]).astype(np.float32)
    return Batch(users, c, X, y, sc)


def examples(src: Sources, users: np.ndarray, part: str, n: int, batch_size: int = 256) -> list[Batch]:
    return [batch(src, users[i:i + batch_size], part, n) for i in range(0, len(users), batch_size)]


def holder_of(b: Batch, keep: np.ndarray | None = None) -> Holder:
    """The rows of the users of ``b`` selected by ``keep`` (B,) bool as one holder's examples."""
    g = b.cands.group_sizes()
    keep = np.ones(len(g), bool) if keep is None else keep
    rows = np.repeat(keep, g)
    return Holder(b.X[rows], b.y[rows], g[keep])


def labeled_users(src: Sources) -> np.ndarray:
    """Users with at least one valid interaction (the re-ranker's examples): (n,) row indices."""
    return np.flatnonzero(np.diff(src.part("valid").indptr) > 0)


def validation_mask(n_users: int, share: float, seed: int) -> np.ndarray:
    """(U,) bool: the users whose examples are kept for early stopping — one seeded draw per user id,
    so every holder (in process or a SuperNode) draws the same set for its own users."""
    return np.random.default_rng(seed).random(n_users) < share


def holder_examples(src: Sources, users: np.ndarray, n: int, valid: np.ndarray) -> tuple[Holder, Holder]:
    """One holder's (training, validation) examples from its ``users``; ``valid`` (U,) from
    ``validation_mask``. Users without a positive candidate teach LambdaRank nothing and are left out."""
    tr, va = [], []
    for b in examples(src, users, "valid", n):
        g = b.cands.group_sizes()
        has_pos = np.zeros(len(g), bool)
        if len(b.y):
            has_pos[g > 0] = np.add.reduceat(b.y, b.cands.offsets[:-1][g > 0]) > 0
        tr.append(holder_of(b, ~valid[b.users] & has_pos))
        va.append(holder_of(b, valid[b.users] & has_pos))
    cat = lambda hs: Holder(np.concatenate([h.X for h in hs]), np.concatenate([h.y for h in hs]),  # noqa: E731
                            np.concatenate([h.group for h in hs]))
    return cat(tr), cat(va)


def node_holders(src: Sources, n: int, nodes: int, valid_share: float, seed: int) -> tuple[list[Holder], list[Holder]]:
    """In process: the examples of ``nodes`` holders, holder k = the user block
    recsys.splits.partition_users(U, k, nodes) — the users SuperNode k hosts in deployment."""
    from recsys.splits import partition_users

    labeled = np.zeros(src.data.n_users, bool)
    labeled[labeled_users(src)] = True
    valid = validation_mask(src.data.n_users, valid_share, seed)
    out = [holder_examples(src, u[labeled[u]], n, valid)
           for u in (partition_users(src.data.n_users, k, nodes) for k in range(nodes))]
    return [h for h, _ in out], [v for _, v in out]


def topk_from_candidates(b: Batch, pred: np.ndarray, k: int) -> np.ndarray:
    """(B, k) item ids: each user's candidates by ``pred`` (P,), best first (-1 pads short lists)."""
    out = np.full((len(b.users), k), -1, np.int64)
    for j in range(len(b.users)):
        lo, hi = b.cands.offsets[j], b.cands.offsets[j + 1]
        order = np.argsort(-pred[lo:hi], kind="stable")[:k]
        out[j, :len(order)] = b.cands.items[lo:hi][order]
    return out


def names_for(src: Sources) -> list[str]:
    return feature_names(src.names)
