"""``fedrec bench privacy``: what an honest-but-curious server learns, plain vs secure aggregation, and
what secure aggregation costs (accuracy, bytes, speed). Every figure is measured when the command runs.

The attacker keeps everything its role sees during a whole training job on ml-100k:
  * plain server: every message (item ids, rows, biases) of every round;
  * secure-aggregation server: who took part in each round and the revealed per-item sums and counts;
  * one secure-aggregation aggregator: each client's padded key count and its DPF keys.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import yaml

from federation.privacy import attacks, channel, dpf, secagg as sa
from federation.privacy.fixedpoint import from_ring
from federation.runs.config import parse_config
from federation.runs.jobs import build_federation, prepare_data, prototype_settings
from federation.simulation import FederatedAutoencoder
from federation.strategies.comm import clients_bytes
from federation.strategies.messages import aggregate_updates
from recsys.evaluation import evaluate_model


VARIANTS = (("min_clients 5", {"min_clients": 5}), ("min_clients 2", {"min_clients": 2}),
            ("min_clients 2, fixed_rows 192", {"min_clients": 2, "fixed_rows": 192}))


def _cfg(data_dir: Path, mode: str, rounds: int | None, secure: bool, min_clients: int = 1, **privacy):
    src = Path(__file__).resolve().parents[2] / "configs" / f"ml100k-{mode}.yaml"
    d = yaml.safe_load(src.read_text())
    d["data"]["path"] = str((data_dir / "ml-100k").resolve())
    d["eval"] = {"every": 0}
    if rounds:
        d["federation"]["rounds"] = rounds
    if secure:
        d["privacy"] = {"secure_aggregation": True, "min_clients": min_clients, **privacy}
    return parse_config(d)


def _truth(fed) -> np.ndarray:
    t = np.zeros(fed.train.shape, bool)
    rows = np.repeat(np.arange(fed.train.shape[0]), np.diff(fed.train.indptr))
    t[rows, fed.train.indices] = True
    return t


def _finish(fed, cfg, data, split) -> dict:
    if cfg.prototypes.enabled:
        fed.fit_prototypes(prototype_settings(cfg))
    r = data.ratings.data
    clip = (float(r.min()), float(r.max())) if cfg.model.mode == "explicit" else None
    return evaluate_model(FederatedAutoencoder(fed, clip), data, split, "test", cfg.model.mode, cfg.eval.k)


def run_plain(cfg, data, split) -> tuple[dict, attacks.PlainObserver, object, dict]:
    """The job with a server that keeps every message (aggregated as the deployed server does)."""
    fed = build_federation(cfg, data, split)
    obs = attacks.PlainObserver(*fed.train.shape)
    f = cfg.federation
    t0, n, up = time.perf_counter(), 0, 0
    for rnd in range(f.rounds):
        users = fed.sample(rnd)
        msgs, _ = fed.client_messages(users, fed.lr_at(rnd))
        g_rows = fed.global_p["dec_out"].double().cpu().numpy()
        for u in users:
            ids, rows, _ = fed.message_deltas(msgs[int(u)])
            obs.observe(int(u), ids, rows, g_rows[ids])
        new, _ = aggregate_updates(fed.global_p, [msgs[int(u)] for u in users], fed.shape, f.row_average,
                                   f.server_lr, None)
        fed.global_p.update(new)
        fed.round += 1
        n += len(users)
        up += clients_bytes(fed.strategy, fed.shape, fed.n_per_user[users])[0]
    info = {"train_s": time.perf_counter() - t0, "bytes_per_client": up / max(1, n)}
    return _finish(fed, cfg, data, split), obs, fed, info


def run_secure(cfg, data, split) -> tuple[dict, attacks.RevealObserver, object, dict]:
    """The job under secure aggregation with a server that keeps every revealed sum."""
    fed = build_federation(cfg, data, split)
    obs = attacks.RevealObserver(*fed.train.shape)
    s = fed.cfg.secagg
    t0, n, up, withheld = time.perf_counter(), 0, 0, 0
    for rnd in range(cfg.federation.rounds):
        users = fed.sample(rnd)
        lr = fed.lr_at(rnd)
        rows, dense, _ = fed.secure_round_sums(users, lr)
        rev = sa.reveal(rows, dense, len(users), s)
        obs.observe(users, rev.counts, rev.row_sums[:, -1])
        fed.apply_revealed(rev, lr)
        fed.round += 1
        n += len(users)
        withheld += rev.withheld
        up += int(sa.upload_bytes(fed.n_per_user[users], fed.secure_layout(), s).sum())
    info = {"train_s": time.perf_counter() - t0, "bytes_per_client": up / max(1, n),
            "withheld_per_round": withheld / max(1, cfg.federation.rounds)}
    return _finish(fed, cfg, data, split), obs, fed, info


def aggregator_view(cfg, data, split, n_clients: int = 8) -> dict:
    """One aggregator's attack: expand each of ``n_clients`` round-1 clients' real DPF keys over the
    catalogue and score items by the size of its share there (per-user AUC against the truth), and link
    clients across rounds by their padded key counts alone."""
    fed = build_federation(cfg, data, split)
    truth = _truth(fed)
    lay, s = fed.secure_layout(), fed.cfg.secagg
    users = fed.sample(0)[:n_clients]
    msgs, _ = fed.client_messages(users, fed.lr_at(0))
    aucs = []
    for u in users:
        ids, rows, dense = fed.message_deltas(msgs[int(u)])
        keep = sa.rows_sent(len(ids), s, 0, int(u))
        plain = sa.client_payloads(ids[keep], rows[keep], dense, lay, s)
        keys = np.frombuffer(plain[0][:-sa.SEED], np.uint8).reshape(-1, lay.key_bytes)
        share = from_ring(dpf.eval_full_sum(0, keys, lay.n_items, lay.row_dim)).astype(np.float64)   # (N, D)
        score = np.abs(share).sum(1)
        aucs.append(attacks.membership_auc_users(score[None], truth[int(u)][None]))
    P = sa.padded_rows(fed.n_per_user, lay.n_items, s.pad_min, s.fixed_rows)
    active = fed.n_per_user > 0
    sizes = np.broadcast_to(P[active, None].astype(np.float64), truth[active].shape)
    return {"key_auc": float(np.mean(aucs)), "size_linkage": attacks.size_linkage_accuracy(P[active], P[active]),
            "distinct_sizes": int(len(np.unique(P[active]))),
            "size_item_auc": attacks.membership_auc_items(sizes, truth[active])}


def bench_privacy_attacks(data_dir: Path, rounds: int | None = None, variants=VARIANTS) -> tuple[list, list, dict]:
    """(membership / linkage rows, rating rows, info) for plain and secure runs of both shipped configs."""
    rows, rating_rows, info = [], [], {}
    for mode in ("implicit", "explicit"):
        cfg = _cfg(data_dir, mode, rounds, False, 1)
        data, split = prepare_data(cfg)
        metric = "ndcg@10" if mode == "implicit" else "rmse"
        m, obs, fed, inf = run_plain(cfg, data, split)
        truth = _truth(fed)
        seen = obs.seen.sum(1) > 0
        pop = np.broadcast_to(truth.sum(0).astype(np.float64), truth.shape)
        base = {"user_prior": attacks.membership_auc_users(pop[seen], truth[seen]),
                "prec_prior": attacks.precision_at_size(pop[seen], truth[seen])}
        info[mode] = {"rounds": cfg.federation.rounds, "observed": int(seen.sum()), **base}
        rows.append([mode, "plain: server", round(attacks.membership_auc_items(obs.seen[seen], truth[seen]), 3),
                     round(attacks.membership_auc_users(obs.seen[seen], truth[seen]), 3),
                     round(attacks.precision_at_size(obs.seen[seen], truth[seen]), 3),
                     round(attacks.linkage_accuracy(obs.seen[seen] > 0, obs.seen[seen] > 0), 3),
                     round(m[metric], 4), round(inf["bytes_per_client"] / 1e3, 1),
                     round(fed.round * len(fed.sample(0)) / inf["train_s"])])
        ratings = fed_ratings = None
        if mode == "explicit":
            ratings, users_, items_ = _train_ratings(data, split)
            fed_ratings = (ratings, users_, items_)
            shadow = np.random.default_rng(0).choice(truth.shape[0], truth.shape[0] * 3 // 10, replace=False)
            gob = fed.global_p["dec_ob"].double().cpu().numpy()
            um, im = attacks.baseline_rmse(ratings, users_, items_, shadow)
            plain_r = attacks.rating_attack([obs.bias[users_, items_], obs.resid[users_, items_],
                                             obs.pred[users_, items_], gob[items_]], ratings, users_, shadow)
            pub = attacks.rating_attack([gob[items_]], ratings, users_, shadow)
            rating_rows.append(["plain: server", round(plain_r, 4), round(pub, 4), round(um, 4), round(im, 4)])
        for label, priv in variants:
            cfg_s = _cfg(data_dir, mode, rounds, True, **priv)
            m, obs_s, fed_s, inf = run_secure(cfg_s, data, split)
            sc = obs_s.scores()
            seen_s = obs_s.rounds_in > 0
            rows.append([mode, f"secure ({label}): server", round(attacks.membership_auc_items(sc[seen_s], truth[seen_s]), 3),
                         round(attacks.membership_auc_users(sc[seen_s], truth[seen_s]), 3),
                         round(attacks.precision_at_size(sc[seen_s], truth[seen_s]), 3), "-",
                         round(m[metric], 4), round(inf["bytes_per_client"] / 1e3, 1),
                         round(fed_s.round * len(fed_s.sample(0)) / inf["train_s"])])
            info[f"{mode}-secure-{label}"] = inf
            if fed_ratings is not None:
                ratings, users_, items_ = fed_ratings
                gob = fed_s.global_p["dec_ob"].double().cpu().numpy()
                sec_r = attacks.rating_attack([obs_s.mean_bias()[users_, items_], gob[items_]], ratings, users_, shadow)
                pub = attacks.rating_attack([gob[items_]], ratings, users_, shadow)
                rating_rows.append([f"secure ({label}): server", round(sec_r, 4), round(pub, 4), round(um, 4),
                                    round(im, 4)])
        for label, priv in (("power-of-two padding", {}), ("fixed_rows 192", {"fixed_rows": 192})):
            agg = aggregator_view(_cfg(data_dir, mode, rounds, True, 2, **priv), data, split)
            rows.append([mode, f"secure, {label}: one aggregator", round(agg["size_item_auc"], 3),
                         round(agg["key_auc"], 3), "-", round(agg["size_linkage"], 3), "-", "-", "-"])
            info[f"{mode}-aggregator-{label}"] = agg
    return rows, rating_rows, info


def _train_ratings(data, split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ratings, users, items) of the training split: what clients train on and send updates about."""
    m = split.matrix(data, "train").tocoo()
    return m.data.astype(np.float64), m.row.astype(np.int64), m.col.astype(np.int64)


