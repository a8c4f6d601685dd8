"""Kill a training job at each commit point (SIGKILL, FEDREC_FAULT_KILL) and resume it: the result is
bit-identical to an uninterrupted run — checkpoint tensors and every metrics line but the timings."""
import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.numpy import load_file

from recsys.synth import SynthSpec, write_catalogue

pytestmark = pytest.mark.e2e
TIMING = ("seconds", "updates_per_s")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill") / "synth"
    write_catalogue(SynthSpec(n_users=80, n_items=40, mean_activity=10, seed=5), d, images=False, progress=False)
    return d


def _train(cfg, run_dir, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "fedrec.cli", "train", str(cfg), "--run-dir", str(run_dir), *extra],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


def _records(run_dir):
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory):
    """Uninterrupted runs, per (mode, checkpoint_every)."""
    root = tmp_path_factory.mktemp("ref")
    out = {}
    for mode in ("explicit", "implicit"):
        for every in (1, 3):
            cfg = root / f"{mode}-{every}.yaml"
            cfg.write_text(yaml.safe_dump({
                "name": "k", "data": {"path": str(synth)},
                "model": {"mode": mode, "hidden": [16, 8], **({"input_norm": "l2"} if mode == "implicit" else {})},
                "federation": {"rounds": 6, "fraction": 0.3}, "eval": {"every": 2},
                "output": {"checkpoint_every": every}}))
            r = _train(cfg, root / f"{mode}-{every}")
            assert r.returncode == 0, r.stderr
            out[(mode, every)] = (cfg, root / f"{mode}-{every}")
    return out


@pytest.mark.parametrize("mode,every,point,rnd", [
    ("explicit", 1, "checkpoint", 3), ("explicit", 1, "metrics", 3), ("explicit", 1, "metrics_partial", 4),
    ("implicit", 1, "checkpoint", 2), ("implicit", 1, "metrics", 5), ("implicit", 1, "metrics_partial", 3),
    ("explicit", 3, "checkpoint", 3), ("implicit", 3, "metrics", 3), ("implicit", 3, "metrics_partial", 5),
])
def test_kill_at_a_commit_point_then_resume_is_bit_identical(reference, tmp_path, mode, every, point, rnd):
    cfg, ref = reference[(mode, every)]
    run = tmp_path / "run"
    r = _train(cfg, run, env={"FEDREC_FAULT_KILL": f"{point}@{rnd}"})
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])           # killed, not a clean stop
    r = _train(cfg, run, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_file(str(ref / "checkpoint.safetensors")), load_file(str(run / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert _records(run) == _records(ref)
    assert json.loads((run / "summary.json").read_text())["test"] == json.loads((ref / "summary.json").read_text())["test"]


def test_content_model_killed_and_resumed_is_bit_identical(synth, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "kc", "data": {"path": str(synth)}, "model": {"mode": "implicit", "hidden": [16, 8], "input_norm": "l2"},
        "content": {"enabled": True, "backend": "sentence", "model": "minilm", "fusion": "text", "scale": 1.0},
        "federation": {"rounds": 4, "fraction": 0.3}, "eval": {"every": 0}, "output": {"checkpoint_every": 1}}))
    assert _train(cfg, tmp_path / "ref").returncode == 0
    assert _train(cfg, tmp_path / "run", env={"FEDREC_FAULT_KILL": "metrics@2"}).returncode == -9
    r = _train(cfg, tmp_path / "run", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_file(str(tmp_path / "ref" / "checkpoint.safetensors")), load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert _records(tmp_path / "run") == _records(tmp_path / "ref")


def test_resume_refuses_a_changed_config_or_changed_data(synth, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    cfg = tmp_path / "c.yaml"
    base = {"name": "kr", "data": {"path": str(data)}, "model": {"mode": "explicit", "hidden": [16, 8]},
            "federation": {"rounds": 4, "fraction": 0.3}, "eval": {"every": 0}, "output": {"checkpoint_every": 1}}
    cfg.write_text(yaml.safe_dump(base))
    assert _train(cfg, tmp_path / "run", env={"FEDREC_FAULT_KILL": "metrics@2"}).returncode == -9
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    cfg.write_text(yaml.safe_dump({**base, "federation": {**base["federation"], "fraction": 0.5}}))
    r = _train(cfg, tmp_path / "run", "--resume")
    assert r.returncode == 2 and "differs from the run's config.yaml" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text(yaml.safe_dump(base))
    inter = next(data.glob("*.inter"))
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(lines[:-1]) + "\n")                       # one interaction fewer
    r = _train(cfg, tmp_path / "run", "--resume")
    assert r.returncode == 2 and "different data" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before   # nothing written by the refusals


_SERVER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import logging
import yaml
from loopback import Loopback, nodes_for
from federation.deploy.server import FederatedServer
from federation.runs.config import parse_config
logging.basicConfig(level=logging.INFO)
cfg = parse_config(yaml.safe_load(Path({cfg!r}).read_text()))
nodes, _, _ = nodes_for(cfg, Path({root!r}), 3)
FederatedServer(cfg, Path({root!r}) / "run", Loopback(nodes)).run()
"""


@pytest.mark.parametrize("point,rnd", [("checkpoint", 2), ("metrics_partial", 3)])
def test_a_killed_deployment_server_resumes_bit_identical(synth, tmp_path, point, rnd):
    """The deployment's server (federation.deploy.server over loopback nodes, each with its state on
    disk) SIGKILLed at a commit point; server and nodes restart from disk and finish. Checkpoint,
    prototypes and metrics equal an uninterrupted deployment's."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"name": "k", "seed": 2, "data": {"path": str(synth)},
                                   "model": {"mode": "explicit", "hidden": [16, 8]},
                                   "federation": {"rounds": 4, "fraction": 0.4}, "eval": {"every": 2},
                                   "prototypes": {"enabled": True, "k": 2, "iters": 1}}))
    tests = os.path.dirname(os.path.abspath(__file__))

    def server(root, env=None):
        code = _SERVER.format(tests=tests, cfg=str(cfg), root=str(root))
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
    r = server(tmp_path / "whole")
    assert r.returncode == 0, r.stderr[-2000:]
    r = server(tmp_path / "cut", {"FEDREC_FAULT_KILL": f"{point}@{rnd}"})
    assert r.returncode == -9, r.stderr[-2000:]
    assert not (tmp_path / "cut/run/summary.json").exists()
    r = server(tmp_path / "cut")
    assert r.returncode == 0 and f"after round {2 if point == 'checkpoint' else 3}" in r.stderr, r.stderr[-2000:]
    a, b = load_file(str(tmp_path / "whole/run/checkpoint.safetensors")), load_file(str(tmp_path / "cut/run/checkpoint.safetensors"))
    assert a.keys() == b.keys() and any("prototypes" in k for k in a)
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert _records(tmp_path / "cut/run") == _records(tmp_path / "whole/run")
