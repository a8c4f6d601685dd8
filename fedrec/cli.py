"""The ``fedrec`` command line. Bad input ends with one line on stderr and exit code 2."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from federation.deploy.cli import flower_app
from federation.ranking.cli import rank_app
from retrieval.cli import index_app
from recsys.cliutil import _fail, cli_errors, keep_freed_memory

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fedrec: federated, multimodal recommendation.")
data_app = typer.Typer(no_args_is_help=True, help="Fetch, generate and inspect datasets.")
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(flower_app, name="flower")
app.add_typer(rank_app, name="rank")
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
               workers: int = typer.Option(2, min=1),
               force: bool = typer.Option(False, help="regenerate even if OUT already holds this catalogue")):
    """Generate a seeded synthetic multimodal catalogue with ground truth (skipped when OUT already
    holds the same catalogue from this generator version)."""
    from recsys.synth import SynthSpec, catalogue_is_current, write_catalogue

    spec = SynthSpec(n_users=users, n_items=items, n_groups=groups, seed=seed, mean_activity=mean_activity)
    if not force and catalogue_is_current(out, spec, images):
        typer.echo(f"{out} already holds this catalogue (use --force to regenerate)")
        return
    p = write_catalogue(spec, out, images=images, workers=workers)
    typer.echo(json.dumps(json.loads((p / "MANIFEST.json").read_text()), indent=1))


@data_app.command("info")
@cli_errors
def data_info(path: Path, fmt: str = typer.Option("auto", "--format"),
              duplicates: str = typer.Option("latest", help="re-rated (user, item) rows: keep the latest, or refuse")):
    """Load a dataset and print its size."""
    from recsys.loaders import load_dataset

    typer.echo(json.dumps(load_dataset(path, fmt, duplicates=duplicates).summary(), indent=1))


@app.command()
@cli_errors
def train(config: Path, device: Optional[str] = typer.Option(None, help="cpu or cuda (overrides the config)"),
          resume: bool = typer.Option(False, help="continue from the last checkpoint"),
          run_dir: Optional[Path] = typer.Option(None, help="default: runs/<name>"),
          overwrite: bool = typer.Option(False, help="replace an existing run directory"),
          quiet: bool = typer.Option(False, help="no progress bar")):
    """Run a federated training job from a YAML config."""
    from federation.runs.jobs import train as run_train

    if device not in (None, "cpu", "cuda"):
        _fail(f"--device: expected cpu or cuda, got {device!r}")
    out = run_train(config, run_dir, device, resume, overwrite, progress=not quiet)
    summary = json.loads((out / "summary.json").read_text())
    typer.echo(f"run: {out}")
    _print_metrics(summary)


def _print_metrics(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from recsys.evaluation import metric_values

    parts = [p for p in ("valid", "test") if p in summary]
    keys = list(metric_values(summary[parts[0]])) if parts else []
    t = Table(title="evaluation")
    t.add_column("metric")
    for p in parts:
        t.add_column(p, justify="right")
    for k in keys:
        t.add_row(k, *[f"{summary[p][k]:.4f}" for p in parts])
    Console().print(t)


@app.command()
@cli_errors
def strategies():
    """List the federated strategies, what each sends and its options (federation.strategy / .options)."""
    from rich.console import Console
    from rich.table import Table

    from federation.strategies.registry import STRATEGIES
    from recsys.models.autoencoder import ALL_KEYS, AEShape

    table = Table("strategy", "what it does", "sends", "options (default)", "paper")
    for name, cls in STRATEGIES.items():
        s = cls()
        shape = AEShape(4, h1=2, h2=2, **s.model_fields())
        keys = s.message_keys(shape)
        extra = " (incl. " + ", ".join(shape.extra_dense_keys()) + ")" if shape.extra_dense_keys() else ""
        sends = ("nothing" if not keys else "own items' rows + dense" + extra if s.sends_messages and s.sends_rows
                 else "whole model" if set(keys) == set(ALL_KEYS) else " + ".join(keys))
        opts = ", ".join(f"{k}={v}" for k, v in s.options.model_dump().items()) or "-"
        table.add_row(name, cls.summary, sends, opts, cls.paper)
    Console().print(table)


@app.command()
@cli_errors
def evaluate(run_dir: Path, split: str = typer.Option("test", help="valid or test"),
             device: str = typer.Option("cpu")):
    """Evaluate a trained run (a federation or a federated EASE run) on a split."""
    from federation.ranking.jobs import evaluate_any

    if split not in ("valid", "test"):
        _fail(f"--split: expected valid or test, got {split!r}")
    _print_metrics({split: evaluate_any(run_dir, split, device)})


@app.command()
@cli_errors
def recommend(run_dir: Path, user: Optional[str] = typer.Option(None, help="external user id"),
              history: Optional[str] = typer.Option(None, help="a user the run has never seen: the item ids they "
                                                   "like, comma separated (instead of --user)"),
              fold_steps: int = typer.Option(0, min=0, help="with --history: local steps of a fresh personal "
                                             "encoder on those items (0: its first code; a persona run "
                                             "starts it at its user embedder's vector, 0: the embedder alone)"),
              k: int = typer.Option(10, "-k", "--k", min=1), device: str = typer.Option("cpu"),
              rerank: Optional[Path] = typer.Option(None, help="a re-ranker run (fedrec rank train) over this run"),
              target: list[str] = typer.Option([], help="with --rerank: a list target NAME=VALUE in [0, 1] "
                                               "(tail, novelty, diversity, match); repeatable"),
              query: Optional[str] = typer.Option(None, help="with --target match=...: the text to match")):
    """Top-K recommendations (titles) for one user, excluding items they already have; with --rerank,
    through the re-ranker and, with --target, aligned to list targets (MAP palette). With --history, for
    a user the run has never seen, from a few items (federation/runs/onboard.py: a persona run's user
    embedder, or a fresh personal encoder, optionally folded in; scored by the shared decoder)."""
    if (user is None) == (history is None):
        _fail("give exactly one of --user ID or --history \"ITEM,ITEM,...\"")
    if history is not None:
        if rerank is not None or target or query:
            _fail("--rerank, --target and --query work with --user, not --history")
        from federation.runs.jobs import load_run
        from federation.runs.onboard import FoldIn, recommend_new_user

        run = load_run(run_dir, device)
        recs = recommend_new_user(run, history, k, FoldIn(fold_steps))
        how = "the run's user embedder" if run.fed.shape.embedder_heads else ""
        how = ", ".join(h for h in (how, f"{fold_steps} fold-in steps" if fold_steps else "") if h)
        typer.echo(f"top {len(recs)} for a new user with {len([h for h in history.split(',') if h.strip()])} "
                   f"item(s){f' ({how})' if how else ''}:")
        for r in recs:
            typer.echo(f"{r['rank']:>3}. {r['title']}  (item {r['item_id']}, score {r['score']:.3f})")
        return
    if fold_steps:
        _fail("--fold-steps works with --history")
    if rerank is None:
        if target or query:
            _fail("--target and --query need --rerank RANKER")
        from federation.runs.jobs import recommend_for

        recs = recommend_for(run_dir, user, k, device)
        typer.echo(f"top {len(recs)} for user {user}:")
        for r in recs:
            typer.echo(f"{r['rank']:>3}. {r['title']}  (item {r['item_id']}, score {r['score']:.3f})")
        return
    from federation.ranking.reranker import load_ranker, query_vector, recommend_aligned
    from recsys.ranking.palette import parse_targets

    targets = parse_targets(target)
    if query and "match" not in targets:
        _fail("--query is only used with --target match=VALUE")
    rk = load_ranker(rerank, run_dir)
    rep = recommend_aligned(rk, rk.src.data.user_index(user), k, targets,
                            query_vector(rk, query) if query else None)
    data = rk.src.data
    typer.echo(f"top {len(rep.items)} for user {user} (re-ranked by {rerank}):")
    for i, (it, sc) in enumerate(zip(rep.items, rep.scores)):
        typer.echo(f"{i + 1:>3}. {data.title(int(it))}  (item {data.item_ids[it]}, ranker score {sc:.3f})")
    if targets:
        if not rep.feasible:
            typer.echo("targets: not reachable together from this user's candidates; showing the closest list")
        for t in targets:
            typer.echo(f"  {t}: asked {rep.asked[t]:.2f}, list {rep.achieved[t]:.2f}, "
                       f"distribution {rep.expected[t]:.2f} (lambda {rep.lam[t]:.2f})")


features_app = typer.Typer(no_args_is_help=True, help="Item content features (open_clip image + text).")
clip_app = typer.Typer(no_args_is_help=True, help="Train or fine-tune a CLIP model on a catalogue.")
app.add_typer(features_app, name="features")
app.add_typer(clip_app, name="clip")


@features_app.command("build")
@cli_errors
def features_build(data: Path = typer.Argument(..., help="dataset directory, e.g. data/synth-mm"),
                   model: str = typer.Option("fedrec-clip-tiny", help="open_clip name, a `fedrec clip train` dir, "
                                                                      "or with --backend sentence a model dir"),
                   pretrained: Optional[str] = typer.Option(None, help="open_clip tag or local checkpoint file"),
                   backend: str = typer.Option("open_clip", help="open_clip or sentence (text-only)"),
                   fusion: str = typer.Option("mean", help="mean (image+text), text or image"),
                   device: str = typer.Option("cpu"), batch_size: int = typer.Option(64, min=1),
                   rebuild: bool = typer.Option(False, help="rebuild even if a matching cache exists")):
    """Extract (or reuse a matching cache of) one content vector per item under DATA/features/."""
    from federation.runs.jobs import resolve_device
    from recsys.features import ClipSpec, build_features
    from recsys.loaders import load_dataset

    ds = load_dataset(data)
    feats, man = build_features(ds, data, ClipSpec(backend, model, pretrained, fusion, batch_size),
                                resolve_device(device), rebuild=rebuild)
    typer.echo(f"{feats.shape[0]} items x {feats.shape[1]} dims ({man['extractor']}, fusion {man['fusion']}); "
               f"images used {man['images_used']}, missing {man['images_missing']}; "
               f"{man['items_per_s']:.0f} items/s when built")


@clip_app.command("train")
@cli_errors
def clip_train(data: Path = typer.Argument(..., help="dataset directory with item images and texts"),
               out: Path = typer.Option(..., help="model directory to write (open_clip local-dir layout)"),
               model: str = typer.Option("fedrec-clip-tiny", help="open_clip config name or a model dir"),
               pretrained: Optional[str] = typer.Option(None, help="start from these weights (tag or file)"),
               epochs: int = typer.Option(10, min=1), batch_size: int = typer.Option(128, min=2),
               lr: float = typer.Option(1e-3, min=0), seed: int = typer.Option(0),
               max_items: Optional[int] = typer.Option(None, min=20), device: str = typer.Option("cpu"),
               if_stale: bool = typer.Option(False, help="skip when OUT already holds a model trained with these "
                                                         "settings on this exact catalogue (texts + images)")):
    """Contrastive (ClipLoss) training on the catalogue's image–text pairs; reports held-out recall."""
    from federation.runs.jobs import resolve_device
    from recsys.clip_train import ClipTrainSpec, model_is_current, train_clip
    from recsys.loaders import load_dataset

    ds = load_dataset(data)
    spec = ClipTrainSpec(model, pretrained, epochs, batch_size, lr, seed=seed, max_items=max_items)
    if if_stale and model_is_current(ds, data, out, spec):
        typer.echo(f"{out} is up to date (trained with these settings on this catalogue)")
        return
    rep = train_clip(ds, data, out, spec, resolve_device(device))
    r, c = rep["text_to_image"], rep["chance"]
    typer.echo(f"wrote {out}: text->image on {rep['items_held_out']} held-out items recall@1 {r['recall@1']:.3f} "
               f"(chance {c['recall@1']:.3f}), recall@10 {r['recall@10']:.3f} (chance {c['recall@10']:.3f}); "
               f"{rep['seconds_per_epoch']:.1f} s/epoch")


