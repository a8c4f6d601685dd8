"""Benchmarks of item content (``fedrec bench content``): CLIP training and extraction throughput,
cold-start and warm ranking on the synthetic multimodal catalogue, ml-100k with/without text and GNN.
Every figure is measured when the command runs."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from federation.runs.config import parse_config
from federation.runs.jobs import build_federation, content_vectors, item_content, prepare_data, prototype_settings
from federation.simulation import FederatedAutoencoder
from recsys.evaluation import evaluate_candidates, evaluate_model
from recsys.synth import ATTRIBUTES

ROOT = Path(__file__).resolve().parents[2]
SYNTH = dict(users=3000, items=1000)


def ensure_synth(data_dir: Path) -> Path:
    from recsys.synth import SynthSpec, catalogue_is_current, write_catalogue

    out = data_dir / "synth-mm"
    spec = SynthSpec(n_users=SYNTH["users"], n_items=SYNTH["items"])
    if not catalogue_is_current(out, spec):
        write_catalogue(spec, out, progress=False)
    return out


def ensure_clip(data_dir: Path, model_dir: Path, epochs: int = 40) -> dict:
    """Train the catalogue's CLIP model (always, so the epoch time is measured now)."""
    from recsys.clip_train import ClipTrainSpec, train_clip
    from recsys.loaders import load_dataset

    ds = load_dataset(data_dir / "synth-mm")
    return train_clip(ds, data_dir / "synth-mm", model_dir, ClipTrainSpec(epochs=epochs), progress=False)


def _cfg(path: str, data_path: Path, rounds: int | None = None, **over) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / path).read_text())
    cfg["data"]["path"] = str(data_path.resolve())
    cfg["eval"] = {"every": 0}
    if rounds:
        cfg["federation"]["rounds"] = rounds
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def _train(cfgd: dict, content_fn=None):
    """Train a job; ``content_fn(data) -> (N, F)`` replaces the config's item features (reference rows)."""
    cfg = parse_config(cfgd)
    data, split = prepare_data(cfg)
    t = time.perf_counter()
    content = None
    if content_fn is not None:
        f = content_fn(data)
        f = f / np.linalg.norm(f, axis=1, keepdims=True)       # unit rows as the extractors give them
        content = content_vectors(cfg, f)                      # then as item_content: whiten, a 1 column, scale
    fed = build_federation(cfg, data, split, content=content)
    for _ in range(cfg.federation.rounds):
        fed.run_round()
    if cfg.prototypes.enabled:                                 # as a job does after its last round
        fed.fit_prototypes(prototype_settings(cfg))
    return cfg, data, split, FederatedAutoencoder(fed, (1.0, 5.0) if cfg.model.mode == "explicit" else None), \
        time.perf_counter() - t


def _truth(path: Path, data) -> dict[str, np.ndarray]:
    """The generator's ground truth, rows in the dataset's internal item/user order."""
    from recsys.io import load_arrays

    t = load_arrays(path / "ground_truth.safetensors")
    it = np.array([int(x) for x in data.item_ids])
    us = np.array([int(x) for x in data.user_ids])
    onehot = np.hstack([np.eye(len(v), dtype=np.float32)[t[f"attr_{k}"][it]] for k, v in ATTRIBUTES.items()])
    return {"attributes": onehot, "item_vec": t["item_vec"][it], "user_vec": t["user_vec"][us],
            "group": t["group"][us], "popularity": t["popularity"][it]}


class _BayesTaste:
    """The Bayes predictive of the generator's taste model: knows the group centres (estimated as the
    mean true user vector of each group) and the taste softmax, infers each user's group from their
    training history (posterior over groups), and ranks by the posterior-mixed taste probabilities.
    Leaves out popularity, which nothing can learn for an item without interactions. Not learnable
    from the data: a ceiling for what content alone explains on this catalogue."""

    def __init__(self, truth: dict[str, np.ndarray], train, spec):
        from recsys.synth import choice_probs, taste_probs

        g, iv = truth["group"], truth["item_vec"]
        centres = np.stack([truth["user_vec"][g == k].mean(0) for k in range(g.max() + 1)])   # (G, d)
        self.taste = np.stack([taste_probs(iv, c, spec.taste_temperature) for c in centres])  # (G, I)
        # The posterior uses the generator's full choice likelihood (taste and popularity mix).
        choice = np.stack([choice_probs(iv, c, truth["popularity"], spec) for c in centres])  # (G, I)
        ll = np.asarray((train > 0).astype(np.float64) @ np.log(choice).T)                  # (U, G)
        post = np.exp(ll - ll.max(1, keepdims=True))
        self.post = post / post.sum(1, keepdims=True)                                       # (U, G)
        self.group_accuracy = float((self.post.argmax(1) == g).mean())

    def score(self, users):
        return np.log(self.post[np.asarray(users)] @ self.taste)                            # (B, I)


class _Oracle:
    """Scores with the generator's own user and item vectors: not learnable from the data, an upper
    reference for what any content model could reach on this catalogue."""

    def __init__(self, user_vec: np.ndarray, item_vec: np.ndarray):
        self.u, self.i = user_vec, item_vec

    def score(self, users):
        return self.u[np.asarray(users)] @ self.i.T