def protocol_timing(data_dir: Path, clients: int = 4) -> dict:
    """Seconds for the real protocol on ml-100k sizes: one client's payloads and sealing, one aggregator's
    opening and expansion per client."""
    cfg = _cfg(data_dir, "implicit", 1, True, 1)
    data, split = prepare_data(cfg)
    fed = build_federation(cfg, data, split)
    lay, s = fed.secure_layout(), fed.cfg.secagg
    users = fed.sample(0)[:clients]
    msgs, _ = fed.client_messages(users, fed.lr_at(0))
    keys = [channel.new_private_key() for _ in range(2)]
    pubs = tuple(channel.public_bytes(k) for k in keys)
    agg = sa.Aggregator(0, keys[0], lay, s, "bench")
    agg.open_round(0, users)
    t_client = t_open = 0.0
    for u in users:
        t0 = time.perf_counter()
        ids, rows, dense = fed.message_deltas(msgs[int(u)])
        keep = sa.rows_sent(len(ids), s, 0, int(u))
        sealed = sa.seal_payloads(pubs, "bench", 0, int(u), sa.client_payloads(ids[keep], rows[keep], dense, lay, s))
        t1 = time.perf_counter()
        agg.receive(int(u), sealed[0])
        t_client, t_open = t_client + t1 - t0, t_open + time.perf_counter() - t1
    t0 = time.perf_counter()
    agg.share(users)
    t_sum = time.perf_counter() - t0
    return {"client_s": t_client / len(users), "open_s": t_open / len(users), "expand_s": t_sum / len(users),
            "rows": float(np.mean(fed.n_per_user[users])),
            "padded": float(np.mean(sa.padded_rows(fed.n_per_user[users], lay.n_items, s.pad_min, s.fixed_rows)))}


