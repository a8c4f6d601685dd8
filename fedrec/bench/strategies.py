"""`fedrec bench strategies`: the personalization methods compared on ml-100k.

Every cell (method, split, mode, seed) is one training run of the shipped config
(configs/ml100k-{implicit,explicit}.yaml) with the strategy swapped, evaluated on valid and test.
Results are appended to a JSONL cache (``data/bench/strategies.jsonl`` by default) as each cell
finishes, so an interrupted benchmark resumes where it stopped and the table is rendered from the
cache. Settings are chosen on valid (the ratio split, seed 0: ``SEARCH``), then the chosen setting
of each method runs seeds 0-2 on both splits and is reported on test.

Prototypes are off for every method (they are a separate, strategy-independent step; the accuracy
section reports them for personalfr).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("ratio", "leave_last_out")
MODES = ("implicit", "explicit")
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Method:
    label: str
    strategy: str
    options: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.strategy}:{json.dumps(self.options, sort_keys=True)}"


# The candidate settings of each method family, compared on valid (ratio split, seed 0, both modes).
SEARCH: dict[str, list[Method]] = {
    "personalfr": [Method("personalfr", "personalfr")],
    "fedcac": [Method("fedcac", "fedcac", {"tau": 0.5, "beta": 170}), Method("fedcac", "fedcac", {"tau": 0.3, "beta": 50})],
    "feddpa": [Method("feddpa", "feddpa", {"rank": 4}), Method("feddpa", "feddpa", {"rank": 16}),
               Method("feddpa", "feddpa", {"rank": 4, "adapter_lr": 0.1}),
               Method("feddpa", "feddpa", {"rank": 4, "adapter_lr": 0.01})],
    "fedloge": [Method("fedloge", "fedloge", {}), Method("fedloge", "fedloge", {"head_steps": 20})],
    "pfedgate s=1": [Method("pfedgate s=1", "pfedgate", {"sparsity": 1.0})],
    "pfedgate s=0.5": [Method("pfedgate s=0.5", "pfedgate", {"sparsity": 0.5})],
    "pfedgate s=0.3": [Method("pfedgate s=0.3", "pfedgate", {"sparsity": 0.3})],
    "fedper": [Method("fedper", "fedper")],
    "fedrep": [Method("fedrep", "fedrep")],
}
# Rows scored a second way from the same trained run (no extra training).
VARIANTS = {"fedloge": ("fedloge generic (equal norms)", {"scoring": "generic"})}


def _cfg(method: Method, mode: str, split: str, seed: int, data_dir: Path, rounds: int | None):
    from fedrec.bench.suite import _cfg as shipped

    cfg = shipped(mode, method.strategy, rounds, data_dir)
    cfg.federation.options = dict(method.options)
    cfg.split.kind = split
    cfg.seed = seed
    cfg.prototypes.enabled = False
    return cfg


def run_cell(method: Method, mode: str, split: str, seed: int, data_dir: Path, rounds: int | None,
             parts=("valid", "test")) -> dict:
    """Train one cell and evaluate it: a JSON-able record."""
    import torch

    from federation.runs.jobs import build_federation, prepare_data
    from federation.simulation import FederatedAutoencoder
    from recsys.evaluation import evaluate_model
    from recsys.metrics import activity_quartiles, group_recall, item_terciles

    from recsys.errors import FedrecError

    cfg = _cfg(method, mode, split, seed, data_dir, rounds)
    data, sp_ = prepare_data(cfg)
    fed = build_federation(cfg, data, sp_)
    t0 = time.perf_counter()
    try:
        stats = [fed.run_round() for _ in range(fed.cfg.rounds)]
    except FedrecError as e:              # a diverged run is a result too (the table says so)
        log.warning("%s %s %s seed %d: %s", method.label, mode, split, seed, e)
        return [{"method": method.label, "key": method.key, "strategy": method.strategy, "options": method.options,
                 "mode": mode, "split": split, "seed": seed, "rounds": fed.cfg.rounds, "diverged": str(e)}]
    secs = time.perf_counter() - t0
    r = data.ratings.data
    clip = (float(r.min()), float(r.max())) if mode == "explicit" else None
    import datetime

    from fedrec.bench.suite import _machine

    rec = {"method": method.label, "key": method.key, "strategy": method.strategy, "options": method.options,
           "mode": mode, "split": split, "seed": seed, "rounds": fed.cfg.rounds, "train_s": round(secs, 1),
           "date": datetime.date.today().isoformat(), "machine": _machine(),
           "updates_per_s": float(np.median([s.updates_per_s for s in stats[2:]] or [0])),
           "kb_up": float(np.mean([s.bytes_up / s.participants for s in stats])) / 1e3,
           "kb_down": float(np.mean([s.bytes_down / s.participants for s in stats])) / 1e3,
           "server_mb": (sum(v.numel() * v.element_size() for v in fed.global_p.values())
                         + sum(v.numel() * v.element_size() for v in fed.server_state.values())) / 2**20,
           "client_personal_kb": (sum(v[0].numel() * v.element_size() for k, v in fed.store.tensors.items()
                                      if k not in fed.store.row_keys) / 1e3 if fed.store is not None else 0.0)}
    train = sp_.matrix(data, "train")
    variants = [(method.label, None)]
    if method.strategy in VARIANTS:
        variants.append(VARIANTS[method.strategy])
    out = []
    for label, opts in variants:
        if opts is not None:
            from federation.strategies.registry import get_strategy

            fed.strategy = get_strategy(method.strategy, {**method.options, **opts})
        model = FederatedAutoencoder(fed, clip)
        one = dict(rec, method=label)
        for part in parts:
            m = evaluate_model(model, data, sp_, part, mode, (10, 20))
            one[part] = {k: float(v) for k, v in m.items()}
            if mode == "implicit" and part == "test":
                truth = sp_.matrix(data, part)
                users = np.flatnonzero(np.diff(truth.indptr) > 0)
                from recsys.evaluation import _seen

                topk, _ = model.recommend(users, 20, exclude=_seen(data, sp_, part))
                one[part].update(group_recall(topk, truth, users, 20, item_terciles(train),
                                              activity_quartiles(train, users)))
        out.append(one)
    del fed
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def measure_speed(data_dir: Path, recs: list[dict], families: list[str] | None = None, rounds: int = 5,
                  modes=MODES) -> list[dict]:
    """Client updates per second of each method's chosen setting, measured alone and back to back on
    this machine (the per-run figures of the main tables share the CPU with whatever else ran): the
    median over rounds 3..``rounds`` of the shipped config's cohort. Records of kind "speed"."""
    import datetime

    from fedrec.bench.suite import _machine
    from federation.runs.jobs import build_federation, prepare_data

    out = []
    for fam in families or list(SEARCH):
        for mode in modes:
            best = choose(recs, fam, mode)
            m = next((x for x in SEARCH[fam] if best is not None and x.key == best["key"]), SEARCH[fam][0])
            cfg = _cfg(m, mode, "ratio", 0, data_dir, rounds)
            data, sp_ = prepare_data(cfg)
            fed = build_federation(cfg, data, sp_)
            st = [fed.run_round() for _ in range(rounds)]
            out.append({"kind": "speed", "method": fam, "key": m.key, "mode": mode, "clients": st[-1].participants,
                        "updates_per_s": float(np.median([x.updates_per_s for x in st[2:]])),
                        "date": datetime.date.today().isoformat(), "machine": _machine()})
            log.info("speed %s %s %.0f", fam, mode, out[-1]["updates_per_s"])
    return out


