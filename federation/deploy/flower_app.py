"""Flower apps: the ServerApp and ClientApp that run fedrec on a Flower federation (SuperLink +
SuperNodes), on Flower's Message API. Glue only: messages <-> arrays. The round loop is
federation/deploy/server.py, a node's work federation/deploy/node.py, the math the in-process engine's.

Run config (pyproject.toml [tool.flwr.app.config], override with ``flwr run . NAME -c 'k=v'``):
  job-config     fedrec YAML job config, relative to the app directory or absolute
  run-dir        where the server writes config, manifest, checkpoints, metrics ("" = runs/<name>-flower,
                 relative to the SuperLink's working directory)
  rounds         0 = the job config's rounds
  min-nodes      nodes to wait for before round 1;  wait-s: how long
  capture-dir    "" = off; else the server keeps every round's received messages there (ids of plain
                 messages, sizes of sealed ones): the curious operator of `fedrec bench privacy`
  round-timeout  seconds to wait for a round's replies; min-fraction: share of sampled clients whose
                 updates must arrive for the round to count (else it is retried, max-retries times)
Node config (``flower-supernode --node-config``):
  partition-id, num-partitions   which block of users this node hosts (see node.partition_users)
  data-path      the node's dataset directory (default: the job config's data.path)
  state-dir      where the node keeps its users' encoders (default .fedrec-node/p<id>-of-<n>)

Wire format (record names; all arrays numpy):
  server -> node  "query":    nothing            node -> server: "hello" {users[, holders]},
                                                 "info" {n_items, catalogue, config, content}
  server -> node  "train":    "decoder" {dec_W1, dec_b1, dec_out, dec_ob[, dec_P]}, "users" {ids},
                              "config" {round, lr, dp-clip}[, "holders" {counts}]
  node -> server  "train":    "updates" {users, offsets, then federation.strategies.messages.UPDATE_KEYS
                              concatenated over the trained users: rows by offsets, the rest stacked},
                              "totals" {num-users, loss-sum}
  server -> node  "evaluate": "decoder", "config" {part}[, "holders"][, "prototypes" {centroids}];
                  node -> server: "eval" {sum, count}
  server -> node  "query.prototypes": "decoder", "prototypes" {centroids}[, "holders"];
                  node -> server: "stats" {federation.engine.prototypes SUMS_KEY, COUNTS_KEY, SQ_KEY}, summed
                  over the node's users (prototypes.enabled: after the last round)
  holders: holder-weighted content only (content.holder_weight > 0): per-item counts of users holding
  each item, the node's own in hello, the federation's (summed by the server) in train/evaluate.
Testing hooks: FEDREC_CAPTURE_WIRE=DIR (ServerApp) keeps every reply as it arrived; FEDREC_CAPTURE_STATE=DIR
(SuperNode) keeps a node's personal state before and after each round. In the environment of a SuperNode, FEDREC_FAULT_EXIT_AT_ROUND=r makes its ClientApp process
die while training round r; FEDREC_FAULT_NAN_AT_ROUND=r makes it send NaN updates in round r (under
secure aggregation: its lowest user id's share with a flipped byte, which does not verify).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import psutil
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from federation.strategies.messages import KEY_ITEM_IDS, KEY_ROW_BIAS, KEY_ROWS, KEY_WEIGHT, RejectedUpdate
from federation.deploy.node import (EVAL_COUNT, EVAL_SUM, HELLO_CATALOGUE, HELLO_CONFIG, HELLO_CONTENT,
                             HELLO_HOLDERS, HELLO_N_ITEMS, HELLO_USERS, SEALED_A, SEALED_B, TOTAL_LOSS, TOTAL_USERS, ClientNode, TrainReply, partition_users)
from federation.deploy.server import FederatedServer, SecAggRequest, TrainRequest

log = logging.getLogger(__name__)
APP_DIR = Path(__file__).resolve().parents[2]
MSG_QUERY, MSG_TRAIN, MSG_EVALUATE = "query", "train", "evaluate"
ACTION_PROTOTYPES = "prototypes"
MSG_PROTOTYPES = f"{MSG_QUERY}.{ACTION_PROTOTYPES}"
REC_PROTOTYPES, PROTO_CENTROIDS, REC_STATS = "prototypes", "centroids", "stats"
REC_DECODER, REC_USERS, REC_CONFIG, REC_HELLO, REC_INFO = "decoder", "users", "config", "hello", "info"
REC_TOTALS, REC_EVAL, REC_UPDATES = "totals", "eval", "updates"
PACK_USERS, PACK_OFFSETS = "users", "offsets"     # packed updates: user ids (U,), row offsets (U + 1,)
ROW_KEYS = (KEY_ITEM_IDS, KEY_ROWS, KEY_ROW_BIAS)  # per item row; the other update keys are one per user
REC_HOLDERS, HOLDER_COUNTS = "holders", "counts"
REC_SECAGG, SECAGG_RUN, SECAGG_PUBLIC = "secagg", "run", "public"   # run id bytes (L,), public keys (2, 32)
REC_STARTS = "starts"        # per-user start models (FedCAC): messages.pack_starts


def _arrays(d: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(np.asarray(v))) for k, v in d.items()})


def _numpy(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: rec[k].numpy() for k in rec.keys()}


def _job_config(run_config) -> "JobConfig":  # noqa: F821
    from federation.runs.config import load_config, parse_config

    cfg = load_config(_config_path(run_config))
    rounds = int(run_config.get("rounds", 0) or 0)
    if rounds:
        d = cfg.model_dump(mode="json")
        d["federation"]["rounds"] = rounds
        cfg = parse_config(d)
    return cfg


def _config_path(run_config) -> Path:
    p = Path(str(run_config.get("job-config", "configs/ml100k-explicit.yaml")))
    return p if p.is_absolute() else APP_DIR / p


def _ranker_config(run_config):
    """The re-ranker job config when the run's job-config is one (kind: ranker), else None."""
    from federation.ranking.config import parse_ranker_config
    from federation.runs.config import read_yaml

    p = _config_path(run_config)
    d = read_yaml(p)
    return parse_ranker_config(d, str(p)) if (d.get("kind") == "ranker" or "sources" in d) else None


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)       # one line per HTTP poll otherwise


