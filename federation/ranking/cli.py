"""`fedrec rank`: the ranking stage's jobs (federated EASE, the LightGBM re-ranker)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from recsys.cliutil import cli_errors

rank_app = typer.Typer(no_args_is_help=True, help="The ranking stage: federated EASE candidates, the re-ranker.")


@rank_app.command("ease")
@cli_errors
def ease(config: Path = typer.Argument(..., help="an EASE job config, e.g. configs/ml100k-ease.yaml"),
         run_dir: Optional[Path] = typer.Option(None, help="run directory (default runs/NAME)"),
         overwrite: bool = typer.Option(False, help="replace an existing run directory")):
    """Fit federated EASE (each user sends its Gram contribution; the server solves the closed form)."""
    from federation.ranking.jobs import train_ease

    out = train_ease(config, run_dir, overwrite)
    s = json.loads((out / "summary.json").read_text())
    t = s["metrics"]["test"]
    typer.echo(f"{out}: test ndcg@10 {t['ndcg@10']:.4f} recall@20 {t['recall@20']:.4f}; "
               f"upload {s['upload_bytes'] / 1e6:,.1f} MB (all users), download {s['download_bytes_per_client'] / 1e6:,.2f} MB "
               f"per user ({s['shared_as']})" + (f"; epsilon {s['epsilon']:.2f}" if s["epsilon"] is not None else ""))


@rank_app.command("train")
@cli_errors
def train(config: Path = typer.Argument(..., help="a re-ranker job config, e.g. configs/ml100k-ranker.yaml"),
          run_dir: Optional[Path] = typer.Option(None, help="run directory (default runs/NAME)"),
          overwrite: bool = typer.Option(False, help="replace an existing run directory"),
          quiet: bool = typer.Option(False, help="no progress bar")):
    """Train the LightGBM LambdaRank re-ranker across user blocks (features and labels stay with them)."""
    from federation.ranking.reranker import train_ranker

    out = train_ranker(config, run_dir, overwrite, progress=not quiet)
    s = json.loads((out / "summary.json").read_text())
    typer.echo(f"{out}: best round {s['best_round']}, candidate recall {s['test']['candidate_recall']:.3f}")
    for name, m in s["test"]["rows"].items():
        typer.echo(f"  {name:<28} test ndcg@10 {m['ndcg@10']:.4f}  recall@20 {m.get('recall@20', float('nan')):.4f}")
