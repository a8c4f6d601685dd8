"""``fedrec flower ...``: run fedrec on Flower (see docs/flower.md)."""
from __future__ import annotations

import json
import os
import socket
import subprocess

import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from recsys.cliutil import _fail, cli_errors

flower_app = typer.Typer(no_args_is_help=True, help="Run federated training on Flower (SuperLink + SuperNodes).")


def _partition(spec: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in spec.split("/"))
        if not 0 <= i < n:
            raise ValueError
        return i, n
    except ValueError:
        _fail(f"--partition: expected I/N with 0 <= I < N (e.g. 0/3), got {spec!r}")


def wait_for(address: str, tries: int = 4, first_wait: float = 1.0) -> None:
    """Retry policy for a SuperLink address: ``tries`` TCP connects, waits doubling from first_wait."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"--superlink: expected HOST:PORT, got {address!r}")
    wait = first_wait
    for k in range(tries):
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
                return
        except OSError as e:
            err = e.strerror or type(e).__name__
            if k == tries - 1:
                _fail(f"SuperLink at {address} does not answer ({err}; tried {tries} times over "
                      f"{first_wait * (2 ** (tries - 1) - 1):.0f} s); is it started and reachable?")
            time.sleep(wait)
            wait *= 2


@flower_app.command("superlink")
@cli_errors
def superlink(port: int = typer.Option(9092, min=1, max=65535), host: str = typer.Option("127.0.0.1"),
              certs: Optional[Path] = typer.Option(None, help="dir with ca.crt, server.crt, server.key (TLS); "
                                                  "omit for an insecure trial"),
              auth: bool = typer.Option(False, help="accept only registered SuperNodes"),
              database: Optional[str] = typer.Option(None, help="SQLite file: runs survive a SuperLink restart")):
    """Start a SuperLink (becomes the flower-superlink process)."""
    from federation.deploy.process import TLSFiles, superlink_command

    tls = None
    if certs:
        tls = TLSFiles(certs / "ca.crt", certs / "server.crt", certs / "server.key")
        for f in (tls.ca_cert, tls.server_cert, tls.server_key):
            if not f.exists():
                _fail(f"--certs: {f} is missing (make test ones with `fedrec flower certs --out {certs}`)")
    cmd = superlink_command(port, host, tls, auth, database)
    typer.echo(f"SuperLink on {host}:{port} ({'TLS' if tls else 'INSECURE, no TLS'})", err=True)
    os.execv(cmd[0], cmd)


@flower_app.command("supernode")
@cli_errors
def supernode(superlink: str = typer.Option(..., help="SuperLink HOST:PORT"),
              partition: str = typer.Option("0/1", help="I/N: this node hosts user block I of N"),
              data_path: Optional[Path] = typer.Option(None, help="this node's dataset dir (default: the config's)"),
              state_dir: Optional[Path] = typer.Option(None, help="where this node keeps its users' encoders"),
              port: int = typer.Option(9094, min=1, max=65535, help="local runtime API port (one per node)"),
              root_cert: Optional[Path] = typer.Option(None, help="CA certificate of the SuperLink (TLS)"),
              auth_key: Optional[Path] = typer.Option(None, help="this node's registered private key")):
    """Start a SuperNode bound to a partition (becomes the flower-supernode process; it keeps
    retrying the SuperLink until it answers)."""
    from federation.deploy.process import supernode_command

    i, n = _partition(partition)
    for f, name in ((root_cert, "--root-cert"), (auth_key, "--auth-key"), (data_path, "--data-path")):
        if f is not None and not Path(f).exists():
            _fail(f"{name}: {f} does not exist")
    cmd = supernode_command(superlink, i, n, port, state_dir and state_dir.resolve(),
                            data_path and data_path.resolve(), root_cert, auth_key)
    os.execv(cmd[0], cmd)


def _run_config(config: Path, run_dir: Optional[Path], rounds: int, min_nodes: int, timeout: float) -> dict:
    """Flower run config of a federation job or (kind: ranker) a re-ranker job."""
    from federation.ranking.config import parse_ranker_config
    from federation.runs.config import load_config, read_yaml

    d = read_yaml(config)                           # validate here: one clear line instead of a remote traceback
    cfg = parse_ranker_config(d, str(config)) if (d.get("kind") == "ranker" or "sources" in d) else load_config(config)
    return {"job-config": str(config.resolve()), "run-dir": str((run_dir or Path("runs") / f"{cfg.name}-flower").resolve()),
            "rounds": rounds, "min-nodes": min_nodes, "round-timeout": timeout}


@flower_app.command("run")
@cli_errors
def run(config: Path, superlink: str = typer.Option(..., help="SuperLink HOST:PORT"),
        root_cert: Optional[Path] = typer.Option(None, help="CA certificate of the SuperLink; omit = insecure"),
        run_dir: Optional[Path] = typer.Option(None, help="default runs/<name>-flower (on the SuperLink's machine)"),
        rounds: int = typer.Option(0, min=0, help="0 = the config's"),
        min_nodes: int = typer.Option(1, min=1), round_timeout: float = typer.Option(120.0, min=1)):
    """Submit a job to a running SuperLink with ``flwr run`` and stream its log."""
    from federation.deploy.process import APP_DIR, _bin, run_config_arg, write_connection

    rc = _run_config(config, run_dir, rounds, min_nodes, round_timeout)
    wait_for(superlink)
    home = Path(os.environ.get("FEDREC_FLWR_HOME", ".fedrec-flwr")).resolve()
    write_connection(home, "fedrec", superlink, root_cert.resolve() if root_cert else None)
    cmd = [_bin("flwr"), "run", str(APP_DIR), "fedrec", "--stream", "-c", run_config_arg(rc)]
    env = {**os.environ, "FLWR_HOME": str(home)}
    raise typer.Exit(subprocess.call(cmd, env=env))


@flower_app.command("local")
@cli_errors
def local(config: Path, nodes: int = typer.Option(3, min=1, help="SuperNodes to start"),
          rounds: int = typer.Option(0, min=0, help="0 = the config's"),
          run_dir: Optional[Path] = typer.Option(None, help="default runs/<name>-flower"),
          work: Optional[Path] = typer.Option(None, help="logs, Flower home and node states (default: a temp dir)"),
          round_timeout: float = typer.Option(300.0, min=1)):
    """A whole Flower federation on this machine: SuperLink + NODES SuperNodes (one user block each),
    ``flwr run``, then everything is stopped. Prints the run's summary."""
    from federation.deploy.process import LocalFederation

    rc = _run_config(config, run_dir, rounds, nodes, round_timeout)
    work = (work or Path(tempfile.mkdtemp(prefix="fedrec-flower-"))).resolve()
    typer.echo(f"logs and node state: {work}", err=True)
    with LocalFederation(work, nodes) as fed:
        fed.start_superlink()
        for i in range(nodes):
            fed.start_node(i)
        r = fed.run(rc, timeout=24 * 3600)
    summary_p = Path(rc["run-dir"]) / "summary.json"
    if r.returncode != 0 or not summary_p.exists():
        _fail(f"the Flower run failed (flwr exit code {r.returncode}); see {work / 'logs'}")
    typer.echo(f"run: {rc['run-dir']}")
    typer.echo(json.dumps(json.loads(summary_p.read_text()), indent=1))


@flower_app.command("certs")
@cli_errors
def certs(out: Path = typer.Option(...), host: list[str] = typer.Option(["127.0.0.1", "localhost"])):
    """Make a throw-away CA and SuperLink certificate (trials and tests; use real PKI in production)."""
    from federation.deploy.process import make_certificates

    f = make_certificates(out, tuple(host))
    typer.echo(f"CA: {f.ca_cert}\nserver: {f.server_cert} {f.server_key}")


@flower_app.command("node-key")
@cli_errors
def node_key(out: Path = typer.Option(...), name: str = typer.Option("node")):
    """Make a SuperNode key pair; register the .pub with `flwr supernode register`."""
    from federation.deploy.process import make_node_key

    priv, pub = make_node_key(out, name)
    typer.echo(f"private: {priv}\npublic: {pub}")



