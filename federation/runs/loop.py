"""The run loop shared by the in-process job (``federation.runs.jobs``) and the Flower server
(``federation.deploy.server``).

One code path writes what a run directory records: one ``metrics.jsonl`` line per completed round
(trimmed to the checkpoint on resume, with cumulative bytes), the atomic checkpoint, the prototype
rounds and their log, ``summary.json`` and the manifest's completion. What differs between the two
deployments — how a round is trained and how a split is evaluated — comes from a ``RoundSource``:
the in-process engine (``jobs.InProcessSource``) or the Flower server talking to its SuperNodes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from recsys.errors import ManifestError
from recsys.io import atomic_path, fault, sha256_file, write_json, write_text

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
METRICS = "metrics.jsonl"
PROTOTYPE_LOG = "prototypes.json"          # the prototype rounds of a run: sizes, spread, bytes
_CUMULATIVE = ("bytes_up", "bytes_down", "fedavg_bytes")   # per-round figures also kept as running totals


class RoundSource(Protocol):
    """Where a run's rounds come from."""
    label: str                              # progress bar label
    round: int                              # rounds completed
    checkpoint_every: int
    metric: str                             # the metric shown on the progress bar (a key of evaluate())

    def run_round(self) -> dict: ...                      # train one round: its metrics record ("round", "loss", bytes)
    def evaluate(self, part: str) -> dict[str, float]: ...
    def state_tensors(self) -> dict[str, torch.Tensor]: ...
    def has_prototypes(self) -> bool: ...
    def fit_prototypes(self, progress: bool) -> dict: ...   # run the prototype rounds; their record
    def privacy_summary(self) -> dict: ...                  # epsilon and delta of a DP run, else {}


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], rnd: int, records: list[dict] = ()) -> None:
    """One atomic commit: a single rename of a safetensors file whose metadata holds its round, the
    SHA-256 of its tensors and the metrics records of the rounds since the previous checkpoint (so a kill
    between the checkpoint and metrics.jsonl loses no line). checkpoint.json, written after, is a
    convenience copy of round and tensor checksum; nothing trusts it over the checkpoint itself."""
    t = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"round": str(rnd), "sha256": payload_sha256(t), "metrics": json.dumps(list(records))}
    with atomic_path(run_dir / CHECKPOINT) as tmp:
        save_file(t, str(tmp), metadata=meta)
    fault("checkpoint", rnd)
    write_json(run_dir / CHECKPOINT_META, {"round": rnd, "tensors_sha256": meta["sha256"]})   # no second hash


def checkpoint_meta(run_dir: Path) -> dict | None:
    """The checkpoint's own metadata (round, sha256 of its tensors, metrics records), None without one."""
    ck = run_dir / CHECKPOINT
    if not ck.exists():
        return None
    try:
        with safe_open(str(ck), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - a truncated or foreign file
        raise ManifestError(f"{ck}: unreadable checkpoint (corrupt or cut short: its checksum cannot be "
                            "verified)") from None


def read_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], int] | None:
    """(tensors, completed round) of the run's checkpoint, None when there is none; ManifestError when
    it does not match its checksum or cannot be read. Checkpoints written before the checksum moved into
    the file are checked against checkpoint.json."""
    ck = run_dir / CHECKPOINT
    meta = checkpoint_meta(run_dir)
    if meta is None:
        return None
    if "sha256" not in meta:                                   # older format: the sidecar holds the checksum
        meta_p = run_dir / CHECKPOINT_META
        if not meta_p.exists():
            return None
        side = json.loads(meta_p.read_text())
        if sha256_file(ck) != side.get("sha256"):
            raise ManifestError(f"{ck}: checksum does not match {CHECKPOINT_META} (corrupt or partly written)")
        meta = {**meta, "round": side["round"]}
    try:
        tensors = load_file(str(ck))
    except Exception:  # noqa: BLE001
        raise ManifestError(f"{ck}: unreadable checkpoint") from None
    if "sha256" in meta and payload_sha256(tensors) != meta["sha256"]:
        raise ManifestError(f"{ck}: its tensors do not match the checksum it was written with (corrupt)")
    return tensors, int(meta["round"])


def checkpoint_records(run_dir: Path) -> list[dict]:
    """The metrics records the checkpoint carries (the rounds since the checkpoint before it)."""
    meta = checkpoint_meta(run_dir) or {}
    return json.loads(meta.get("metrics", "[]"))