# -- client side ---------------------------------------------------------------------------
def _node(context: Context) -> ClientNode:
    """The node's users and state, rebuilt from its files (a ClientApp process may serve one message)."""
    from federation.runs.config import parse_config
    from federation.runs.jobs import prepare_data

    _setup_logging()
    cfg = _job_config(context.run_config)
    nc = context.node_config
    if nc.get("data-path"):
        d = cfg.model_dump(mode="json")
        d["data"]["path"] = str(nc["data-path"])
        cfg = parse_config(d)
    pid, n = int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1))
    data, split = prepare_data(cfg)
    users = partition_users(data.n_users, pid, n)
    state = Path(str(nc.get("state-dir") or f".fedrec-node/p{pid}-of-{n}")) / cfg.name
    return ClientNode(cfg, users, state, data, split)


client_app = ClientApp()


@client_app.query()
def client_hello(msg: Message, context: Context) -> Message:
    h = _node(context).hello()
    arrays = {k: h[k] for k in (HELLO_USERS, HELLO_HOLDERS) if k in h}
    return Message(RecordDict({REC_HELLO: _arrays(arrays),
                               REC_INFO: ConfigRecord({k: h[k] for k in (HELLO_N_ITEMS, HELLO_CATALOGUE, HELLO_CONFIG,
                                                                          HELLO_CONTENT)})}),
                   reply_to=msg)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    conf = msg.content[REC_CONFIG]
    rnd = int(conf["round"])
    if os.environ.get("FEDREC_FAULT_EXIT_AT_ROUND") == str(rnd + 1):
        os._exit(17)                                              # testing hook: die mid-round
    t0 = time.perf_counter()
    age = time.time() - psutil.Process().create_time()            # process start and imports before this message
    node = _node(context)
    t1 = time.perf_counter()
    clip = float(conf["dp-clip"]) or None
    capture_state(node, rnd, "before")
    rep = node.train(rnd, float(conf["lr"]), msg.content[REC_USERS]["ids"].numpy(),
                     _numpy(msg.content[REC_DECODER]), clip, _holders(msg.content), _secagg(msg.content),
                     _starts(msg.content))
    capture_state(node, rnd, "after")
    log.info("train round %d: ClientApp process up %.2f s before the message, node (data, split, state) "
             "loaded in %.2f s, %d users trained in %.2f s", rnd + 1, age, t1 - t0, rep.num_users,
             time.perf_counter() - t1)
    if os.environ.get("FEDREC_FAULT_NAN_AT_ROUND") == str(rnd + 1):
        for u in sorted(rep.updates):                             # testing hook: a broken client
            m = rep.updates[u]
            if SEALED_B in m:                                     # secure aggregation: the first user's share
                m[SEALED_B] = m[SEALED_B].copy()                  # does not verify
                m[SEALED_B][-1] ^= 1
                break
            m["dec_W1"] = np.full_like(m["dec_W1"], np.nan)
    return Message(train_reply_content(rep), reply_to=msg)


