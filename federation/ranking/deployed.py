"""The re-ranker on a deployment: a transport-free node (one SuperNode's user block) and the server's
loop, carried by Flower in federation/deploy/flower_app.py (message types ``query.rank``,
``train.rank``, ``evaluate.rank``) or by a loopback in tests.

A node computes its users' candidates, features and labels from its local copies of the source runs
(the same code as in process), caches them in its state directory, and answers:
  hello  -> dataset and split checksums, feature names, how many labelled users it holds;
  grow   -> its booster continued from the one received (LightGBM text), trees_per_round more trees;
  eval   -> its users' NDCG@10 sum and count (valid: the early-stopping users; test: every test user).
The server runs the same boost_loop as the in-process job, so with the same user blocks the deployed
model equals the in-process one (a test holds them equal).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from federation.ranking.boosting import Holder, boost_loop, grow, ndcg_sum
from federation.ranking.config import RankerJobConfig
from recsys.errors import FedrecError
from recsys.io import load_arrays, save_arrays

log = logging.getLogger(__name__)
HELLO_DATASET, HELLO_SPLIT, HELLO_FEATURES, HELLO_USERS = "dataset", "split", "features", "users"
HELLO_PARTITION = "partition"


def config_fingerprint(cfg: RankerJobConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


class RankNode:
    """One data holder of the re-ranker: the users of partition ``pid`` of ``n``."""

    def __init__(self, cfg: RankerJobConfig, pid: int, n: int, state_dir: str | Path):
        self.cfg, self.pid, self.n = cfg, pid, n
        self.state = Path(state_dir)
        self._src = None

    @property
    def src(self):
        if self._src is None:
            from federation.ranking.pipeline import load_sources

            self._src = load_sources(self.cfg)
        return self._src

    def users(self) -> np.ndarray:
        from federation.ranking.pipeline import labeled_users
        from recsys.splits import partition_users

        mine = partition_users(self.src.data.n_users, self.pid, self.n)
        return np.intersect1d(mine, labeled_users(self.src))

    def _cache(self) -> Path:
        return self.state / f"rank-{config_fingerprint(self.cfg)}-p{self.pid}-of-{self.n}.safetensors"

    def holders(self) -> tuple[Holder, Holder, list[str]]:
        """This node's (training, validation) examples and the feature names, computed once and kept in
        its state dir (a ClientApp process may serve one message: later turns only read this file)."""
        p = self._cache()
        if p.exists():
            from safetensors import safe_open

            a = load_arrays(p)
            with safe_open(str(p), "numpy") as f:
                names = f.metadata()["features"].split(",")
            return Holder(a["X"], a["y"], a["g"]), Holder(a["vX"], a["vy"], a["vg"]), names
        from federation.ranking.pipeline import holder_examples, names_for, validation_mask

        t = self.cfg.training
        tr, va = holder_examples(self.src, self.users(), self.cfg.candidates.per_source,
                                 validation_mask(self.src.data.n_users, t.valid_users, t.seed))
        names = names_for(self.src)
        save_arrays(p, {"X": tr.X, "y": tr.y, "g": tr.group, "vX": va.X, "vy": va.y, "vg": va.group},
                    {"features": ",".join(names)})
        return tr, va, names

    def hello(self) -> dict:
        from federation.ranking.jobs import split_checksum
        from federation.ranking.pipeline import names_for

        return {HELLO_DATASET: self.src.data.checksum(), HELLO_SPLIT: split_checksum(self.src.split),
                HELLO_FEATURES: ",".join(names_for(self.src)), HELLO_USERS: int(len(self.users())),
                HELLO_PARTITION: int(self.pid)}

    def grow(self, model: str | None) -> str:
        from federation.ranking.reranker import boost_settings

        tr, _, names = self.holders()
        if not len(tr):
            return model or ""
        return grow(model or None, tr, boost_settings(self.cfg), names)

    def evaluate(self, model: str, part: str) -> tuple[float, int]:
        """(Σ NDCG@10, users) over this node's validation users (part valid) or test users (part test)."""
        import lightgbm as lgb

        b = lgb.Booster(model_str=model)
        if part == "valid":
            _, va, _ = self.holders()
            return ndcg_sum(b.predict(va.X), va.y, va.group) if len(va) else (0.0, 0)
        from federation.ranking.pipeline import examples, topk_from_candidates
        from recsys.metrics import ranking_metrics
        from recsys.splits import partition_users

        truth = self.src.part("test")
        mine = partition_users(self.src.data.n_users, self.pid, self.n)
        users = mine[np.diff(truth.indptr)[mine] > 0]
        if not len(users):
            return 0.0, 0
        tops = [topk_from_candidates(x, b.predict(x.X), 10) for x in
                examples(self.src, users, "test", self.cfg.candidates.per_source)]
        m = ranking_metrics(np.concatenate(tops), truth, users, (10,))
        return float(m["ndcg@10"] * len(users)), int(len(users))