def speed_table(recs: list[dict]) -> str:
    """The latest speed record of each method and mode."""
    from fedrec.bench.suite import _table

    last: dict[tuple[str, str], dict] = {}
    for r in recs:
        if r.get("kind") == "speed":
            last[(r["method"], r["mode"])] = r
    if not last:
        return ""
    rows = []
    for fam in SEARCH:
        cells = [last.get((fam, mode)) for mode in MODES]
        if any(cells):
            rows.append([fam, *[f"{c['updates_per_s']:,.0f}" if c else "-" for c in cells],
                         max((c["date"] for c in cells if c), default="")])
    return _table("Client updates per second, each method alone (ml-100k, the shipped configs' cohorts: implicit "
                  "94, explicit 283 clients per round; median of rounds 3-5)", ["method", *MODES, "measured"], rows)


def _load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs(recs: list[dict]) -> list[dict]:
    """The finished training-run records (not speed measurements, not diverged runs)."""
    return [r for r in recs if r.get("kind", "run") == "run" and "diverged" not in r]


def _append(path: Path, recs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:                 # one line per record: a killed run loses at most the cell it was in
        for r in recs:
            f.write(json.dumps(r) + "\n")
        f.flush()


def _done(recs: list[dict], key: str, mode: str, split: str, seed: int, rounds: int | None) -> bool:
    return any(r.get("kind", "run") == "run" and r["key"] == key and r["mode"] == mode and r["split"] == split and r["seed"] == seed
               and (rounds is None or r["rounds"] == rounds) for r in recs)


def _metric(mode: str) -> tuple[str, int]:
    """The selection metric and its sign (+1: higher is better)."""
    return ("ndcg@10", 1) if mode == "implicit" else ("rmse", -1)


def choose(recs: list[dict], family: str, mode: str) -> dict | None:
    """The family's setting with the best valid metric (ratio split, seed 0)."""
    metric, sign = _metric(mode)
    cands = [r for r in _runs(recs) if r["method"] == family and r["mode"] == mode and r["split"] == "ratio"
             and r["seed"] == 0 and r["key"] in {m.key for m in SEARCH[family]}]
    return max(cands, key=lambda r: sign * r["valid"][metric]) if cands else None


def run_strategies(data_dir: Path, cache: Path, rounds: int | None = None, families: list[str] | None = None,
                   seeds=SEEDS, splits=SPLITS, modes=MODES) -> list[dict]:
    """Fill the cache: the search cells, then the chosen settings' cells. Returns every record."""
    fams = families or list(SEARCH)
    for fam in fams:
        if fam not in SEARCH:
            raise ValueError(f"unknown method {fam!r} (one of: {', '.join(SEARCH)})")
    recs = _load(cache)
    for mode in modes:
        for fam in fams:
            for m in SEARCH[fam]:
                if not _done(recs, m.key, mode, "ratio", 0, rounds):
                    log.info("search %s %s %s", mode, m.label, m.options)
                    new = run_cell(m, mode, "ratio", 0, data_dir, rounds)
                    _append(cache, new)
                    recs += new
            best = choose(recs, fam, mode)
            if best is None:                 # every setting diverged
                continue
            m = next(x for x in SEARCH[fam] if x.key == best["key"])
            for split in splits:
                for seed in seeds:
                    if not _done(recs, m.key, mode, split, seed, rounds):
                        log.info("cell %s %s %s seed %d", mode, m.label, split, seed)
                        new = run_cell(m, mode, split, seed, data_dir, rounds)
                        _append(cache, new)
                        recs += new
    return recs


ML100K_ITEMS, H1, H2 = 1682, 256, 128


def decoder_kmacs(rec: dict) -> float:
    """Decoder multiply-adds (thousands) of one full-catalogue scoring pass of one client (the shipped
    256/128 model on ml-100k's 1,682 items): a pFedGate client computes only its kept blocks."""
    full = H1 * (H2 + ML100K_ITEMS)
    if rec["strategy"] == "pfedgate":
        from federation.strategies.pfedgate import PFedGateOptions, kept_blocks

        o = PFedGateOptions(**rec["options"])
        full = full * kept_blocks(o.blocks, o.sparsity) / o.blocks
    return full / 1e3


def _ms(vals: list[float], digits: int = 4) -> str:
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f} (1 seed)"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def table(recs: list[dict]) -> str:
    """Markdown tables from the cache: per split and mode, each method's chosen setting on test."""
    from fedrec.bench.suite import _table

    alone = speed_table(recs)
    diverged = [r for r in recs if "diverged" in r]
    recs = _runs(recs)
    md = []
    labels = list(SEARCH) + [v[0] for v in VARIANTS.values()]
    for mode in MODES:
        for split in SPLITS:
            rows = []
            for fam in labels:
                base = fam if fam in SEARCH else next(k for k, v in VARIANTS.items() if v[0] == fam)
                best = choose(recs, base, mode)
                if best is None:
                    continue
                cell = [r for r in recs if r["method"] == fam and r["key"] == best["key"] and r["mode"] == mode
                        and r["split"] == split]
                if not cell:
                    continue
                opts = ", ".join(f"{k} {v}" for k, v in best["options"].items()) or "defaults"
                t = [r["test"] for r in cell]
                speed = np.median([r["updates_per_s"] for r in cell])
                common = [f"{speed:,.0f}", f"{decoder_kmacs(cell[0]):,.0f}", f"{np.mean([r['kb_up'] for r in cell]):,.1f}",
                          f"{np.mean([r['kb_down'] for r in cell]):,.1f}", f"{cell[0]['server_mb']:,.1f}",
                          f"{cell[0]['client_personal_kb']:,.1f}"]
                if mode == "implicit":
                    rows.append([fam, opts, _ms([x["ndcg@10"] for x in t]), _ms([x["recall@20"] for x in t]),
                                 *[_ms([x[f"recall@20_{g}"] for x in t], 3) for g in ("head", "mid", "tail")],
                                 *[_ms([x[f"recall@20_q{q}"] for x in t], 3) for q in (1, 4)], *common])
                else:
                    rows.append([fam, opts, _ms([x["rmse"] for x in t]), _ms([x["mae"] for x in t]), *common])
            if not rows:
                continue
            cost = ["client updates/s (during the run)", "decoder k-MACs / client / scoring pass",
                    "KB up / client / round", "KB down / client / round", "server MB", "personal KB / client"]
            title = f"{mode}, {split.replace('_', '-')} split: test, mean ± std over seeds"
            if mode == "implicit":
                md.append(_table(title, ["method", "setting (chosen on valid)", "NDCG@10", "Recall@20",
                                         "R@20 head", "R@20 mid", "R@20 tail", "R@20 lightest 25%",
                                         "R@20 heaviest 25%", *cost], rows))
            else:
                md.append(_table(title, ["method", "setting (chosen on valid)", "RMSE", "MAE", *cost], rows))
    search = []
    for r in diverged:
        if r["split"] == "ratio" and r["seed"] == 0:
            search.append([r["method"], r["mode"], ", ".join(f"{k} {v}" for k, v in r["options"].items()) or "defaults",
                           r["diverged"], r["rounds"], "-"])
    for r in recs:
        if r["split"] == "ratio" and r["seed"] == 0:
            metric, _ = _metric(r["mode"])
            search.append([r["method"], r["mode"], ", ".join(f"{k} {v}" for k, v in r["options"].items()) or "defaults",
                           round(r["valid"][metric], 4), r["rounds"], r["train_s"]])
    if alone:
        md.append(alone)
    md.append(_table("Settings searched (ratio split, seed 0; valid NDCG@10 implicit, valid RMSE explicit)",
                     ["method", "mode", "setting", "valid", "rounds", "train s"], search))
    return "\n".join(md)