# -- the re-ranker (federation/ranking/deployed.py) -------------------------------------------------
ACTION_RANK = "rank"
REC_MODEL, MODEL_TEXT = "model", "text"


def _rank_node(context: Context):
    from federation.ranking.deployed import RankNode

    _setup_logging()
    nc = context.node_config
    pid, n = int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1))
    state = Path(str(nc.get("state-dir") or f".fedrec-node/p{pid}-of-{n}"))
    return RankNode(_ranker_config(context.run_config), pid, n, state)


def _model_record(text: str) -> ArrayRecord:
    return _arrays({MODEL_TEXT: np.frombuffer(text.encode(), np.uint8).copy()})


def _model_text(c: RecordDict) -> str:
    return _numpy(c[REC_MODEL])[MODEL_TEXT].tobytes().decode()


@client_app.query(ACTION_RANK)
def client_rank_hello(msg: Message, context: Context) -> Message:
    return Message(RecordDict({REC_INFO: ConfigRecord(_rank_node(context).hello())}), reply_to=msg)


@client_app.train(ACTION_RANK)
def client_rank_grow(msg: Message, context: Context) -> Message:
    model = _rank_node(context).grow(_model_text(msg.content) or None)
    return Message(RecordDict({REC_MODEL: _model_record(model)}), reply_to=msg)


@client_app.evaluate(ACTION_RANK)
def client_rank_eval(msg: Message, context: Context) -> Message:
    s, n = _rank_node(context).evaluate(_model_text(msg.content), str(msg.content[REC_CONFIG]["part"]))
    return Message(RecordDict({REC_EVAL: MetricRecord({EVAL_SUM: float(s), EVAL_COUNT: int(n)})}), reply_to=msg)


def _secagg(c: RecordDict) -> SecAggRequest | None:
    if REC_SECAGG not in c.keys():
        return None
    r = _numpy(c[REC_SECAGG])
    pub = r[SECAGG_PUBLIC]
    if pub.shape != (2, 32) or pub.dtype != np.uint8:
        raise RejectedUpdate(f"secure aggregation public keys of shape {pub.shape}, expected (2, 32) bytes")
    return SecAggRequest(r[SECAGG_RUN].tobytes().decode(), (pub[0].tobytes(), pub[1].tobytes()))


def _with_secagg(c: RecordDict, req: SecAggRequest | None) -> RecordDict:
    if req is not None:
        c[REC_SECAGG] = _arrays({SECAGG_RUN: np.frombuffer(req.run_id.encode(), np.uint8),
                                 SECAGG_PUBLIC: np.stack([np.frombuffer(p, np.uint8) for p in req.public])})
    return c


def train_reply_content(rep: TrainReply) -> RecordDict:
    """Everything a node sends after training: its users' updates packed into one record (each key's
    arrays concatenated over users in ``users`` order, item rows delimited by ``offsets``) plus two
    totals. One record of a dozen arrays instead of one record per user: Flower moves each array as
    its own object, and ~6 arrays per user made the reply's transfer the bulk of a deployed round."""
    users = sorted(rep.updates)
    content = RecordDict()
    if users:
        ms = [rep.updates[u] for u in users]
        sealed = set(ms[0]) == {SEALED_A, SEALED_B}     # secure aggregation: byte strings of per-user length
        rows = np.array([0 if sealed else len(m[KEY_ITEM_IDS]) for m in ms], np.int64)
        packed = {PACK_USERS: np.asarray(users, np.int64),
                  PACK_OFFSETS: np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)}
        if sealed:
            for k in (SEALED_A, SEALED_B):
                packed[k] = np.concatenate([m[k] for m in ms])
                packed[k + "_offsets"] = np.concatenate([[0], np.cumsum([len(m[k]) for m in ms])]).astype(np.int64)
            content[REC_UPDATES] = _arrays(packed)
            content[REC_TOTALS] = MetricRecord({TOTAL_USERS: rep.num_users, TOTAL_LOSS: rep.loss_sum})
            return content
        for k in ms[0]:
            if k in ROW_KEYS:
                packed[k] = np.concatenate([m[k] for m in ms])
            else:
                packed[k] = np.stack([np.asarray(m[k]) for m in ms])
        content[REC_UPDATES] = _arrays(packed)
    content[REC_TOTALS] = MetricRecord({TOTAL_USERS: rep.num_users, TOTAL_LOSS: rep.loss_sum})
    return content