def recover_metrics(path: Path, records: list[dict]) -> None:
    """Append the checkpoint's records that metrics.jsonl lacks (a kill after the checkpoint and before
    its metrics line); the file must already be trimmed to the checkpoint's round."""
    last = 0
    if path.exists():
        for line in path.read_text().splitlines():
            last = max(last, json.loads(line).get("round", 0))
    missing = [r for r in records if r.get("round", 0) > last]
    if missing:
        old = path.read_text() if path.exists() else ""
        write_text(path, old + "".join(json.dumps(r) + "\n" for r in missing))
        log.info("recovered %d metrics line(s) from the checkpoint", len(missing))


def trim_metrics(path: Path, upto_round: int) -> None:
    """Keep only metric lines of rounds <= upto_round (a resumed run re-runs the later ones)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break                                     # a line cut by a kill: drop it and what follows
        if rec.get("round", 0) <= upto_round:
            keep.append(line)
    write_text(path, "".join(ln + "\n" for ln in keep))


def run_rounds(run_dir: Path, source: RoundSource, rounds: int, eval_every: int, eval_split: str,
               prototypes: bool, progress: bool = True, stop_after: int | None = None) -> dict | None:
    """Run ``source`` to ``rounds`` completed rounds, then its prototype rounds (``prototypes``), and
    write the summary; returns it. stop_after: stop after this many rounds in this call, as if killed
    (tests and benchmarks); returns None then."""
    from recsys.progress import progress_bar

    metrics_path = run_dir / METRICS
    trim_metrics(metrics_path, source.round)
    if source.round > 0:
        recover_metrics(metrics_path, checkpoint_records(run_dir))
    cum = dict.fromkeys(_CUMULATIVE, 0)
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            rec = json.loads(line)
            cum = {k: rec.get(f"cum_{k}", cum[k]) for k in _CUMULATIVE}
    bar = progress_bar(total=rounds, initial=source.round, desc=source.label, unit="round", disable=not progress,
                       dynamic_ncols=True)
    done_here = 0
    pending: list[dict] = []                   # records of the rounds since the last checkpoint
    with open(metrics_path, "a", encoding="utf-8") as mf:
        while source.round < rounds:
            rec = source.run_round()
            for k in _CUMULATIVE:
                if k in rec:
                    cum[k] += rec[k]
                    rec[f"cum_{k}"] = cum[k]
            last = source.round == rounds
            post = {"loss": f"{rec['loss']:.4f}"}
            if (eval_every and source.round % eval_every == 0) or last:
                m = source.evaluate(eval_split)
                rec.update({f"{eval_split}_{k}": v for k, v in m.items()})
                if source.metric in m:
                    post[source.metric] = f"{m[source.metric]:.4f}"
            bar.set_postfix(**post, refresh=False)               # shown by the update below
            pending.append(rec)
            if source.round % source.checkpoint_every == 0 or last:
                save_checkpoint(run_dir, source.state_tensors(), source.round, pending)   # the round is done
                pending = []
            fault("metrics", source.round)
            line = json.dumps(rec) + "\n"
            if os.environ.get("FEDREC_FAULT_KILL") == f"metrics_partial@{source.round}":
                mf.write(line[:len(line) // 2])
                mf.flush()
                fault("metrics_partial", source.round)
            mf.write(line)
            mf.flush()
            bar.update(1)
            done_here += 1
            if stop_after is not None and done_here >= stop_after and not last:
                bar.close()
                return None
    bar.close()
    info = None
    if prototypes:
        # A resumed run whose checkpoint holds them keeps them; without their log it refits (the fit
        # is seeded, so the prototypes come out the same).
        if not source.has_prototypes() or not (run_dir / PROTOTYPE_LOG).exists():
            write_json(run_dir / PROTOTYPE_LOG, source.fit_prototypes(progress))
            save_checkpoint(run_dir, source.state_tensors(), source.round)
        info = json.loads((run_dir / PROTOTYPE_LOG).read_text())
        cum["bytes_up"] += info["bytes_up"]
        cum["bytes_down"] += info["bytes_down"]
    summary: dict = {part: source.evaluate(part) for part in ("valid", "test")}
    summary["rounds"] = source.round
    if info is not None:
        summary["prototypes"] = info
    summary.update(source.privacy_summary())
    summary.update(bytes_up_total=cum["bytes_up"], bytes_down_total=cum["bytes_down"])
    if cum["fedavg_bytes"]:
        summary["fedavg_bytes_total"] = cum["fedavg_bytes"]
    write_json(run_dir / "summary.json", summary)
    man = json.loads((run_dir / "manifest.json").read_text())
    man["status"] = "completed"
    write_json(run_dir / "manifest.json", man)
    return summary
