"""The CLI end to end: bad input exits 2 with one line; train/resume/evaluate/recommend work."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from cli_inprocess import fedrec
from recsys.synth import SynthSpec, write_catalogue

FEDREC = [str(Path(sys.executable).parent / "fedrec")]


def run(*args, cwd=None):
    return fedrec(*args, cwd=cwd)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "synth"
    write_catalogue(SynthSpec(n_users=120, n_items=60, mean_activity=12, seed=1), d, images=False, progress=False)
    return d


def _config(tmp_path, synth, **over):
    cfg = {"name": "t", "seed": 0, "data": {"path": str(synth)},
           "model": {"mode": "explicit", "hidden": [16, 8]},
           "federation": {"strategy": "personalfr", "rounds": 6, "fraction": 0.3},
           "eval": {"every": 2}, "output": {"checkpoint_every": 1}}
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    p = tmp_path / "cfg.yaml"
    import yaml
    p.write_text(yaml.safe_dump(cfg))
    return p


def _one_error_line(r):
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("fedrec: error:"), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.e2e
def test_bad_inputs_exit_2(tmp_path, synth):
    p = tmp_path / "typo.yaml"
    p.write_text("federation: {rounds: 3, fractoin: 0.2}\n")
    assert "federation.fractoin: unknown key" in _one_error_line(run("train", str(p)))
    p.write_text("federation: {rounds: -1}\n")
    assert "federation.rounds" in _one_error_line(run("train", str(p)))
    assert "no such config file" in _one_error_line(run("train", str(tmp_path / "nope.yaml")))
    assert "not a run directory" in _one_error_line(run("evaluate", str(tmp_path)))
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating\n1,2,x\n")
    assert "not a finite number" in _one_error_line(run("data", "info", str(bad), "--format", "csv"))
    assert "cuda" in _one_error_line(run("train", str(_config(tmp_path, synth)), "--device", "tpu"))
    assert "unknown method 'fedbogus'" in _one_error_line(run("bench", "strategies", "--methods", "fedbogus",
                                                              "--data-dir", str(tmp_path)))
    assert "--seeds" in _one_error_line(run("bench", "strategies", "--seeds", "0,x", "--data-dir", str(tmp_path)))


@pytest.mark.e2e
def test_the_installed_entry_point_prints_one_line_and_exits_2(tmp_path):
    """The other CLI checks run in process; this one runs the installed ``fedrec`` script, whose main()
    sets up logging and the allocator before the same typer app."""
    p = tmp_path / "typo.yaml"
    p.write_text("federation: {rounds: 3, fractoin: 0.2}\n")
    r = subprocess.run([*FEDREC, "train", str(p)], capture_output=True, text=True)
    assert "federation.fractoin: unknown key" in _one_error_line(r)


@pytest.mark.e2e
def test_train_resume_is_exact(tmp_path, synth):
    cfg = _config(tmp_path, synth)
    full, part = tmp_path / "full", tmp_path / "part"
    r = run("train", str(cfg), "--run-dir", str(full), "--quiet")
    assert r.returncode == 0, r.stderr
    # An interrupted run: stop after 3 of 6 rounds (as if killed), then --resume.
    from federation.runs.jobs import train
    train(cfg, part, stop_after=3, progress=False)
    assert not (part / "summary.json").exists()
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines) + '\n{"round": 4, "cut')   # a torn last line
    r = run("train", str(cfg), "--run-dir", str(part), "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = load_file(str(full / "checkpoint.safetensors")), load_file(str(part / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    rounds = [json.loads(ln)["round"] for ln in (part / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4, 5, 6]
    # An existing run is never overwritten silently.
    assert "run directory exists" in _one_error_line(run("train", str(cfg), "--run-dir", str(full)))
    # evaluate and recommend on the finished run
    r = run("evaluate", str(full), "--split", "test")
    assert r.returncode == 0 and "rmse" in r.stdout
    r = run("recommend", str(full), "--user", "3", "-k", "5")
    assert r.returncode == 0 and r.stdout.count("(item ") == 5
    assert "unknown user id" in _one_error_line(run("recommend", str(full), "--user", "nobody"))
    # A corrupt checkpoint is refused with a clear message.
    ck = full / "checkpoint.safetensors"
    ck.write_bytes(ck.read_bytes()[:100])
    assert "checksum" in _one_error_line(run("evaluate", str(full)))


@pytest.mark.e2e
def test_implicit_evaluate_prints_ndcg(tmp_path, synth):
    """The evaluation table of an implicit run shows NDCG@k (a prefix filter on "n" for the count keys
    once hid it) and no counts; the dashboard's run list carries it too."""
    from dashboard.views import list_runs

    cfg = _config(tmp_path, synth, model={"mode": "implicit", "hidden": [16, 8], "input_norm": "l2"},
                  federation={"rounds": 2}, eval={"every": 0, "k": [5]})
    r = run("train", str(cfg), "--run-dir", str(tmp_path / "runs" / "imp"), "--quiet")
    assert r.returncode == 0, r.stderr
    r = run("evaluate", str(tmp_path / "runs" / "imp"), "--split", "test")
    rows = {ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("│")}
    assert r.returncode == 0 and {"ndcg@5", "recall@5", "mrr@5", "hit@5"} <= rows, r.stdout
    assert not {"n_users", "n"} & rows
    info = next(i for i in list_runs(tmp_path / "runs") if i.name == "imp")
    assert "test_ndcg@5" in info.final and "test_n_users" not in info.final


def test_data_synth_skips_a_current_catalogue(tmp_path):
    out = tmp_path / "s"
    args = ("data", "synth", "--out", str(out), "--users", "30", "--items", "12", "--no-images")
    r1 = run(*args)
    assert r1.returncode == 0, r1.stderr
    stamp = (out / "s.inter").stat().st_mtime_ns
    r2 = run(*args)
    assert r2.returncode == 0 and "already holds" in r2.stdout
    assert (out / "s.inter").stat().st_mtime_ns == stamp                        # nothing rewritten
    r3 = run(*args, "--force")
    assert r3.returncode == 0 and (out / "s.inter").stat().st_mtime_ns != stamp


# A round's pattern: several multi-MiB cohort copies live at once, then all freed (sizes as on ml-100k).
_ALLOC_LOOP = """
import resource
import numpy as np
from recsys.cliutil import keep_freed_memory
print(keep_freed_memory())
def one_round():
    live = [np.ones(mib << 18, dtype=np.float32) for mib in (8, 30, 16, 24)]
    del live
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc allocator setting")
def test_freed_tensor_memory_is_reused_without_page_faults():
    """With the CLI's allocator setting, re-allocating a round's freed blocks costs no page faults;
    with glibc's defaults (the opt-out) the heap top is trimmed at each free and the loop faults
    ~16,000 pages in over 10 rounds (dev VM, glibc 2.36)."""
    out = subprocess.run([sys.executable, "-c", _ALLOC_LOOP], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    assert applied == "True" and int(faults) < 500
    env = {**os.environ, "FEDREC_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run([sys.executable, "-c", _ALLOC_LOOP], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    assert applied == "False" and int(faults) > 5_000