class _Random:
    def __init__(self, n_items: int, seed: int = 0):
        self.n, self.seed = n_items, seed

    def score(self, users):
        return np.random.default_rng([self.seed, int(users[0]) if len(users) else 0]).random((len(users), self.n))


def bench_cold_start(data_dir: Path, model_dir: Path, rounds: int | None = None, seeds: tuple[int, ...] = (1, 2)) -> list:
    """Synthetic catalogue, 10% cold items: NDCG@10 among cold items and among warm items (valid and
    test part): the shipped config (its server_lr, whitened features, holder-weighted content, content
    dropout, tied encoder input, federated prototypes), the same without prototypes, without
    whitening, without the tied input, the same content without holder weights and content dropout
    (the plain projection; server_lr 1, the earlier default, and 5) and the content-free model at
    server_lr 1 and 5 (its best warm NDCG@10 on the valid part without prototypes: 1 / 2 / 3 / 5 / 10 /
    20 tried, 2026-11-24), tied, with prototypes at 5 and at 9 (its best with prototypes: 5 / 9 / 12 /
    20 tried, 2026-12-02). ``seeds``: extra model seeds for the seeded rows (same split), reported as
    mean and range."""
    from recsys.models.baselines import Popularity

    path = ensure_synth(data_dir)
    rows = []
    base = None
    clip = {"model": str(model_dir)}
    minilm = {"backend": "sentence", "model": "minilm", "fusion": "text"}
    none = {"enabled": False}
    # (name, content, server_lr, also run the extra model seeds)
    plain = {"holder_weight": 0.0, "row_dropout": 0.0}          # the projection without the shipped tricks
    shipped = _cfg("synth-cold.yaml", path)                     # names below quote its settings
    tricks = (f"holder-weighted n0 {shipped['content']['holder_weight']:g} + content dropout "
              f"{shipped['content']['row_dropout']:g}")
    tied = f"tied input {shipped['model']['input_tie']:g}"
    white = f"whitened (eps {shipped['content']['whiten']:g})"
    untied = {"input_tie": 0.0}                                  # model option, split off below
    pr = shipped.get("prototypes", {})
    protos = (f"prototypes k {pr.get('k', 16)} blend {pr.get('blend', 0.75):g}" if pr.get("enabled")
              else "no prototypes")
    off = {"enabled": False}                                     # prototypes off: each user's own code
    ship = float(shipped["federation"].get("server_lr", 1.0))   # the shipped config's row step
    # (name, content, server_lr, also run the extra model seeds, prototype overrides)
    variants = [("no content (PersonalFR)", {**none, **untied}, 1.0, False, off),
                ("no content (PersonalFR)", {**none, **untied}, 5.0, True, off),
                (f"no content, {tied}", none, 5.0, False, off),
                (f"no content, {tied}, {protos}", none, 5.0, True, {}),
                (f"no content, {tied}, {protos}", none, 9.0, True, {}),
                (f"open_clip image+text (fedrec clip train, 128-d), {white}, {tricks}, {tied}, {protos}: shipped",
                 clip, ship, True, {}),
                (f"open_clip image+text, {white}, {tricks}, {tied}, {protos}, server_lr 5 (shipped until 2026-12-02)",
                 clip, 5.0, False, {}),
                (f"open_clip image+text, {white}, {tricks}, {tied}, no prototypes", clip, ship, True, off),
                (f"open_clip image+text, not whitened (whiten 0), {tricks}, {tied}", {**clip, "whiten": 0.0}, ship, True, {}),
                (f"open_clip image+text, {tricks}, no tied input (input_tie 0)", {**clip, **untied}, ship, True, {}),
                ("open_clip image+text, plain projection (the earlier default)", {**clip, **plain}, 1.0, False, {}),
                ("open_clip image+text, plain projection", {**clip, **plain}, 5.0, False, {}),
                ("open_clip image+text, holder-weighted only", {**clip, "row_dropout": 0.0}, ship, False, {}),
                (f"open_clip image+text, content dropout {shipped['content']['row_dropout']:g} only", {**clip, "holder_weight": 0.0}, ship, False, {}),
                (f"open_clip image+text + co-interaction GNN, {tricks}", {**clip, "graph": "co_interaction"}, ship, False, {}),
                (f"open_clip text tower only (fusion text), {tricks}", {**clip, "fusion": "text"}, ship, False, {}),
                (f"MiniLM text (sentence backend, 384-d), {tricks}", minilm, ship, False, {}),
                ("MiniLM text, plain projection", {**minilm, **plain}, 5.0, False, {})]
    truth = {"enabled": True, "backend": "sentence", "model": "minilm"}     # features replaced below
    variants += [(f"reference: the generator's true attributes as content (one-hot, 28-d), {tricks}", truth, ship, False, {})]
    def cold_warm(model, data, split) -> list[float]:
        """[cold valid, cold test, warm valid, warm test] NDCG@10."""
        warm = np.setdiff1d(np.arange(data.n_items), split.cold_items)
        return [round(evaluate_candidates(model, data, split, items, part, (10,))["ndcg@10"], 4)
                for items, part in ((split.cold_items, "valid"), (split.cold_items, "test"), (warm, "valid"),
                                    (warm, "test"))]

    for name, content, slr, seeded, pov in variants:
        fn = (lambda d: _truth(path, d)["attributes"]) if content is truth else None
        content = dict(content)
        mover = {"input_tie": content.pop("input_tie")} if "input_tie" in content else {}   # a model option
        cfg, data, split, model, secs = _train(_cfg("synth-cold.yaml", path, rounds, content=content,
                                                    federation={"server_lr": slr}, model=mover, prototypes=pov), fn)
        if base is None:
            base = (data, split)
        rows.append([name, f"{slr:g}", *cold_warm(model, data, split), round(secs, 1)])
        if seeded and seeds:
            runs = [rows[-1][2:6]]
            for sd in seeds:
                cfgd = _cfg("synth-cold.yaml", path, rounds, content=content, federation={"server_lr": slr}, model=mover,
                            prototypes=pov)
                cfgd["seed"] = sd
                _, d, sp_, m, _ = _train(cfgd)
                runs.append(cold_warm(m, d, sp_))
            arr = np.array(runs)                                                # (seeds, 4)
            rows.append([f"{name}, model seeds 0,{','.join(map(str, seeds))}: mean (min-max)", f"{slr:g}",
                         *[f"{m:.4f} ({lo:.4f}-{hi:.4f})" for m, lo, hi in zip(arr.mean(0), arr.min(0), arr.max(0))],
                         "-"])
    data, split = base
    pop = Popularity().fit(split.matrix(data, "train"))
    rnd = _Random(data.n_items)
    t = _truth(path, data)
    from recsys.synth import SynthSpec

    spec = SynthSpec(**json.loads((path / "MANIFEST.json").read_text())["spec"])   # the catalogue's own generator
    bayes = _BayesTaste(t, split.matrix(data, "train"), spec)
    for name, m in (("reference: generator's true user vec . item vec (not learnable)", _Oracle(t["user_vec"], t["item_vec"])),
                    ("reference: Bayes predictive of the generator's taste model, group inferred from "
                     f"training history ({bayes.group_accuracy:.0%} right), no popularity (not learnable)", bayes),
                    ("popularity (train counts; cold items all tie)", pop), ("random", rnd)):
        rows.append([name, "-", *cold_warm(m, data, split), "-"])
    return rows