def deployed_capture(n_nodes: int = 3, rounds: int = 3) -> list:
    """The curious operator of a real SuperLink deployment (synthetic catalogue, 3 SuperNodes on
    127.0.0.1): the server keeps every received message (``capture-dir``), then scores membership from
    it: the ids in plain messages; only the sealed shares' sizes under secure aggregation."""
    import tempfile

    from federation.deploy.process import LocalFederation
    from recsys.io import load_arrays
    from recsys.synth import SynthSpec, write_catalogue

    out = []
    with tempfile.TemporaryDirectory(prefix="fedrec-bench-capture-") as tmp:
        tmp = Path(tmp)
        write_catalogue(SynthSpec(n_users=300, n_items=200, mean_activity=12, seed=5), tmp / "data", images=False,
                        progress=False)
        for secure in (False, True):
            d = {"name": "capture", "seed": 0, "data": {"path": str(tmp / "data")},
                 "model": {"mode": "implicit", "hidden": [32, 16]}, "eval": {"every": 0},
                 "federation": {"strategy": "personalfr", "rounds": rounds, "fraction": 0.5}}
            if secure:
                d["privacy"] = {"secure_aggregation": True, "min_clients": 5}
            work = tmp / ("secure" if secure else "plain")
            work.mkdir()
            (work / "cfg.yaml").write_text(yaml.safe_dump(d))
            with LocalFederation(work, n_nodes) as lf:
                lf.start_superlink()
                for i in range(n_nodes):
                    lf.start_node(i)
                r = lf.run({"job-config": str(work / "cfg.yaml"), "run-dir": str(work / "run"), "min-nodes": n_nodes,
                            "wait-s": 300, "round-timeout": 300, "capture-dir": str(work / "capture")}, timeout=1200)
            if r.returncode != 0:
                raise RuntimeError(f"deployed capture run failed: {(work / 'logs/flwr-run.log').read_text()[-2000:]}")
            cfg = parse_config(d)
            data, split = prepare_data(cfg)
            fed = build_federation(cfg, data, split)
            truth = _truth(fed)
            seen = np.zeros(truth.shape)
            took_part = np.zeros(truth.shape[0], bool)
            wire = 0
            for f in sorted((work / "capture").glob("round-*.safetensors")):
                a = load_arrays(f)
                for j, u in enumerate(a["users"].tolist()):
                    took_part[u] = True
                    if secure:
                        seen[u] = a["sealed_sizes"][j].sum()          # the operator's only per-user signal
                        wire += int(a["sealed_sizes"][j].sum())
                    else:
                        seen[u, a["item_ids"][a["offsets"][j]:a["offsets"][j + 1]]] = 1.0
            out.append(["secure aggregation" if secure else "plain", int(took_part.sum()),
                        round(attacks.membership_auc_items(seen[took_part], truth[took_part]), 3),
                        round(attacks.precision_at_size(seen[took_part], truth[took_part]), 3)])
    return out


