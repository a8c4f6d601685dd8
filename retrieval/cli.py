"""``fedrec index ...``: build, inspect and query FAISS indices (scripts call these)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from recsys.cliutil import _fail, cli_errors

index_app = typer.Typer(no_args_is_help=True, help="Build, inspect and query FAISS indices.")
log = logging.getLogger("fedrec.index")


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").exists() and (path / "manifest.json").exists()


@index_app.command("build")
@cli_errors
def build(kind: str = typer.Argument(..., help="items | content | histories | summaries"),
          source: Path = typer.Argument(..., help="a run directory (content also accepts a dataset path)"),
          out: Path = typer.Option(..., help="index directory to write (replaced atomically)"),
          factory: Optional[str] = typer.Option(None, help="FAISS index_factory string; default Flat (<100k) or IVF"),
          metric: str = typer.Option("ip", help="ip (inner product) or l2"),
          nprobe: Optional[int] = typer.Option(None, min=1), ef_search: Optional[int] = typer.Option(None, min=1),
          embedder: str = typer.Option("minilm", help="text embedder: minilm or minilm:/local/model/dir"),
          generator: str = typer.Option("template", help="summaries: template | chat"),
          chat_url: Optional[str] = typer.Option(None, help="summaries/chat: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"),
          chat_model: Optional[str] = typer.Option(None), prompt: Optional[Path] = typer.Option(None, help="prompt template file"),
          timeout: float = typer.Option(30.0), retries: int = typer.Option(2, min=0),
          concurrency: int = typer.Option(4, min=1),
          device: str = typer.Option("cpu"), quiet: bool = typer.Option(False)):
    """Build an index; prints its manifest (with recall@10 vs exact search)."""
    from retrieval import build as B
    from retrieval.embedders import get_embedder

    if kind not in B.KINDS:
        _fail(f"unknown index kind {kind!r} (expected one of: {', '.join(B.KINDS)})")
    if metric not in ("ip", "l2"):
        _fail(f"--metric: expected ip or l2, got {metric!r}")
    opts = B.BuildOptions(factory=factory, metric=metric, nprobe=nprobe, ef_search=ef_search, progress=not quiet)
    files = {}
    if kind == "content" and not _is_run(source):
        from recsys.loaders import load_dataset
        ix = B.content_index(load_dataset(source), get_embedder(embedder, device), opts)
    else:
        from federation.runs.jobs import load_run
        if not _is_run(source):
            _fail(f"{source}: not a run directory (no config.yaml/manifest.json); train one with `fedrec train`")
        run = load_run(source, device)
        if kind == "items":
            ix = B.item_vectors_index(run, opts)
        elif kind == "content":
            ix = B.content_index(run.data, get_embedder(embedder, device), opts)
        elif kind == "histories":
            ix = B.histories_index(run, get_embedder(embedder, device), opts)
        else:
            gen = None
            if generator == "chat":
                from retrieval.summaries import ChatConfig, ChatGenerator
                if not (chat_url and chat_model and prompt):
                    _fail("--generator chat needs --chat-url, --chat-model and --prompt")
                if not prompt.exists():
                    _fail(f"{prompt}: no such prompt template file")
                gen = ChatGenerator(run.data.items, ChatConfig(chat_url, chat_model, prompt.read_text(), timeout,
                                                               retries, concurrency))
            elif generator != "template":
                _fail(f"--generator: expected template or chat, got {generator!r}")
            ix, store, n_new = B.summaries_index(run, get_embedder(embedder, device), opts, out, gen)
            files[B.SUMMARIES_FILE] = store.save
            typer.echo(f"summaries: {n_new} (re)generated, {len(store.entries) - n_new} unchanged", err=True)
    manifest = ix.save(out, files=files)
    typer.echo(json.dumps({k: v for k, v in manifest.items() if k not in ("versions", "checksums")}, indent=1))


@index_app.command("info")
@cli_errors
def info(path: Path):
    """Print an index's manifest after verifying its files."""
    from retrieval.index import VectorIndex

    ix = VectorIndex.load(path)
    m = json.loads((path / "manifest.json").read_text())
    m["verified"] = True
    m["size_bytes"] = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    m["loaded_count"] = ix.count
    typer.echo(json.dumps(m, indent=1))