def train_request_content(r: TrainRequest) -> RecordDict:
    """A train request as the Message content a ClientApp receives."""
    return _with_starts(_with_secagg(_with_holders(RecordDict({
        REC_DECODER: _arrays(r.decoder), REC_USERS: _arrays({"ids": r.users}),
        REC_CONFIG: ConfigRecord({"round": r.round, "lr": float(r.lr), "dp-clip": float(r.dp_clip or 0.0)})}),
        r.holders), r.secagg), r.starts)


def _starts(c: RecordDict) -> dict[str, np.ndarray] | None:
    return _numpy(c[REC_STARTS]) if REC_STARTS in c.keys() else None


def _with_starts(c: RecordDict, starts: dict[str, np.ndarray] | None) -> RecordDict:
    """Per-user start models (FedCAC; messages.pack_starts) as one ArrayRecord."""
    if starts:
        c[REC_STARTS] = _arrays(starts)
    return c


def _holders(c: RecordDict) -> np.ndarray | None:
    return c[REC_HOLDERS][HOLDER_COUNTS].numpy() if REC_HOLDERS in c.keys() else None


def _with_holders(c: RecordDict, holders: np.ndarray | None) -> RecordDict:
    if holders is not None:
        c[REC_HOLDERS] = _arrays({HOLDER_COUNTS: holders})
    return c


def _prototypes(c: RecordDict) -> np.ndarray | None:
    return c[REC_PROTOTYPES][PROTO_CENTROIDS].numpy() if REC_PROTOTYPES in c.keys() else None


@client_app.query(ACTION_PROTOTYPES)
def client_prototypes(msg: Message, context: Context) -> Message:
    stats = _node(context).prototype_stats(_numpy(msg.content[REC_DECODER]), _prototypes(msg.content),
                                           _holders(msg.content), _secagg(msg.content))
    return Message(RecordDict({REC_STATS: _arrays(stats)}), reply_to=msg)


@client_app.evaluate()
def client_evaluate(msg: Message, context: Context) -> Message:
    r = _node(context).evaluate(_numpy(msg.content[REC_DECODER]), str(msg.content[REC_CONFIG]["part"]),
                                holders=_holders(msg.content), prototypes=_prototypes(msg.content))
    return Message(RecordDict({REC_EVAL: MetricRecord({EVAL_SUM: r[EVAL_SUM], EVAL_COUNT: r[EVAL_COUNT]})}),
                   reply_to=msg)


# -- testing hooks: what crosses the wire and what a node keeps --------------------------------------
def capture_reply(kind: str, node: int, content: RecordDict) -> None:
    """FEDREC_CAPTURE_WIRE=DIR (ServerApp environment): keep every reply as it arrived, arrays in
    safetensors (keys RECORD/KEY), config and metric records in its metadata. Tests read them back."""
    d = os.environ.get("FEDREC_CAPTURE_WIRE")
    if not d:
        return
    import json

    from recsys.io import save_arrays

    arrays = {f"{name}/{k}": v.numpy() for name, rec in content.array_records.items() for k, v in rec.items()}
    meta = {name: dict(rec) for name, rec in list(content.config_records.items()) + list(content.metric_records.items())}
    Path(d).mkdir(parents=True, exist_ok=True)
    seq = len(list(Path(d).glob("*.safetensors")))
    save_arrays(Path(d) / f"{seq:05d}-{kind}-{node}.safetensors", arrays,
                {"kind": kind, "node": str(node), "records": json.dumps(meta, default=str)})


