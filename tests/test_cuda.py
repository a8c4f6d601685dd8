"""`--device cuda`: without a GPU one clear line and exit 2; with one, a job trains there and agrees with
the CPU run (float32 kernels differ in summation order, so to a tolerance)."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

from recsys.synth import SynthSpec, write_catalogue

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    write_catalogue(SynthSpec(n_users=80, n_items=40, mean_activity=10, seed=6), root / "synth", images=False,
                    progress=False)
    p = root / "cfg.yaml"
    p.write_text(yaml.safe_dump({"name": "c", "data": {"path": str(root / "synth")},
                                 "model": {"mode": "implicit", "hidden": [16, 8], "input_norm": "l2"},
                                 "federation": {"rounds": 4, "fraction": 0.5}, "eval": {"every": 0}}))
    return p


def _train(cfg, run_dir, device):
    return subprocess.run([sys.executable, "-m", "fedrec.cli", "train", str(cfg), "--run-dir", str(run_dir),
                           "--device", device], capture_output=True, text=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_one_clear_line(cfg, tmp_path):
    r = _train(cfg, tmp_path / "run", "cuda")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "no CUDA device" in lines[0] and "Traceback" not in r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_job_agrees_with_cpu(cfg, tmp_path):
    for dev in ("cpu", "cuda"):
        r = _train(cfg, tmp_path / dev, dev)
        assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads((tmp_path / "cpu" / "summary.json").read_text())["test"]
    b = json.loads((tmp_path / "cuda" / "summary.json").read_text())["test"]
    assert b["ndcg@10"] == pytest.approx(a["ndcg@10"], abs=0.02)
    r = subprocess.run([sys.executable, "-m", "fedrec.cli", "recommend", str(tmp_path / "cuda"), "--user", "0",
                        "--device", "cuda"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("(item ") == 10