def bench_ml100k_content(data_dir: Path, rounds: int | None = None) -> tuple[list, dict[str, int]]:
    """ml-100k warm NDCG@10 (implicit) and RMSE (explicit) with/without text features and GNN; also
    the rounds each mode trained ({"implicit": R, "explicit": R})."""
    path = data_dir / "ml-100k"
    text = {"enabled": True, "backend": "sentence", "model": "minilm", "fusion": "text"}
    variants = [("no content", {"enabled": False}), ("text (MiniLM: title, year, genres)", text),
                ("text + KG GNN (ml-100k.kg)", {**text, "graph": "kg"}),
                ("text + co-interaction GNN", {**text, "graph": "co_interaction"})]
    rows, trained = [], {}
    for name, content in variants:
        ci, data, split, mi, si = _train(_cfg("ml100k-implicit.yaml", path, rounds, content=content))
        ndcg = evaluate_model(mi, data, split, "test", "implicit", (10,))["ndcg@10"]
        # explicit: scale 1 (the implicit default 6 makes the projection's steps too large for MSE: RMSE 1.16)
        ex = {**content, "scale": 1.0} if content.get("enabled") else content
        ce, data, split, me, se = _train(_cfg("ml100k-explicit.yaml", path, rounds, content=ex))
        rmse = evaluate_model(me, data, split, "test", "explicit")["rmse"]
        rows.append([name, round(ndcg, 4), round(rmse, 4), round(si, 1), round(se, 1)])
        trained = {"implicit": ci.federation.rounds, "explicit": ce.federation.rounds}
    return rows, trained


def bench_extraction(data_dir: Path, model_dir: Path) -> list:
    """Items per second of feature extraction on this machine (fresh cache each time)."""
    from recsys.features import ClipSpec, build_features
    from recsys.loaders import load_dataset

    rows = []
    synth = load_dataset(data_dir / "synth-mm")
    ml = load_dataset(data_dir / "ml-100k")
    cases = [("synth-mm", synth, data_dir / "synth-mm", ClipSpec(model=str(model_dir)), "open_clip fedrec-clip-tiny image+text"),
             ("synth-mm", synth, data_dir / "synth-mm", ClipSpec(model=str(model_dir), fusion="text"), "open_clip fedrec-clip-tiny text only"),
             ("ml-100k", ml, data_dir / "ml-100k", ClipSpec(backend="sentence", model="minilm", fusion="text"), "MiniLM text")]
    for name, ds, base, spec, label in cases:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            _, man = build_features(ds, base, spec, cache_root=Path(tmp), progress=False)
            total = time.perf_counter() - t
        rows.append([label, name, ds.n_items, round(man["items_per_s"], 1), round(ds.n_items / total, 1)])
    return rows