def capture_state(node: ClientNode, rnd: int, when: str) -> None:
    """FEDREC_CAPTURE_STATE=DIR (SuperNode environment): a node's personal state before and after each
    round it trains, one file per (round, when, partition)."""
    d = os.environ.get("FEDREC_CAPTURE_STATE")
    if not d:
        return
    from recsys.io import save_arrays

    store = node.fed.store
    first = int(node.users[0]) if len(node.users) else -1
    save_arrays(Path(d) / f"state-r{rnd}-{when}-u{first}.safetensors",
                {k: store.full(k).float().cpu().numpy() for k in store.keys})


# -- server side ---------------------------------------------------------------------------
class GridTransport:
    """federation.deploy.server.Transport on a Flower Grid."""

    def __init__(self, grid: Grid, timeout: float):
        self.grid, self.timeout = grid, timeout

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def _exchange(self, contents: dict[int, RecordDict], kind: str, decode) -> dict:
        msgs = [Message(content=c, dst_node_id=n, message_type=kind) for n, c in contents.items()]
        replies = self.grid.send_and_receive(msgs, timeout=self.timeout)
        out: dict[int, object] = {n: TimeoutError(f"no reply within {self.timeout:.0f} s") for n in contents}
        for r in replies:
            node = int(r.metadata.src_node_id)
            if r.has_error():
                out[node] = RuntimeError(f"error reply: {r.error.reason}")
                continue
            capture_reply(kind, node, r.content)
            try:
                out[node] = decode(r.content)
            except Exception as e:  # noqa: BLE001 - an undecodable reply is that node's failure
                out[node] = ValueError(f"undecodable reply ({type(e).__name__}: {e})")
        return out

    def hello(self, nodes: list[int]) -> dict:
        def dec(c: RecordDict) -> dict:
            info, arrays = c[REC_INFO], _numpy(c[REC_HELLO])
            return {**arrays, HELLO_N_ITEMS: int(info[HELLO_N_ITEMS]),
                    HELLO_CATALOGUE: str(info[HELLO_CATALOGUE]), HELLO_CONFIG: str(info[HELLO_CONFIG]),
                    HELLO_CONTENT: str(info[HELLO_CONTENT]) if HELLO_CONTENT in info else ""}
        return self._exchange({n: RecordDict() for n in nodes}, MSG_QUERY, dec)

    def train(self, requests: dict[int, TrainRequest]) -> dict:
        contents = {n: train_request_content(r) for n, r in requests.items()}
        return self._exchange(contents, MSG_TRAIN, decode_train_reply)

    def evaluate(self, nodes: list[int], decoder: dict[str, np.ndarray], part: str,
                 holders: np.ndarray | None = None, prototypes: np.ndarray | None = None) -> dict:
        def content() -> RecordDict:
            c = _with_holders(RecordDict({REC_DECODER: _arrays(decoder), REC_CONFIG: ConfigRecord({"part": part})}),
                              holders)
            if prototypes is not None:
                c[REC_PROTOTYPES] = _arrays({PROTO_CENTROIDS: prototypes})
            return c
        contents = {n: content() for n in nodes}
        return self._exchange(contents, MSG_EVALUATE,
                              lambda c: {EVAL_SUM: float(c[REC_EVAL][EVAL_SUM]), EVAL_COUNT: int(c[REC_EVAL][EVAL_COUNT])})


    def rank_hello(self, nodes: list[int]) -> dict:
        return self._exchange({n: RecordDict() for n in nodes}, f"{MSG_QUERY}.{ACTION_RANK}",
                              lambda c: dict(c[REC_INFO]))

    def rank_grow(self, node: int, model: str):
        return self._exchange({node: RecordDict({REC_MODEL: _model_record(model)})}, f"{MSG_TRAIN}.{ACTION_RANK}",
                              _model_text)[node]

    def rank_eval(self, nodes: list[int], model: str, part: str) -> dict:
        contents = {n: RecordDict({REC_MODEL: _model_record(model), REC_CONFIG: ConfigRecord({"part": part})})
                    for n in nodes}
        return self._exchange(contents, f"{MSG_EVALUATE}.{ACTION_RANK}",
                              lambda c: (float(c[REC_EVAL][EVAL_SUM]), int(c[REC_EVAL][EVAL_COUNT])))

    def prototypes(self, nodes: list[int], decoder: dict[str, np.ndarray], centroids: np.ndarray,
                   holders: np.ndarray | None = None, secagg: SecAggRequest | None = None) -> dict:
        contents = {n: _with_secagg(_with_holders(RecordDict({REC_DECODER: _arrays(decoder),
                                                              REC_PROTOTYPES: _arrays({PROTO_CENTROIDS: centroids})}),
                                                  holders), secagg)
                    for n in nodes}
        return self._exchange(contents, MSG_PROTOTYPES, lambda c: _numpy(c[REC_STATS]))


