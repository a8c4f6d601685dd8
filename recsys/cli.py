"""The ``fedrec`` command line. Bad input ends with one line on stderr and exit code 2."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from federation.cli import flower_app
from retrieval.cli import index_app
from recsys.cliutil import _fail, cli_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fedrec: federated, multimodal recommendation.")
data_app = typer.Typer(no_args_is_help=True, help="Fetch, generate and inspect datasets.")
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(flower_app, name="flower")
log = logging.getLogger("fedrec")


@data_app.command("fetch")
@cli_errors
def data_fetch(name: str = typer.Argument(..., help="dataset: ml-100k"),
               data_dir: Path = typer.Option(Path("data"), help="where datasets live"),
               wheel: Optional[Path] = typer.Option(None, help="use this local recbole wheel instead of downloading"),
               force: bool = typer.Option(False, help="fetch again even if present")):
    """Fetch a public dataset into DATA_DIR/NAME (verified, atomic, safe to re-run)."""
    from recsys.fetch import DATASETS, fetch_ml100k

    if name not in DATASETS:
        _fail(f"unknown dataset {name!r} (available: {', '.join(DATASETS)})")
    out = fetch_ml100k(data_dir, wheel, force)
    typer.echo(f"{name}: ready at {out}")


@data_app.command("synth")
@cli_errors
def data_synth(out: Path = typer.Option(..., help="output directory, e.g. data/synth-small"),
               users: int = typer.Option(2000, min=1), items: int = typer.Option(500, min=2),
               groups: int = typer.Option(8, min=1), seed: int = typer.Option(0),
               mean_activity: float = typer.Option(30.0, min=1), images: bool = typer.Option(True),
               workers: int = typer.Option(2, min=1)):
    """Generate a seeded synthetic multimodal catalogue with ground truth."""
    from recsys.synth import SynthSpec, write_catalogue

    spec = SynthSpec(n_users=users, n_items=items, n_groups=groups, seed=seed, mean_activity=mean_activity)
    p = write_catalogue(spec, out, images=images, workers=workers)
    typer.echo(json.dumps(json.loads((p / "MANIFEST.json").read_text()), indent=1))


@data_app.command("info")
@cli_errors
def data_info(path: Path, fmt: str = typer.Option("auto", "--format")):
    """Load a dataset and print its size."""
    from recsys.loaders import load_dataset

    typer.echo(json.dumps(load_dataset(path, fmt).summary(), indent=1))


@app.command()
@cli_errors
def train(config: Path, device: Optional[str] = typer.Option(None, help="cpu or cuda (overrides the config)"),
          resume: bool = typer.Option(False, help="continue from the last checkpoint"),
          run_dir: Optional[Path] = typer.Option(None, help="default: runs/<name>"),
          overwrite: bool = typer.Option(False, help="replace an existing run directory"),
          quiet: bool = typer.Option(False, help="no progress bar")):
    """Run a federated training job from a YAML config."""
    from federation.jobs import train as run_train

    if device not in (None, "cpu", "cuda"):
        _fail(f"--device: expected cpu or cuda, got {device!r}")
    out = run_train(config, run_dir, device, resume, overwrite, progress=not quiet)
    summary = json.loads((out / "summary.json").read_text())
    typer.echo(f"run: {out}")
    _print_metrics(summary)


def _print_metrics(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    parts = [p for p in ("valid", "test") if p in summary]
    keys = [k for k in summary[parts[0]] if not k.startswith("n")] if parts else []
    t = Table(title="evaluation")
    t.add_column("metric")
    for p in parts:
        t.add_column(p, justify="right")
    for k in keys:
        t.add_row(k, *[f"{summary[p][k]:.4f}" for p in parts])
    Console().print(t)


@app.command()
@cli_errors
def evaluate(run_dir: Path, split: str = typer.Option("test", help="valid or test"),
             device: str = typer.Option("cpu")):
    """Evaluate a trained run on a split."""
    from federation.jobs import evaluate_run

    if split not in ("valid", "test"):
        _fail(f"--split: expected valid or test, got {split!r}")
    _print_metrics({split: evaluate_run(run_dir, split, device)})


@app.command()
@cli_errors
def recommend(run_dir: Path, user: str = typer.Option(..., help="external user id"),
              k: int = typer.Option(10, "-k", "--k", min=1), device: str = typer.Option("cpu")):
    """Top-K recommendations (titles) for one user, excluding items they already rated."""
    from federation.jobs import recommend_for

    recs = recommend_for(run_dir, user, k, device)
    typer.echo(f"top {len(recs)} for user {user}:")
    for r in recs:
        typer.echo(f"{r['rank']:>3}. {r['title']}  (item {r['item_id']}, score {r['score']:.3f})")


@app.command()
@cli_errors
def bench(what: str = typer.Argument("all", help="all, or a comma list of: speed, accuracy, memory, retrieval, dashboard, deployment, privacy"),
          out: Optional[Path] = typer.Option(None, help="write the markdown report here"),
          data_dir: Path = typer.Option(Path("data")), quick: bool = typer.Option(False, help="fewer rounds")):
    """Run benchmarks and print tables; --out updates those sections of a markdown file."""
    from federation.bench import run_bench

    run_bench(what, out, data_dir, quick)


@app.command()
@cli_errors
def dashboard(runs: Path = typer.Option(Path("runs"), help="directory of run directories"),
              indices: Path = typer.Option(Path("indices"), help="directory of index directories"),
              port: int = typer.Option(8501, min=1, max=65535), host: str = typer.Option("127.0.0.1")):
    """Serve the Streamlit dashboard (127.0.0.1 only unless --host says otherwise)."""
    import os
    import socket

    import dashboard as pkg

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            _fail(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); pick another port")
    app_path = Path(pkg.__file__).parent / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", host,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", "--runs", str(runs), "--indices", str(indices)]
    typer.echo(f"fedrec dashboard: http://{host}:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    # Become the server process (no wrapper left behind): a SIGTERM to this pid stops Streamlit itself.
    os.execv(sys.executable, cmd)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("faiss.loader", "sentence_transformers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)               # load-time chatter
    app()


if __name__ == "__main__":
    main()
