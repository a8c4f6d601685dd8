"""Benchmarks of the Flower deployment and of differential privacy (``fedrec bench deployment,privacy``).

Every figure is measured when the command runs."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from federation.strategies.comm import client_bytes, fedavg_bytes
from federation.runs.config import parse_config
from federation.runs.jobs import build_federation, prepare_data
from federation.simulation import FederatedAutoencoder
from recsys.errors import FedrecError
from recsys.evaluation import evaluate_model


def _ml100k(data_dir: Path, **over) -> dict:
    src = Path(__file__).resolve().parents[2] / "configs" / "ml100k-explicit.yaml"
    cfg = yaml.safe_load(src.read_text())
    cfg["data"]["path"] = str((data_dir / "ml-100k").resolve())
    cfg["eval"] = {"every": 0}
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def bench_deployment(data_dir: Path, node_counts=(3, 20), rounds: int = 2) -> tuple[list, list]:
    """Seconds and bytes per round: Flower on localhost vs the in-process engine, same data and sampling."""
    from federation.deploy.process import LocalFederation

    rows = []
    cfgd = _ml100k(data_dir, name="bench-flower", federation={"rounds": rounds})
    cfg = parse_config(cfgd)
    data, split = prepare_data(cfg)
    fed = build_federation(cfg, data, split)
    t_in, up_in = [], []
    for _ in range(rounds):
        st = fed.run_round()
        t_in.append(st.seconds)
        up_in.append(st.bytes_up)
    rows.append(["in-process engine", "-", float(np.mean(t_in)), int(np.mean(up_in)), "-", "-", "-", "-", "-"])
    for n in node_counts:
        with tempfile.TemporaryDirectory(prefix="fedrec-bench-flower-") as tmp:
            tmp = Path(tmp)
            (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfgd))
            t0 = time.perf_counter()
            with LocalFederation(tmp, n) as lf:
                lf.start_superlink()
                for i in range(n):
                    lf.start_node(i)
                r = lf.run({"job-config": str(tmp / "cfg.yaml"), "run-dir": str(tmp / "run"), "min-nodes": n,
                            "wait-s": 600, "round-timeout": 900}, timeout=3600)
            wall = time.perf_counter() - t0
            if r.returncode != 0 or not (tmp / "run/metrics.jsonl").exists():
                keep = Path(tempfile.mkdtemp(prefix=f"fedrec-bench-flower-{n}-logs-"))
                shutil.copytree(tmp / "logs", keep / "logs", dirs_exist_ok=True)
                raise FedrecError(f"flower benchmark with {n} nodes finished without metrics (rc {r.returncode}); "
                                  f"logs kept in {keep / 'logs'}")
            recs = [json.loads(x) for x in (tmp / "run/metrics.jsonl").read_text().splitlines()]
            up, load, trained = _train_message_times(tmp / "logs")
            rows.append([f"Flower, {n} SuperNodes", n, float(np.mean([x["seconds"] for x in recs])),
                         int(np.mean([x["bytes_up"] for x in recs])), int(np.mean([x["bytes_down"] for x in recs])),
                         round(wall, 1), up, load, trained])
    # bytes per client per round: partial compression vs full-model FedAvg (ml-100k, measured histories)
    n_per = np.diff(fed.train.indptr)
    users = n_per[n_per > 0]
    per = [client_bytes("personalfr", fed.shape, int(k))[0] for k in users]
    comm = [["personalfr (rows of own items + dense decoder)", int(np.median(per)), int(np.mean(per)), int(np.max(per))],
            ["full-model FedAvg", fedavg_bytes(fed.shape), fedavg_bytes(fed.shape), fedavg_bytes(fed.shape)]]
    return rows, comm


_TRAIN_LINE = re.compile(r"ClientApp process up ([0-9.]+) s before the message, node \(data, split, state\) "
                         r"loaded in ([0-9.]+) s, \d+ users trained in ([0-9.]+) s")


def _train_message_times(logs: Path) -> tuple[float, float, float]:
    """Medians over every train message in the SuperNode logs (federation.deploy.flower_app.client_train):
    seconds from the ClientApp process start to the message (process start, imports, FAB), loading the
    node (data, split, state), and training its users."""
    found = [tuple(map(float, m.groups())) for f in sorted(logs.glob("supernode-*.log"))
             for m in _TRAIN_LINE.finditer(f.read_text(errors="replace"))]
    if not found:
        return float("nan"), float("nan"), float("nan")
    return tuple(round(float(np.median(c)), 2) for c in zip(*found))


def bench_privacy(data_dir: Path, epsilons=(8.0, 2.0), clip: float = 1.0) -> list:
    """Test RMSE of the shipped ml-100k config without DP and with DP at each epsilon (delta 1e-4)."""
    out = []
    for eps in (None, *epsilons):
        over = {"name": "bench-dp"}
        if eps is not None:
            over["privacy"] = {"dp": True, "target_epsilon": eps, "clip": clip, "delta": 1e-4}
        cfg = parse_config(_ml100k(data_dir, **over))
        data, split = prepare_data(cfg)
        fed = build_federation(cfg, data, split)
        t0 = time.perf_counter()
        for _ in range(cfg.federation.rounds):
            st = fed.run_round()
        r = data.ratings.data
        m = evaluate_model(FederatedAutoencoder(fed, (float(r.min()), float(r.max()))), data, split, "test")
        sigma = fed.cfg.dp.noise_multiplier if fed.cfg.dp else 0.0
        out.append(["no DP" if eps is None else f"epsilon {eps:g}", round(sigma, 3), clip if eps else "-",
                    "-" if eps is None else round(st.epsilon, 2), m["rmse"], round(time.perf_counter() - t0, 1)])
    return out
