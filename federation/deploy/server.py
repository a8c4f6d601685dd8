"""The federated server's round loop for a real deployment, over any transport.

Transport-free: ``Transport`` is what the loop needs from the network (federation/deploy/flower_app.py
implements it on Flower's Grid; tests implement it in process). The math is the in-process engine's:
clients are drawn by ``simulation.sample_clients``, trained by ``Federation.client_messages`` on their
node, and aggregated by ``messages.aggregate_updates`` (or ``privacy.dp_aggregate``), so for the same
seed and sampling the decoder equals the in-process engine's.

Failures: a node that does not answer in time, answers with an error, or sends a malformed or
outlying update loses that round's contribution (logged); the round counts when at least
``min_fraction`` of the sampled clients' updates were accepted, otherwise it is retried with a fresh
view of the connected nodes. Every completed round is checkpointed atomically (decoder + round) before
the next starts; a restarted server resumes after the last completed round.

Holder-weighted content (content.holder_weight > 0): each node's hello carries how many of its users
hold each item; before round 1 the server sums them over the nodes it knows into the federation's
holder counts, saves them in the run dir (holders.safetensors, checksum in the manifest; a resumed run
reuses them) and sends them with every train and evaluate message. Counts are fixed for the run: a
node that joins later trains with them but adds nothing to them (logged).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import yaml

from federation.runs.config import JobConfig
from federation.runs.jobs import RUN_FORMAT, fed_settings, prototype_settings
from federation.runs.loop import read_checkpoint, run_rounds
from federation.engine.prototypes import PrototypeStats, fit_prototypes, rounds_needed, stats_from_message
from federation.simulation import PROTOTYPES_TENSOR
from federation.strategies.messages import (RejectedUpdate, aggregate_updates, apply_dp_revealed, apply_revealed,
                                             expand_update, pack_starts, validate_update, validate_updates)
from federation.strategies.base import RoundInfo
from federation.engine.local_sgd import decay_factor
from federation.privacy import channel, secagg
from federation.privacy.fixedpoint import from_ring
from federation.deploy.node import (EVAL_COUNT, EVAL_SUM, HELLO_CATALOGUE, HELLO_CONFIG, HELLO_CONTENT, HELLO_HOLDERS,
                             HELLO_N_ITEMS, HELLO_USERS, SEALED_A, SEALED_B, TrainReply, config_fingerprint,
                             content_dim_of, decoder_keys)
from federation.privacy.dp import dp_aggregate, epsilon
from federation.deploy.per_client import PerClientServer
from federation.simulation import lr_at, sample_clients
from federation.strategies.registry import get_strategy
from recsys.errors import ConfigError, FedrecError, ManifestError
from recsys.io import library_versions, load_arrays, save_arrays, sha256_file, write_json, write_text
from recsys.models.autoencoder import AEShape, init_params

log = logging.getLogger(__name__)
HOLDERS_FILE = "holders.safetensors"     # a holder-weighted run's holder counts (fixed before round 1)


@dataclass
class TrainRequest:
    round: int                        # 0-based
    lr: float
    users: np.ndarray                 # (B,) the node's sampled users
    decoder: dict[str, np.ndarray]    # node.decoder_keys: the decoder (+ content projection)
    dp_clip: float | None
    holders: np.ndarray | None = None  # (N,) int64 federation holder counts (holder-weighted content only)
    secagg: "SecAggRequest | None" = None  # secure aggregation: where to seal the shares
    starts: dict[str, np.ndarray] | None = None  # per-user start models (FedCAC): messages.pack_starts


@dataclass
class SecAggRequest:
    run_id: str                       # binds every sealed share to this run (with round, user, aggregator)
    public: tuple[bytes, bytes]       # the two aggregators' X25519 public keys (32 bytes each)


class Transport(Protocol):
    """What the round loop needs from the network. Replies map node id -> reply or the exception that
    stands for its failure (timeout, error reply, undecodable message)."""

    def node_ids(self) -> list[int]: ...

    def hello(self, nodes: list[int]) -> dict[int, dict | Exception]: ...

    def train(self, requests: dict[int, TrainRequest]) -> dict[int, TrainReply | Exception]: ...

    def evaluate(self, nodes: list[int], decoder: dict[str, np.ndarray], part: str,
                 holders: np.ndarray | None = None, prototypes: np.ndarray | None = None) -> dict[int, dict | Exception]: ...

    def prototypes(self, nodes: list[int], decoder: dict[str, np.ndarray], centroids: np.ndarray,
                   holders: np.ndarray | None = None, secagg: SecAggRequest | None = None
                   ) -> dict[int, dict | Exception]: ...


def _well_formed(m: dict[str, np.ndarray], shape: AEShape) -> bool:
    try:
        validate_update(m, shape)
        return True
    except RejectedUpdate:
        return False


def payload_bytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))


class FederatedServer:
    def __init__(self, cfg: JobConfig, run_dir: str | Path, transport: Transport, min_nodes: int = 1,
                 wait_s: float = 120.0, min_fraction: float = 0.5, max_retries: int = 3,
                 capture_dir: str | Path | None = None):
        """capture_dir: a curious operator's log (the attack benchmark): every round's received messages,
        as they arrived, are kept there (``_capture``)."""
        self.cfg, self.run_dir, self.t = cfg, Path(run_dir), transport
        self.capture_dir = Path(capture_dir) if capture_dir else None
        self.min_nodes, self.wait_s = min_nodes, wait_s
        self.min_fraction, self.max_retries = min_fraction, max_retries
        self.settings = fed_settings(cfg)
        self.strategy = get_strategy(cfg.federation.strategy, cfg.federation.options)
        if not self.strategy.sends_messages:
            raise ConfigError(f"federation.strategy {self.strategy.name!r}: the Flower deployment exchanges "
                              "per-client messages of own-item rows; this strategy sends none "
                              "(run it in process with `fedrec train`)")
        self.per_client: PerClientServer | None = None   # FedCAC: the server's per-client state (_init_state)
        self.dp = self.settings.dp
        self.secagg = self.settings.secagg
        self.aggregators: list | None = None     # the two secure-aggregation aggregators (see _init_secagg)
        self.owner: dict[int, int] = {}          # user -> node id currently hosting it
        self.known: set[int] = set()             # nodes that said hello and were accepted
        self.catalogue: tuple[int, str] | None = None
        self.content: str | None = None          # content fingerprint every node must share ("" = none)
        self.keys: tuple[str, ...] = ()         # global parameters: decoder (+ content projection)
        self.shape: AEShape | None = None
        self.global_p: dict[str, torch.Tensor] = {}
        self.round = 0
        self.weighted = cfg.content.enabled and cfg.content.holder_weight > 0
        self.node_holders: dict[int, np.ndarray] = {}   # node -> its users' count per item (hello)
        self.holders: np.ndarray | None = None          # (N,) the run's holder counts, fixed before round 1
        self.prototypes: torch.Tensor | None = None     # (K, H1) fitted after the last round (prototypes.enabled)

    # -- membership --------------------------------------------------------------------------
    def _refresh_nodes(self) -> list[int]:
        alive = set(self.t.node_ids())
        gone = self.known - alive
        if gone:
            log.warning("%d node(s) disconnected: %s", len(gone), sorted(gone))
            self.known -= gone
            self.owner = {u: n for u, n in self.owner.items() if n in alive}
        new = sorted(alive - self.known)
        if new:
            for node, rep in self.t.hello(new).items():
                if isinstance(rep, Exception):
                    log.warning("node %s did not answer hello: %s", node, rep)
                    continue
                why = self._check_hello(rep)
                if why:
                    log.warning("node %s refused: %s", node, why)
                    continue
                self.known.add(node)
                if self.weighted:
                    self.node_holders[node] = np.asarray(rep[HELLO_HOLDERS], np.int64)
                    if self.holders is not None:
                        log.warning("node %s joined after the holder counts were fixed: its users train with "
                                    "them but their items are not counted", node)
                for u in np.asarray(rep[HELLO_USERS]).tolist():
                    self.owner[int(u)] = node
                log.info("node %s joined with %d users", node, len(rep[HELLO_USERS]))
        return sorted(self.known)

    def _check_hello(self, rep: dict) -> str | None:
        if rep[HELLO_CONFIG] != config_fingerprint(self.cfg):
            return "it runs with a different job config (model/federation/optimizer/split/seed)"
        cat = (int(rep[HELLO_N_ITEMS]), str(rep[HELLO_CATALOGUE]))
        if self.catalogue is None:
            self.catalogue = cat
        elif cat != self.catalogue:
            return f"its item catalogue {cat} differs from the federation's {self.catalogue}"
        content = str(rep.get(HELLO_CONTENT, ""))
        if bool(content) != self.cfg.content.enabled:
            return ("it has no item content but the job enables content" if self.cfg.content.enabled
                    else "it sends item content but the job has content disabled")
        if self.content is None:
            self.content = content
        elif content != self.content:
            return (f"its item content ({content}) differs from the federation's ({self.content}); build the "
                    "features once (fedrec features build) and give every node the same cache")
        if self.weighted:
            h = rep.get(HELLO_HOLDERS)
            n_users = len(np.asarray(rep[HELLO_USERS]))
            if h is None:
                return "it sent no holder counts (the job weights item content by them)"
            h = np.asarray(h)
            if (h.shape != (cat[0],) or not np.issubdtype(h.dtype, np.integer)
                    or (len(h) and (h.min() < 0 or h.max() > n_users))):
                return f"its holder counts ({h.dtype} {h.shape}) are not {cat[0]} integers in 0..{n_users}"
        return None

    def _wait_for_nodes(self) -> None:
        t0 = time.monotonic()
        while True:
            nodes = self._refresh_nodes()
            if len(nodes) >= self.min_nodes:
                return
            if time.monotonic() - t0 > self.wait_s:
                raise FedrecError(f"only {len(nodes)} usable node(s) after {self.wait_s:.0f} s "
                                  f"(need {self.min_nodes}); are the SuperNodes started and pointed at this SuperLink?")
            time.sleep(1.0)

    # -- state -------------------------------------------------------------------------------
    def _init_state(self) -> None:
        n_items = self.catalogue[0]
        m = self.cfg.model
        self.shape = AEShape(n_items, m.hidden[0], m.hidden[1], m.dropout, m.mode, m.input_norm,
                             content_dim_of(self.content or ""),
                             self.cfg.content.row_dropout if self.content else 0.0, m.input_tie,
                             **self.strategy.model_fields())
        self.keys = decoder_keys(self.shape)
        init = init_params(self.shape, self.cfg.seed, torch.float32)
        self.global_p = {k: init[k] for k in self.keys}
        if self.strategy.individual_updates:
            self.per_client = PerClientServer(self.strategy, self.shape, max(self.owner, default=-1) + 1)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        man_p = self.run_dir / "manifest.json"
        fp = config_fingerprint(self.cfg)
        if man_p.exists():
            man = json.loads(man_p.read_text())
            if man.get("deployment") != "flower" or man.get("config_fingerprint") != fp:
                raise ManifestError(f"{self.run_dir}: holds another run (different config or not a Flower run); "
                                    "use a new run-dir")
            if man.get("catalogue") != list(self.catalogue):
                raise ManifestError(f"{self.run_dir}: was trained on another item catalogue")
            if man.get("content", "") != (self.content or ""):
                raise ManifestError(f"{self.run_dir}: was trained with other item content features")
            if self.weighted:
                self._load_holders(man)
            self._load_checkpoint()
        else:
            write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
            man = {"format": RUN_FORMAT, "name": self.cfg.name, "status": "running", "deployment": "flower",
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config_fingerprint": fp,
                   "catalogue": list(self.catalogue), "content": self.content or "", "versions": library_versions()}
            if self.weighted:
                man["holders"] = self._count_holders()
            write_json(man_p, man)

    def _count_holders(self) -> dict:
        """The run's holder counts: the sum of the known nodes' hello counts, saved next to the manifest."""
        self.holders = np.zeros(self.catalogue[0], np.int64)
        for n in sorted(self.known):
            self.holders += self.node_holders[n]
        save_arrays(self.run_dir / HOLDERS_FILE, {"holders": self.holders})
        log.info("holder counts fixed from %d node(s): %d items held, %d cold", len(self.known),
                 int((self.holders > 0).sum()), int((self.holders == 0).sum()))
        return {"file": HOLDERS_FILE, "sha256": sha256_file(self.run_dir / HOLDERS_FILE), "nodes": len(self.known)}

    def _load_holders(self, man: dict) -> None:
        p = self.run_dir / HOLDERS_FILE
        want = (man.get("holders") or {}).get("sha256")
        if not p.exists() or want != sha256_file(p):
            raise ManifestError(f"{p}: missing or does not match the manifest's checksum; the run cannot "
                                "resume with the same holder counts (use a new run-dir)")
        h = load_arrays(p)["holders"]
        if h.shape != (self.catalogue[0],):
            raise ManifestError(f"{p}: {h.shape[0]} counts for {self.catalogue[0]} items")
        self.holders = h.astype(np.int64)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What the server checkpoints: the global decoder (+ the fitted prototypes)."""
        t = {f"global.{k}": v for k, v in self.global_p.items()}
        if self.prototypes is not None:
            t[PROTOTYPES_TENSOR] = self.prototypes
        if self.per_client is not None:
            t.update(self.per_client.state_tensors())
        return t

    def _load_checkpoint(self) -> None:
        got = read_checkpoint(self.run_dir)
        if got is None:
            return
        t, rnd = got
        ck = self.run_dir / "checkpoint.safetensors"
        for k in self.keys:
            if f"global.{k}" not in t or tuple(t[f"global.{k}"].shape) != tuple(self.global_p[k].shape):
                raise ManifestError(f"{ck}: {k} shape does not match this config and catalogue")
            self.global_p[k] = t[f"global.{k}"]
        P = t.get(PROTOTYPES_TENSOR)
        if P is not None and (not self.cfg.prototypes.enabled or tuple(P.shape) != (self.cfg.prototypes.k, self.shape.h1)):
            raise ManifestError(f"{ck}: prototypes of shape {tuple(P.shape)} do not match this config")
        self.prototypes = P
        if self.per_client is not None:
            try:
                self.per_client.load(t)
            except KeyError as e:
                raise ManifestError(f"{ck}: the server's per-client state {e} is missing") from None
        self.round = rnd
        log.info("resuming %s after round %d", self.run_dir, self.round)

    def decoder_arrays(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.global_p.items()}

    # -- rounds ------------------------------------------------------------------------------
    # -- the run loop's round source (federation.runs.loop) -----------------------------------
    checkpoint_every = 1                       # every round: nodes keep state exactly once per round

    @property
    def label(self) -> str:
        return f"{self.cfg.name} (flower)"

    @property
    def metric(self) -> str:
        return "rmse" if self.cfg.model.mode == "explicit" else f"ndcg@{self.cfg.eval.k[0]}"

    def run_round(self) -> dict:
        return self._one_round()

    def has_prototypes(self) -> bool:
        return self.prototypes is not None

    def privacy_summary(self) -> dict:
        if self.dp is None:
            return {}
        return {"epsilon": epsilon(self.dp.noise_multiplier, self.cfg.federation.fraction, self.round, self.dp.delta),
                "delta": self.dp.delta}

    def run(self, progress: bool = False) -> dict:
        """Wait for the nodes, then the shared run loop: rounds, checkpoints, metrics, prototypes, summary."""
        self._wait_for_nodes()
        self._init_state()
        if self.secagg is not None:
            self._init_secagg()
        c = self.cfg
        return run_rounds(self.run_dir, self, c.federation.rounds, c.eval.every, c.eval.split, c.prototypes.enabled,
                          progress)

    def _one_round(self) -> dict:
        rnd = self.round
        for attempt in range(self.max_retries + 1):
            t0 = time.perf_counter()
            self._refresh_nodes()
            candidates = np.array(sorted(self.owner), dtype=np.int64)
            if len(candidates) == 0:
                raise FedrecError("no clients left: every node disconnected")
            users = sample_clients(self.cfg.seed, rnd, candidates, self.cfg.federation.fraction)
            lr = lr_at(self.settings, rnd)
            dec = self.decoder_arrays()
            by_node: dict[int, list[int]] = {}
            for u in users.tolist():
                by_node.setdefault(self.owner[u], []).append(u)
            sec = None
            if self.secagg is not None:
                for a in self.aggregators:
                    a.open_round(rnd, users)
                sec = SecAggRequest(self.run_id, tuple(channel.public_bytes(a.private_key) for a in self.aggregators))
            starts: dict[int, dict[str, np.ndarray]] = {}
            if self.per_client is not None:          # FedCAC: each client's own start model
                self.per_client.begin(users, rnd)
                starts = self.per_client.starts(users, self.global_p)
            reqs = {n: TrainRequest(rnd, lr, np.array(us, np.int64), dec, self.dp.clip if self.dp else None,
                                    self.holders, sec,
                                    pack_starts({u: starts[u] for u in us if u in starts})
                                    if self.per_client is not None else None)
                    for n, us in by_node.items()}
            replies = self.t.train(reqs)
            if self.capture_dir is not None:
                self._capture(rnd, attempt, replies)
            msgs, loss_sum, n_loss, failed, up = [], 0.0, 0, [], 0
            by_user: dict[int, dict[str, np.ndarray]] = {}
            for node, rep in replies.items():
                if isinstance(rep, Exception):
                    failed.append(node)
                    log.warning("round %d: node %s failed: %s", rnd + 1, node, rep)
                    continue
                asked = set(by_node[node])
                for u, m in rep.updates.items():
                    up += payload_bytes(m)
                    if u in asked:
                        msgs.append((u, m) if self.secagg is not None else m)
                        by_user[int(u)] = m
                    else:
                        log.warning("round %d: node %s sent an update for user %s it was not asked for; "
                                    "ignored", rnd + 1, node, u)
                loss_sum, n_loss = loss_sum + rep.loss_sum, n_loss + rep.num_users
            if self.secagg is not None:
                new, accepted, rejected = self._secure_aggregate(msgs, rnd, lr, len(candidates))
            else:
                new, accepted, rejected = self._aggregate(msgs, len(candidates), rnd, lr)
            for _, why in rejected:
                log.warning("round %d: update rejected: %s", rnd + 1, why)
            need = max(1, int(np.ceil(self.min_fraction * len(users))))
            if accepted >= need:
                if self.per_client is not None:      # what the server learns: each client's model and mask
                    ok = {u: m for u, m in by_user.items() if _well_formed(m, self.shape)}
                    self.per_client.observe(ok, starts, self.global_p)
                self.global_p = {k: new[k].cpu().float() for k in self.keys}
                self.round += 1
                down = len(reqs) * (payload_bytes(dec) + (self.holders.nbytes if self.weighted else 0)) + sum(
                    r.users.nbytes + payload_bytes(r.starts or {}) for r in reqs.values())
                rec = {"round": self.round, "lr": lr, "sampled": int(len(users)), "participants": accepted,
                       "rejected": len(rejected), "failed_nodes": len(failed), "nodes": len(reqs),
                       "loss": loss_sum / max(1, n_loss), "bytes_up": up, "bytes_down": down,
                       "seconds": time.perf_counter() - t0, "attempt": attempt + 1}
                if self.dp is not None:
                    rec["epsilon"] = epsilon(self.dp.noise_multiplier, self.cfg.federation.fraction, self.round,
                                             self.dp.delta)
                log.info("round %d: %d/%d updates accepted, loss %.4f", self.round, accepted, len(users), rec["loss"])
                return rec
            log.warning("round %d: only %d of %d sampled clients' updates accepted (need %d); retrying "
                        "(attempt %d of %d)", rnd + 1, accepted, len(users), need, attempt + 1, self.max_retries)
        raise FedrecError(f"round {rnd + 1} failed {self.max_retries + 1} times: too few clients answered")

    def fit_prototypes(self, progress: bool) -> dict:
        """The prototype rounds (federation.engine.prototypes) over every node's users; each node returns the
        stats summed over its users. A node that fails a round is left out of that round (logged)."""
        from recsys.progress import progress_bar

        st_ = prototype_settings(self.cfg)
        dec = self.decoder_arrays()
        info = {"k": st_.k, "blend": st_.blend, "rounds": 0, "clients": len(self.owner), "bytes_up": 0,
                "bytes_down": 0, "failed_nodes": 0}
        # + 1: the nodes report how many users the final prototypes have (each node knows its own).
        bar = progress_bar(total=rounds_needed(st_) + 1, desc=f"{self.cfg.name} prototypes (flower)", unit="round",
                           disable=not progress)

        def stats_of(C: torch.Tensor) -> PrototypeStats:
            self._refresh_nodes()
            nodes = sorted(set(self.owner.values()))
            if self.secagg is not None:
                return secure_stats(C, nodes)
            reps = self.t.prototypes(nodes, dec, C.numpy(), self.holders)
            total = None
            for node, r in reps.items():
                if isinstance(r, Exception):
                    info["failed_nodes"] += 1
                    log.warning("prototype round %d: node %s failed: %s", info["rounds"] + 1, node, r)
                    continue
                try:
                    st = stats_from_message(r, C.shape)
                except ValueError as e:
                    info["failed_nodes"] += 1
                    log.warning("prototype round %d: node %s sent bad stats (%s); ignored", info["rounds"] + 1, node, e)
                    continue
                info["bytes_up"] += payload_bytes(r)
                total = st if total is None else total + st
            if total is None:
                raise FedrecError(f"prototype round {info['rounds'] + 1}: no node answered")
            info["rounds"] += 1
            info["bytes_down"] += len(nodes) * (payload_bytes(dec) + C.numel() * 4)
            bar.update(1)
            return total

        calls = [0]

        def secure_stats(C: torch.Tensor, nodes: list[int]) -> PrototypeStats:
            """A prototype round under secure aggregation: every user's stats as sealed additive shares,
            opened and summed by the two aggregators; only the sum over >= min_clients users per
            prototype is revealed (federation.engine.prototypes.reveal_stats)."""
            from federation.engine.prototypes import reveal_stats, split_vector

            K, H = C.shape
            dim = K * H + 2 * K
            tag = f"proto-{calls[0]}"
            calls[0] += 1
            users = sorted(self.owner)
            for a in self.aggregators:
                a.open_dense(tag, users, dim)
            req = SecAggRequest(f"{self.run_id}|{tag}", tuple(channel.public_bytes(a.private_key) for a in self.aggregators))
            reps = self.t.prototypes(nodes, dec, C.numpy(), self.holders, req)
            for node, r in reps.items():
                if isinstance(r, Exception):
                    info["failed_nodes"] += 1
                    log.warning("prototype round %d: node %s failed: %s", info["rounds"] + 1, node, r)
                    continue
                info["bytes_up"] += payload_bytes(r)
                try:
                    us, sa_, sb_ = np.asarray(r["users"]), np.asarray(r[SEALED_A]), np.asarray(r[SEALED_B])
                    if len(sa_) != len(us) or len(sb_) != len(us):
                        raise ValueError("users and sealed shares do not line up")
                except (KeyError, ValueError) as e:
                    info["failed_nodes"] += 1
                    log.warning("prototype round %d: node %s sent bad shares (%s); ignored", info["rounds"] + 1, node, e)
                    continue
                for u, x, y in zip(us.tolist(), sa_, sb_):
                    for agg, blob in zip(self.aggregators, (x, y)):
                        try:
                            agg.receive_dense(u, blob.tobytes())
                        except secagg.RejectedShare as e:
                            log.warning("prototype round %d: aggregator %s: %s", info["rounds"] + 1, "AB"[agg.party], e)
            both = set(self.aggregators[0].dense_only) & set(self.aggregators[1].dense_only)
            if len(both) < self.secagg.min_clients:
                raise FedrecError(f"prototype round {info['rounds'] + 1}: {len(both)} users' shares accepted, fewer "
                                  f"than the minimum {self.secagg.min_clients}; nothing revealed")
            total = secagg.ring_add(self.aggregators[0].dense_share(both), self.aggregators[1].dense_share(both))
            v = torch.as_tensor(from_ring(total))
            info["rounds"] += 1
            info["bytes_down"] += len(nodes) * (payload_bytes(dec) + C.numel() * 4)
            bar.update(1)
            return reveal_stats(*split_vector(v, K, H), self.secagg.frac_bits, self.secagg.min_clients)

        self.prototypes = fit_prototypes(stats_of, self.shape.h1, st_, self.cfg.seed).float()
        info["sizes"] = [int(v) for v in stats_of(self.prototypes).counts.tolist()]
        bar.close()
        return info

    def _capture(self, rnd: int, attempt: int, replies: dict) -> None:
        """Keep what the round's replies carried, per user: plain runs the item ids of each message,
        secure runs the sizes of the two sealed shares (all a party without the aggregators' keys has)."""
        from recsys.io import save_arrays

        users, ids, off, sizes = [], [], [0], []
        for rep in replies.values():
            if isinstance(rep, Exception):
                continue
            for u, m in sorted(rep.updates.items()):
                users.append(u)
                if SEALED_A in m:
                    sizes.append([len(m[SEALED_A]), len(m[SEALED_B])])
                    off.append(off[-1])
                else:
                    ids.append(np.asarray(m["item_ids"], np.int64))
                    off.append(off[-1] + len(ids[-1]))
        arrays = {"users": np.asarray(users, np.int64), "offsets": np.asarray(off, np.int64),
                  "item_ids": np.concatenate(ids) if ids else np.zeros(0, np.int64),
                  "sealed_sizes": np.asarray(sizes, np.int64).reshape(-1, 2)}
        save_arrays(self.capture_dir / f"round-{rnd + 1:05d}-{attempt + 1}.safetensors", arrays)

    def _init_secagg(self) -> None:
        """The two aggregators, each with a fresh X25519 key pair for this server process. In this release
        both run inside the server process (so whoever runs the server could read both shares); the
        protocol is the one two separate parties would run: see docs/privacy.md."""
        from federation.strategies.comm import dense_decoder_params

        lay = secagg.Layout(self.shape.n_items, self.shape.h1, dense_decoder_params(self.shape))
        self.run_id = f"{self.cfg.name}:{config_fingerprint(self.cfg)}"
        self.aggregators = [secagg.Aggregator(p, channel.new_private_key(), lay, self.secagg, self.run_id)
                            for p in (0, 1)]

    def _secure_aggregate(self, msgs: list[tuple[int, dict]], rnd: int, lr: float, n_candidates: int):
        """Each aggregator opens and checks its sealed shares; both sum the clients both accepted; the
        server adds the two sums and applies what ``secagg.reveal`` reveals. Refused (nothing revealed,
        decoder unchanged) below min_clients."""
        rejected = []
        for i, (u, m) in enumerate(msgs):
            if set(m) != {SEALED_A, SEALED_B}:
                rejected.append((i, f"user {u}: not a sealed secure-aggregation message"))
                continue
            for a, k in zip(self.aggregators, (SEALED_A, SEALED_B)):
                try:
                    a.receive(u, np.asarray(m[k], np.uint8).tobytes())
                except secagg.RejectedShare as e:
                    rejected.append((i, f"aggregator {'AB'[a.party]}: {e}"))
        both = self.aggregators[0].accepted() & self.aggregators[1].accepted()
        try:
            rows, dense = secagg.combine(*(a.share(both) for a in self.aggregators))
            rev = secagg.reveal(rows, dense, len(both), self.secagg)
        except secagg.RoundRefused as e:
            rejected.append((-1, str(e)))
            return dict(self.global_p), 0, rejected
        if rev.withheld:
            log.info("round %d: %d item rows sent by fewer than %d clients withheld", rnd + 1, rev.withheld,
                     self.secagg.min_clients)
        s = self.settings
        if self.dp is not None:          # clipped on the nodes, noised by each aggregator: the DP rule
            new = apply_dp_revealed(self.shape, self.global_p, rev, s.fraction * n_candidates, s.server_lr)
            return new, len(both), rejected
        info = RoundInfo(lr, decay_factor(lr, s.local_epochs, s.sgd), s.row_average, s.server_lr)
        return apply_revealed(self.strategy, self.shape, self.global_p, rev, info), len(both), rejected

    def _aggregate(self, msgs: list[dict], n_candidates: int, rnd: int, lr: float):
        p = self.cfg.privacy
        full, bad = [], []
        for i, m in enumerate(msgs):         # block-sparse messages (pFedGate) back to full updates
            try:
                full.append(expand_update(m, self.global_p, self.shape))
            except RejectedUpdate as e:
                bad.append((i, str(e)))
                full.append({})              # keeps the positions; rejected below, reported once with its reason
        msgs = full
        seen = {i for i, _ in bad}
        if self.dp is None:
            st = self.settings
            info = RoundInfo(lr, decay_factor(lr, st.local_epochs, st.sgd), st.row_average, st.server_lr)
            new, res = aggregate_updates(self.global_p, msgs, self.shape, st.row_average, st.server_lr,
                                         p.outlier_factor, strategy=self.strategy, info=info)
            return new, res.accepted, bad + [r for r in res.rejected if r[0] not in seen]
        # DP: malformed messages are still rejected; norms are bounded by clipping, not by outlier tests.
        ok, rejected = validate_updates(msgs, self.shape)
        expected = self.cfg.federation.fraction * n_candidates
        new = dp_aggregate(self.global_p, [msgs[i] for i in ok], self.dp, expected, self.cfg.federation.server_lr, rnd)
        return new, len(ok), bad + [r for r in rejected if r[0] not in seen]

    def evaluate(self, part: str) -> dict[str, float]:
        """Federated evaluation: every node scores its own users; only sums come back."""
        self._refresh_nodes()
        nodes = sorted(set(self.owner.values()))       # a node whose users moved (it reconnected) is skipped
        P = None if self.prototypes is None else self.prototypes.numpy()
        reps = self.t.evaluate(nodes, self.decoder_arrays(), part, self.holders, P)
        s = c = 0.0
        answered = 0
        for node, r in reps.items():
            if isinstance(r, Exception):
                log.warning("evaluation: node %s failed: %s", node, r)
                continue
            s, c, answered = s + float(r[EVAL_SUM]), c + float(r[EVAL_COUNT]), answered + 1
        k = self.cfg.eval.k[0]
        name = "rmse" if self.cfg.model.mode == "explicit" else f"ndcg@{k}"
        val = (s / c) ** 0.5 if name == "rmse" and c else (s / c if c else float("nan"))
        return {name: val, "n": int(c), "nodes": answered}