class RankTransport(Protocol):
    def node_ids(self) -> list[int]: ...
    def rank_hello(self, nodes: list[int]) -> dict: ...
    def rank_grow(self, node: int, model: str) -> str | Exception: ...
    def rank_eval(self, nodes: list[int], model: str, part: str) -> dict: ...


def _ok(node: int, r, what: str):
    if isinstance(r, Exception):
        raise FedrecError(f"node {node} failed during {what}: {r}")
    return r


def serve_ranker(cfg: RankerJobConfig, run_dir: str | Path, transport: RankTransport, min_nodes: int = 1,
                 wait_s: float = 120.0) -> Path:
    """The server side of a deployed re-ranker job: checks the nodes agree, runs the boosting rounds
    over them in partition order, evaluates on their test users and writes the run directory."""
    from federation.ranking.reranker import boost_settings, write_ranker_run

    t0 = time.monotonic()
    nodes = transport.node_ids()
    while len(nodes) < min_nodes and time.monotonic() - t0 < wait_s:
        time.sleep(1.0)
        nodes = transport.node_ids()
    if len(nodes) < min_nodes:
        raise FedrecError(f"{len(nodes)} node(s) connected, fewer than the {min_nodes} asked for")
    hellos = {n: _ok(n, h, "hello") for n, h in transport.rank_hello(nodes).items()}
    first = hellos[nodes[0]]
    for n, h in hellos.items():
        for k in (HELLO_DATASET, HELLO_SPLIT, HELLO_FEATURES):
            if h[k] != first[k]:
                raise FedrecError(f"node {n} has another {k} than node {nodes[0]}: the nodes must rank one dataset "
                                  "and split with one feature set")
    # turns in partition order (node ids are the SuperLink's random numbers): the same order as in process
    active = sorted((n for n in nodes if hellos[n][HELLO_USERS] > 0), key=lambda n: hellos[n][HELLO_PARTITION])
    if len({hellos[n][HELLO_PARTITION] for n in nodes}) != len(nodes):
        raise FedrecError("two nodes host the same user block (partition-id); each block must have one node")
    log.info("re-ranker over %d nodes (%s labelled users)", len(active), [hellos[n][HELLO_USERS] for n in active])

    def validate(model: str) -> float:
        r = {n: _ok(n, v, "evaluation") for n, v in transport.rank_eval(active, model, "valid").items()}
        return sum(s for s, _ in r.values()) / max(sum(c for _, c in r.values()), 1)

    t1 = time.perf_counter()
    res = boost_loop(len(active), lambda i, m: _ok(active[i], transport.rank_grow(active[i], m or ""), "training"),
                     validate, boost_settings(cfg))
    test = {n: _ok(n, v, "test evaluation") for n, v in transport.rank_eval(active, res.model, "test").items()}
    ndcg = sum(s for s, _ in test.values()) / max(sum(c for _, c in test.values()), 1)
    summary = {"test": {"rows": {"union + re-ranker": {"ndcg@10": ndcg}}, "users": sum(c for _, c in test.values())},
               "best_round": res.best_round, "history": res.history, "upload_bytes": res.upload_bytes,
               "model_bytes": len(res.model.encode()), "boost_s": round(time.perf_counter() - t1, 2),
               "deployed": {"nodes": len(active)}}
    names = first[HELLO_FEATURES].split(",")
    sources = [s for s in ("personalfr", "ease", "content", "popularity") if any(n.startswith(s + "_") for n in names)]
    return write_ranker_run(Path(run_dir), cfg, res.model, summary, first[HELLO_DATASET], first[HELLO_SPLIT],
                            sources, names)