@app.command()
@cli_errors
def search(run_dir: Path, user: str = typer.Option(..., help="external user id"),
           query: str = typer.Option(..., help="text query"), k: int = typer.Option(10, "-k", "--k", min=1),
           candidates: int = typer.Option(100, min=1, help="content matches re-ranked for the user"),
           relevance: float = typer.Option(0.5, min=0, max=1, help="weight of query similarity vs the user's taste"),
           device: str = typer.Option("cpu")):
    """Personalized search: items matching QUERY in CLIP space, ordered by this user's own model."""
    from federation.runs.serve import search_for

    hits = search_for(run_dir, user, query, k, candidates, relevance, device)
    typer.echo(f"{query!r} for user {user}:")
    for h in hits:
        typer.echo(f"{h['rank']:>3}. {h['title']}  (item {h['item_id']}, match {h['similarity']:.2f}, score {h['score']:.2f})")


@app.command()
@cli_errors
def explain(run_dir: Path, user: str = typer.Option(..., help="external user id"),
            item: str = typer.Option(..., help="external item id"), device: str = typer.Option("cpu")):
    """Why ITEM would be recommended to USER: supporting history items and shared content."""
    from federation.runs.serve import explain_for

    e = explain_for(run_dir, user, item, device)
    typer.echo(e["sentence"])
    extra = f", predicted rating {e['predicted_rating']:.2f}" if "predicted_rating" in e else ""
    typer.echo(f"(rank {e['rank']} of the user's scores{extra})")


