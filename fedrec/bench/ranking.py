"""``fedrec bench ranking``: the ranking stage on ml-100k — candidate sources alone, the union with and
without the federated re-ranker (seeds), federated EASE under each privacy mode, MAP list targets
against a linear mix and MMR at the same achieved values, and the latency of one request.
Every figure is measured when the command runs (the runs are trained into a temporary directory)."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


def _write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _config(name: str, data_dir: Path, **over) -> dict:
    d = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    if "data" in d:
        d["data"]["path"] = str((data_dir / "ml-100k").resolve())
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return d


def _mean_sd(xs: list[float]) -> str:
    return f"{np.mean(xs):.4f} ± {np.std(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def train_runs(data_dir: Path, tmp: Path, seeds: tuple[int, ...]) -> dict:
    from federation.ranking.jobs import train_ease
    from federation.ranking.reranker import train_ranker
    from federation.runs.jobs import train

    t = time.perf_counter()
    fed = train(_write(_config("ml100k-implicit", data_dir, eval={"every": 0}), tmp / "fed.yaml"), tmp / "fed",
                progress=False)
    fed_s = time.perf_counter() - t
    ease = train_ease(_write(_config("ml100k-ease", data_dir), tmp / "ease.yaml"), tmp / "ease")
    rankers = {}
    for scheme, seed in [("cyclic", s) for s in seeds] + [("bagging", seeds[0])]:
        cfg = _config("ml100k-ranker", data_dir, sources={"personalfr": str(fed), "ease": str(ease)})
        cfg["training"] = {**cfg["training"], "scheme": scheme, "seed": seed}
        rankers[(scheme, seed)] = train_ranker(_write(cfg, tmp / f"r-{scheme}-{seed}.yaml"), tmp / f"r-{scheme}-{seed}",
                                               progress=False)
    return {"fed": fed, "fed_s": fed_s, "ease": ease, "rankers": rankers}


def pipeline_table(runs: dict) -> str:
    import json

    from fedrec.bench.suite import _table

    sums = {k: json.loads((d / "summary.json").read_text()) for k, d in runs["rankers"].items()}
    first = sums[next(iter(sums))]["test"]["rows"]
    rows = [[f"{name} alone", m["ndcg@10"], m["recall@20"]] for name, m in first.items()
            if name in ("personalfr", "ease", "content", "popularity")]
    rows.append(["union of top-50 per source, reciprocal-rank fusion (no re-ranker)",
                 first["union (RRF, no re-ranker)"]["ndcg@10"], first["union (RRF, no re-ranker)"]["recall@20"]])
    cyc = [s for (scheme, _), s in sums.items() if scheme == "cyclic"]
    for scheme, label in (("cyclic", "union + LambdaRank re-ranker, cyclic over 4 user blocks"),
                          ("bagging", "union + LambdaRank re-ranker, bagging over 4 user blocks")):
        ss = [s for (sc, _), s in sums.items() if sc == scheme]
        n = [s["test"]["rows"]["union + re-ranker"]["ndcg@10"] for s in ss]
        r = [s["test"]["rows"]["union + re-ranker"]["recall@20"] for s in ss]
        rows.append([f"{label} (seeds {len(ss)})", _mean_sd(n), _mean_sd(r)])
    extra = (f"\nCandidate union recall of the test items: {cyc[0]['test']['candidate_recall']:.3f}; "
             f"re-ranker best round {', '.join(str(s['best_round']) for s in cyc)} (cyclic seeds); "
             f"feature time {cyc[0]['features_s']:.1f} s, boosting {cyc[0]['boost_s']:.1f} s; "
             f"boosters sent by the holders {cyc[0]['upload_bytes'] / 1e6:.2f} MB in all.\n")
    return _table("The pipeline on the test part (ml-100k implicit; generators on train, re-ranker on valid)",
                  ["candidates / ranking", "test NDCG@10", "test Recall@20"], rows) + extra


def ease_privacy_table(data_dir: Path, tmp: Path) -> str:
    import json

    from federation.ranking.jobs import train_ease
    from fedrec.bench.suite import _table

    rows = []
    variants = [("plain (server sees each user's item ids)", {"secure_aggregation": False}),
                ("secure aggregation (two aggregators)", {"secure_aggregation": True})]
    for eps in (8.0, 2.0):
        variants.append((f"secure aggregation + DP, target epsilon {eps:g}, clip 100",
                         {"secure_aggregation": True, "dp": True, "target_epsilon": eps, "clip": 100.0, "noise_seed": 0}))
    for label, priv in variants:
        d = train_ease(_write(_config("ml100k-ease", data_dir, privacy=priv), tmp / "e.yaml"), tmp / "e", overwrite=True)
        s = json.loads((d / "summary.json").read_text())
        eps = f"{s['epsilon']:.2f}" if s["epsilon"] is not None else "-"
        rows.append([label, s["metrics"]["test"]["ndcg@10"], eps, f"{s['upload_bytes'] / 943 / 1e3:,.1f}",
                     round(s["download_bytes_per_client"] / 1e6, 2), s["fit_s"]])
    return _table("Federated EASE under each privacy mode (lambda 300, one release, delta 1e-4)",
                  ["mode", "test NDCG@10", "epsilon", "upload KB per user", "download MB per user", "server s"], rows)


def _cases(ranker, users: np.ndarray) -> list[dict]:
    """Per test user: candidates, ranker scores, palette values, content rows, truth."""
    from federation.ranking.pipeline import examples
    from federation.ranking.reranker import candidate_values

    src = ranker.src
    truth = src.split.matrix(src.data, "test").tocsr()
    out = []
    for b in examples(src, users, "test", ranker.manifest["candidates_per_source"]):
        s = ranker.booster.predict(b.X)
        for j, u in enumerate(b.users):
            lo, hi = b.cands.offsets[j], b.cands.offsets[j + 1]
            items = b.cands.items[lo:hi]
            out.append({"user": int(u), "items": items, "s": s[lo:hi],
                        "values": candidate_values(ranker, int(u), items, None), "content": src.content[items],
                        "truth": set(truth[u].indices.tolist())})
    return out


def _ndcg(lists: list[np.ndarray], cases: list[dict], k: int = 10) -> float:
    disc = 1 / np.log2(np.arange(2, k + 2))
    tot = 0.0
    for top, c in zip(lists, cases):
        items = c["items"][top[:k]]
        gain = np.array([i in c["truth"] for i in items], float)
        idcg = disc[:min(len(c["truth"]), k)].sum()
        tot += (gain * disc[:len(items)]).sum() / idcg if idcg else 0.0
    return tot / len(cases)


def _achieved(lists, cases, value: str, k: int = 10) -> float:
    if value == "ild":
        from recsys.ranking.palette import intra_list_diversity

        return float(np.mean([intra_list_diversity(t[:k], c["content"]) for t, c in zip(lists, cases)]))
    return float(np.mean([c["values"][value][t[:k]].mean() for t, c in zip(lists, cases)]))


def _at_same_value(curve: list[tuple[float, float]], v: float) -> float:
    """NDCG interpolated at achieved value v on a (value, ndcg) curve; NaN outside its range."""
    xs, ys = zip(*sorted(curve))
    return float(np.interp(v, xs, ys)) if xs[0] <= v <= xs[-1] else float("nan")


def palette_table(ranker, users: np.ndarray, k: int = 10) -> str:
    from fedrec.bench.suite import _table
    from recsys.ranking.palette import (align, federated_lambda, linear_mix, list_lambda, log_softmax, mmr, ranked,
                                        temperature_for_perplexity)

    cases = _cases(ranker, users)
    for c in cases:
        c["logp0"] = log_softmax(c["s"], temperature_for_perplexity(c["s"], k))
    base = [np.argsort(-c["s"], kind="stable")[:k] for c in cases]
    rows = [["none (the re-ranker's list)", "-", "-", "-", round(_ndcg(base, cases), 4), "-", "-", "-", "-"]]
    base_vals = {v: _achieved(base, cases, v) for v in ("tail", "novelty", "diversity")}
    for value, targets in (("tail", (0.2, 0.4)), ("novelty", (0.35, 0.45)), ("diversity", (0.2, 0.25))):
        for c_t in targets:
            lists, met, feas, dist_gap = [], 0, 0, []
            for c in cases:
                R = c["values"][value][:, None]
                a = align(c["logp0"], R, np.array([c_t]))
                top = ranked(c["logp0"], R, list_lambda(c["logp0"], R, np.array([c_t]), a.lam, k), k)
                lists.append(top)
                if a.feasible:
                    feas += 1
                    met += R[top, 0].mean() >= c_t - 0.01
                    dist_gap.append(max(c_t - a.expected[0], 0.0))
            ach = _achieved(lists, cases, value)
            lam, _ = federated_lambda([(c["logp0"], c["values"][value][:, None]) for c in cases], np.array([c_t]),
                                      steps=150, lr=10.0)
            glob = [ranked(c["logp0"], c["values"][value][:, None], lam, k) for c in cases]
            mix = []
            for w in (0, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256):
                ls = [linear_mix(c["s"], c["values"][value][:, None], np.array([w]), k) for c in cases]
                mix.append((_achieved(ls, cases, value), _ndcg(ls, cases)))
            mm = "-"
            if value == "diversity":
                curve = []
                for beta in (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
                    ls = [mmr(c["s"], c["content"], beta, k) for c in cases]
                    curve.append((_achieved(ls, cases, "ild"), _ndcg(ls, cases)))
                ild = _achieved(lists, cases, "ild")
                mm = f"{_fmt(_at_same_value(curve, ild))} (at MAP's intra-list diversity {ild:.3f})"
            gap = f"{max(dist_gap):.1e}" if dist_gap else "-"
            rows.append([f"{value} ≥ {c_t:g} (base list {base_vals[value]:.3f})", f"{feas / len(cases):.0%} ({gap})",
                         f"{met / max(feas, 1):.0%}", f"{ach:.3f}", round(_ndcg(lists, cases), 4),
                         f"{_achieved(glob, cases, value):.3f}", round(_ndcg(glob, cases), 4),
                         _fmt(_at_same_value(mix, ach)), mm])
    return _table(f"MAP list targets on the re-ranked lists (k = {k}; {len(cases)} test users)",
                  ["target (≥)", "feasible users (largest shortfall of the distribution)",
                   "feasible users whose list meets it (within 0.01)", "MAP per user: mean list value",
                   "MAP per user: NDCG@10", "one λ (federated): mean list value", "one λ: NDCG@10",
                   "linear mix at MAP's mean value: NDCG@10", "MMR at MAP's mean value: NDCG@10"], rows)


def _fmt(v: float) -> str:
    return f"{v:.4f}" if np.isfinite(v) else "out of its range"


def latency_table(ranker, users: np.ndarray) -> str:
    from fedrec.bench.suite import _table
    from federation.ranking.reranker import recommend_aligned

    rows = []
    for label, targets in (("candidates + features + ranker", {}),
                           ("… + MAP (tail ≥ 0.2, novelty ≥ 0.35)", {"tail": 0.2, "novelty": 0.35})):
        recommend_aligned(ranker, int(users[0]), 10, targets)                 # warm
        ts = []
        for u in users:
            t = time.perf_counter()
            recommend_aligned(ranker, int(u), 10, targets)
            ts.append((time.perf_counter() - t) * 1e3)
        rows.append([label, len(ts), f"{np.percentile(ts, 50):.1f}", f"{np.percentile(ts, 99):.1f}"])
    return _table("Latency of one request (one user, k = 10, in process, models loaded)",
                  ["request", "requests", "p50 ms", "p99 ms"], rows)


def ranking_section(data_dir: Path, quick: bool) -> str:
    from federation.ranking.reranker import load_ranker

    seeds = (0,) if quick else (0, 1, 2)
    with tempfile.TemporaryDirectory(prefix="fedrec-bench-ranking-") as t:
        tmp = Path(t)
        runs = train_runs(data_dir, tmp, seeds)
        md = pipeline_table(runs)
        md += "\n" + ease_privacy_table(data_dir, tmp)
        ranker = load_ranker(runs["rankers"][("cyclic", seeds[0])])
        truth = ranker.src.split.matrix(ranker.src.data, "test")
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
        md += "\n" + palette_table(ranker, users)
        rng = np.random.default_rng(0)
        md += "\n" + latency_table(ranker, rng.choice(users, 100 if quick else 300, replace=False))
    return md