def decode_train_reply(c: RecordDict) -> TrainReply:
    """A node's train reply back into one update per user (federation.strategies.messages). A record
    other than the updates and the totals, or packed arrays that do not fit together, make the whole
    reply undecodable: that node's contribution to the round is dropped and logged."""
    extra = set(c.keys()) - {REC_UPDATES, REC_TOTALS}
    if extra:
        raise ValueError(f"unexpected record {sorted(extra)[0]!r}")
    updates: dict[int, dict[str, np.ndarray]] = {}
    if REC_UPDATES in c.keys():
        p = _numpy(c[REC_UPDATES])
        users, off = p.pop(PACK_USERS), p.pop(PACK_OFFSETS)
        n = len(users)
        if SEALED_A in p:
            return TrainReply(_unpack_sealed(p, users), int(c[REC_TOTALS][TOTAL_USERS]),
                              float(c[REC_TOTALS][TOTAL_LOSS]))
        if (off.shape != (n + 1,) or off[0] != 0 or np.any(np.diff(off) < 0)
                or any(len(v) != (off[-1] if k in ROW_KEYS else n) for k, v in p.items())):
            raise ValueError("packed updates of inconsistent sizes")
        for j, u in enumerate(users.tolist()):
            m = {k: (v[off[j]:off[j + 1]] if k in ROW_KEYS else v[j]) for k, v in p.items()}
            if KEY_WEIGHT in m:
                m[KEY_WEIGHT] = np.asarray(m[KEY_WEIGHT]).reshape(())
            updates[int(u)] = m
    t = c[REC_TOTALS]
    return TrainReply(updates, int(t[TOTAL_USERS]), float(t[TOTAL_LOSS]))


def _unpack_sealed(p: dict[str, np.ndarray], users: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    if set(p) != {SEALED_A, SEALED_B, SEALED_A + "_offsets", SEALED_B + "_offsets"}:
        raise ValueError("packed sealed shares with unexpected arrays")
    out: dict[int, dict[str, np.ndarray]] = {int(u): {} for u in users.tolist()}
    for k in (SEALED_A, SEALED_B):
        v, off = p[k], p[k + "_offsets"]
        if v.dtype != np.uint8 or off.shape != (len(users) + 1,) or off[0] != 0 or np.any(np.diff(off) < 0) \
                or off[-1] != len(v):
            raise ValueError("packed sealed shares of inconsistent sizes")
        for j, u in enumerate(users.tolist()):
            out[int(u)][k] = v[off[j]:off[j + 1]]
    return out


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    _setup_logging()
    rc = context.run_config
    rank_cfg = _ranker_config(rc)
    if rank_cfg is not None:
        from federation.ranking.deployed import serve_ranker

        run_dir = Path(str(rc.get("run-dir") or f"runs/{rank_cfg.name}-flower"))
        serve_ranker(rank_cfg, run_dir, GridTransport(grid, float(rc.get("round-timeout", 120))),
                     min_nodes=int(rc.get("min-nodes", 1)), wait_s=float(rc.get("wait-s", 120)))
        log.info("re-ranker finished -> %s", run_dir)
        return
    cfg = _job_config(rc)
    run_dir = Path(str(rc.get("run-dir") or f"runs/{cfg.name}-flower"))
    server = FederatedServer(cfg, run_dir, GridTransport(grid, float(rc.get("round-timeout", 120))),
                             min_nodes=int(rc.get("min-nodes", 1)), wait_s=float(rc.get("wait-s", 120)),
                             min_fraction=float(rc.get("min-fraction", 0.5)),
                             max_retries=int(rc.get("max-retries", 3)),
                             capture_dir=str(rc.get("capture-dir", "")) or None)
    summary = server.run()
    log.info("run finished: %s -> %s", {k: v for k, v in summary.items() if k in ("valid", "test")}, run_dir)