@app.command()
@cli_errors
def prefer(run_dir: Path, user: str = typer.Option(..., help="external user id"),
           a: str = typer.Option(..., help="first item id"), b: str = typer.Option(..., help="second item id"),
           device: str = typer.Option("cpu")):
    """Which of two items USER would prefer, with the model's probability."""
    from federation.runs.serve import prefer_for

    r = prefer_for(run_dir, user, a, b, device)
    pr = f"; predicted ratings {r['predicted_ratings'][0]:.2f} vs {r['predicted_ratings'][1]:.2f}" if "predicted_ratings" in r else ""
    typer.echo(f"prefers {r['title']} (item {r['preferred']}); P({a} over {b}) = {r['p_first_over_second']:.3f}{pr}")


@app.command()
@cli_errors
def bench(what: str = typer.Argument("all", help="all, or a comma list of: speed, accuracy, memory, retrieval, dashboard, browser (needs make demo), deployment, privacy, dp, content, strategies, ranking, onboarding"),
          out: Optional[Path] = typer.Option(None, help="write the markdown report here"),
          data_dir: Path = typer.Option(Path("data")), quick: bool = typer.Option(False, help="fewer rounds"),
          methods: Optional[str] = typer.Option(None, help="strategies: a comma list of methods to run (default: all); "
                                                "the table shows every method in the results cache"),
          seeds: str = typer.Option("0,1,2", help="strategies, onboarding: model seeds"),
          modes: str = typer.Option("implicit,explicit", help="strategies: feedback modes to run"),
          splits: str = typer.Option("ratio,leave_last_out", help="strategies: splits to run"),
          cache: Optional[Path] = typer.Option(None, help="strategies: the results cache (default "
                                               "DATA_DIR/bench/strategies.jsonl); finished runs are not rerun"),
          table_only: bool = typer.Option(False, help="strategies: only render the table from the cache"),
          speed_only: bool = typer.Option(False, help="strategies: only measure each method's client updates/s "
                                          "alone (recorded in the cache) and render")):
    """Run benchmarks and print tables; --out updates those sections of a markdown file. `strategies` keeps
    its finished runs in a results cache and resumes from it."""
    from fedrec.bench.suite import run_bench

    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise ValueError(f"--seeds {seeds!r}: give a comma list of integers") from None
    mode_list = tuple(m.strip() for m in modes.split(","))
    if not set(mode_list) <= {"implicit", "explicit"}:
        raise ValueError(f"--modes {modes!r}: implicit and/or explicit")
    split_list = tuple(x.strip() for x in splits.split(","))
    if not set(split_list) <= {"ratio", "leave_last_out"}:
        raise ValueError(f"--splits {splits!r}: ratio and/or leave_last_out")
    run_bench(what, out, data_dir, quick, methods=methods.split(",") if methods else None, seeds=seed_list,
              cache=cache, table_only=table_only, speed_only=speed_only, modes=mode_list, splits=split_list)


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
           "--client.toolbarMode", "minimal",          # no "Deploy" button: this is a local tool's dashboard
           "--", "--runs", str(runs), "--indices", str(indices)]
    typer.echo(f"fedrec dashboard: http://{host}:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    # Become the server process (no wrapper left behind): a SIGTERM to this pid stops Streamlit itself.
    os.execv(sys.executable, cmd)


NOISY_LOGGERS = ("faiss.loader", "sentence_transformers", "transformers", "httpx")   # load-time chatter


def quiet_open_clip(record: logging.LogRecord) -> bool:
    """A handler filter: open_clip logs its model-loading steps through the root logger at INFO; keep
    its warnings only."""
    return not (record.levelno < logging.WARNING and "open_clip" in record.pathname)


def main() -> None:
    keep_freed_memory()             # before any large tensor exists: see its docstring
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for h in logging.getLogger().handlers:
        h.addFilter(quiet_open_clip)
    app()


if __name__ == "__main__":
    main()