def engine_speed(data_dir: Path, rounds: int = 40) -> list:
    """Client updates per second of the in-process engine, plain vs secure, both shipped configs."""
    out = []
    for mode in ("implicit", "explicit"):
        speeds = []
        for secure in (False, True):
            cfg = _cfg(data_dir, mode, None, secure, 1)
            data, split = prepare_data(cfg)
            fed = build_federation(cfg, data, split)
            for _ in range(3):
                fed.run_round()
            t0, n = time.perf_counter(), 0
            for _ in range(rounds):
                n += fed.run_round().participants
            speeds.append(n / (time.perf_counter() - t0))
        out.append([mode, round(speeds[0]), round(speeds[1]), round(speeds[1] / speeds[0], 2)])
    return out


def privacy_section(data_dir: Path, rounds: int | None = None) -> str:
    from fedrec.bench.suite import _table

    rows, rating_rows, info = bench_privacy_attacks(data_dir, rounds)
    md = ("Each attacker keeps everything its role sees during a whole training job (the shipped config's "
          f"rounds: implicit {info['implicit']['rounds']}, explicit {info['explicit']['rounds']}). Membership "
          "truth: each user's training items. *Per-item AUC*: for each item, do the scores rank its holders "
          "above the other users (an attacker knowing only item popularity gets 0.5); *per-user AUC* and "
          "*precision at |S_u|*: do they rank a user's items above the other items (popularity alone gets "
          f"{info['implicit']['user_prior']:.3f} and {info['implicit']['prec_prior']:.3f} on implicit). "
          "*Linkage*: with client ids stripped, the share of clients matched to their own earlier message. "
          "Accuracy is the job's test figure (NDCG@10 implicit, RMSE explicit) under that aggregation. "
          "One aggregator's per-item AUC comes from the padded key counts alone (heavier users hold more "
          "items); its per-user AUC from expanding 8 real clients' keys over the catalogue.\n\n")
    md += _table("Membership inference and linkage by a curious party, ml-100k",
                 ["job", "attacker", "per-item AUC", "per-user AUC", "precision@|S_u|", "linkage",
                  "test accuracy", "KB sent / client / round", "client updates / s (bench loop)"], rows)
    md += "\n" + _table("Rating inference (explicit job): RMSE of the ratings the attacker infers for the "
                         "70% of users it has no ratings of (least squares fitted on the 30% it has)",
                         ["attacker", "attack RMSE", "public model only RMSE", "user-mean oracle RMSE",
                          "item-mean RMSE"], rating_rows)
    md += "\n" + _table("Engine speed, client updates per second (40 rounds after 3 warm-up rounds)",
                         ["job", "plain", "secure aggregation", "ratio"], engine_speed(data_dir))
    md += "\n" + _table("The same attack on what a real SuperLink deployment's server received (synthetic "
                         "catalogue of 300 users x 200 items, 3 SuperNodes on 127.0.0.1, 3 rounds, half the "
                         "users per round; messages kept by the ServerApp's capture-dir)",
                         ["messages", "users seen", "per-item AUC", "precision@|S_u|"], deployed_capture())
    t = protocol_timing(data_dir)
    md += (f"\nThe real protocol at ml-100k size (implicit, {t['rows']:.0f} rows per client padded to "
           f"{t['padded']:.0f} keys): a client builds and seals its two payloads in {t['client_s'] * 1e3:.1f} ms; "
           f"an aggregator opens one in {t['open_s'] * 1e3:.2f} ms and expands its keys over the 1,682-item "
           f"catalogue in {t['expand_s']:.2f} s (one core), which bounds a deployed secure round at about "
           f"{t['expand_s'] * 94 / 60:.1f} min per aggregator for 94 clients.\n")
    return md