@index_app.command("query")
@cli_errors
def query(path: Path, run_dir: Optional[Path] = typer.Option(None, "--run", help="the run the index was built from"),
          user: Optional[str] = typer.Option(None, help="external user id"),
          text: Optional[str] = typer.Option(None, help="query text (content, histories, summaries)"),
          item: Optional[str] = typer.Option(None, help="external item id: similar items (content)"),
          data_path: Optional[Path] = typer.Option(None, "--data", help="dataset of a content index (instead of --run)"),
          k: int = typer.Option(10, "-k", "--k", min=1), nprobe: Optional[int] = typer.Option(None, min=1),
          ef_search: Optional[int] = typer.Option(None, min=1), embedder: str = typer.Option("minilm"),
          device: str = typer.Option("cpu")):
    """Query an index: items (--user), content (--text or --item), histories (--user --text), summaries (--text)."""
    from retrieval import build as B
    from retrieval.index import read_manifest

    kind = read_manifest(path).get("kind")
    run = data = None
    if run_dir is not None:
        from federation.runs.jobs import load_run
        run = load_run(run_dir, device)
        data = run.data
    elif kind in ("items", "histories", "summaries") or data_path is None:
        _fail(f"a {kind} index needs --run RUN_DIR (the run it was built from)"
              + (" or --data DATASET" if kind == "content" else ""))
    else:
        from recsys.loaders import load_dataset
        data = load_dataset(data_path)
        want = read_manifest(path).get("dataset_checksum")
        if want != data.checksum():
            _fail(f"{path}: built from another dataset than {data_path}")
    emb = None
    if kind in ("content", "histories", "summaries") and text is not None:
        from retrieval.embedders import get_embedder
        emb = get_embedder(embedder, device)
    ix = B.load_index(path, kind, run, emb.id if emb else None)
    kw = {"nprobe": nprobe, "ef_search": ef_search}
    if kind == "items":
        if user is None:
            _fail("an items index is queried with --user")
        u = data.user_index(user)
        seen = set(run.train[u].indices.tolist())
        res = ix.search(run.model().user_vectors(np.array([u])), k + len(seen), **kw)
        rows = [(int(i), float(s)) for i, s in zip(res.ids[0], res.scores[0]) if i >= 0 and i not in seen][:k]
    elif kind in ("content", "summaries"):
        if text is not None:
            q = emb.encode([text])
        elif item is not None and kind == "content":
            q = ix.reconstruct(np.array([data.item_index(item)]))
        else:
            _fail(f"a {kind} index is queried with --text" + (" or --item" if kind == "content" else ""))
        res = ix.search(q, k, **kw)
        rows = [(int(i), float(s)) for i, s in zip(res.ids[0], res.scores[0]) if i >= 0]
    else:   # histories
        if user is None or text is None:
            _fail("a histories index is queried with --user and --text")
        u = data.user_index(user)
        res = ix.search(emb.encode([text]), k, id_range=B.user_id_range(u), **kw)
        rows = [(int(B.split_history_id(np.array([i]))[1][0]), float(s))
                for i, s in zip(res.ids[0], res.scores[0]) if i >= 0]
    for r, (i, s) in enumerate(rows, 1):
        if kind == "summaries":
            typer.echo(f"{r:>3}. user {data.user_ids[i]}  ({s:.3f})")
        else:
            typer.echo(f"{r:>3}. {data.title(i)}  (item {data.item_ids[i]}, {s:.3f})")
    if not rows:
        typer.echo("no results")
