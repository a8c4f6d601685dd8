"""Training jobs launched from the dashboard: `fedrec train` as a background process.

The dashboard never trains in its own process. A launched job is a separate ``fedrec train``
process in its own process group with its own log; its record (pid, run dir, log) is a small JSON
file in a jobs directory outside every run directory. Progress is read from the run's
metrics.jsonl; cancel sends SIGTERM to the process group (the run can be continued later with
``fedrec train CONFIG --resume``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from recsys.errors import FedrecError
from recsys.io import write_json


@dataclass
class Job:
    name: str
    pid: int
    config: str
    run_dir: str
    log: str
    started: float
    status: str = "unknown"       # running | finished | failed | cancelled
    rounds_done: int = 0
    rounds_total: int | None = None

    @property
    def progress(self) -> float:
        return self.rounds_done / self.rounds_total if self.rounds_total else 0.0


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)        # reap our own finished child, if it is one
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:                                             # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def launch(config: str | Path, runs_dir: Path, jobs_dir: Path, name: str | None = None) -> Job:
    """Start ``fedrec train CONFIG --run-dir RUNS/NAME --quiet`` in the background."""
    from federation.runs.config import load_config

    cfg = load_config(config)                        # validate before starting anything
    name = name or cfg.name
    run_dir = runs_dir / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FedrecError(f"{run_dir}: run directory exists; pick another name")
    jobs_dir.mkdir(parents=True, exist_ok=True)
    log = jobs_dir / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fedrec.cli", "train", str(config), "--run-dir", str(run_dir),
                                 "--quiet"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    job = Job(name, proc.pid, str(config), str(run_dir), str(log), time.time(), "running", 0,
              cfg.federation.rounds)
    write_json(jobs_dir / f"{name}.json", {k: v for k, v in job.__dict__.items() if k not in ("status", "rounds_done")})
    return job


def _refresh(job: Job, jobs_dir: Path) -> Job:
    metrics = Path(job.run_dir) / "metrics.jsonl"
    if metrics.exists():
        job.rounds_done = sum(1 for ln in metrics.read_text(errors="replace").splitlines() if ln.endswith("}"))
    if _alive(job.pid):
        job.status = "running"
    elif (jobs_dir / f"{job.name}.cancelled").exists():
        job.status = "cancelled"
    elif (Path(job.run_dir) / "summary.json").exists():
        job.status = "finished"
    else:
        job.status = "failed"
    return job


def list_jobs(jobs_dir: Path) -> list[Job]:
    out = []
    if not jobs_dir.is_dir():
        return out
    for f in sorted(jobs_dir.glob("*.json")):
        try:
            rec = json.loads(f.read_text())
            out.append(_refresh(Job(**rec), jobs_dir))
        except (OSError, ValueError, TypeError):
            continue
    return out


def cancel(job: Job, jobs_dir: Path, grace: float = 10.0) -> None:
    """SIGTERM the job's process group, SIGKILL after ``grace`` seconds."""
    (jobs_dir / f"{job.name}.cancelled").touch()
    try:
        os.killpg(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline and _alive(job.pid):
        time.sleep(0.1)
    if _alive(job.pid):
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tail(path: str | Path, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
