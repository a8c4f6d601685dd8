"""The strategies benchmark's bookkeeping: setting choice on valid, resumable cache, tables (no training)."""
import json

import pytest

from fedrec.bench import strategies as bs


def _rec(method, key, mode, split, seed, valid, test, **kw):
    base = {"method": method, "key": key, "strategy": method.split()[0], "options": json.loads(key.split(":", 1)[1]),
            "mode": mode, "split": split, "seed": seed, "rounds": 5, "train_s": 1.0, "updates_per_s": 100.0,
            "kb_up": 1.0, "kb_down": 2.0, "server_mb": 3.0, "client_personal_kb": 4.0, "valid": valid, "test": test}
    return {**base, **kw}


def _imp(v):
    t = {"ndcg@10": v, "recall@20": v, **{f"recall@20_{g}": v for g in ("head", "mid", "tail", "q1", "q2", "q3", "q4")}}
    return t


def test_choose_on_valid_table_on_test_and_speed_records(tmp_path):
    a, b = bs.SEARCH["feddpa"][0].key, bs.SEARCH["feddpa"][1].key
    recs = [_rec("feddpa", a, "implicit", "ratio", 0, {"ndcg@10": 0.20}, _imp(0.30)),
            _rec("feddpa", b, "implicit", "ratio", 0, {"ndcg@10": 0.25}, _imp(0.10)),
            _rec("feddpa", b, "implicit", "ratio", 1, {"ndcg@10": 0.0}, _imp(0.20)),
            {"kind": "speed", "method": "feddpa", "key": b, "mode": "implicit", "clients": 9,
             "updates_per_s": 1234.0, "date": "2026-12-06", "machine": "m"}]
    assert bs.choose(recs, "feddpa", "implicit")["key"] == b          # valid decides, not test
    assert bs.choose(recs, "feddpa", "explicit") is None
    md = bs.table(recs)
    assert "0.1500 ± 0.0707" in md                                    # seeds 0 and 1 of the chosen setting
    assert "0.3000" not in md.split("Settings searched")[0]            # the other setting is not reported on test
    assert "1,234" in md and "Client updates per second, each method alone" in md
    cache = tmp_path / "c.jsonl"
    bs._append(cache, recs[:2])
    assert bs._load(cache) == recs[:2]
    assert bs._done(bs._load(cache), a, "implicit", "ratio", 0, None)
    assert not bs._done(bs._load(cache), a, "implicit", "ratio", 1, None)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method"):
        bs.run_strategies(None, None, families=["nope"])


def test_a_diverged_setting_is_reported_and_never_chosen():
    a, b = bs.SEARCH["fedcac"][0].key, bs.SEARCH["fedcac"][1].key
    recs = [{"method": "fedcac", "key": a, "strategy": "fedcac", "options": {"tau": 0.5, "beta": 170},
             "mode": "implicit", "split": "ratio", "seed": 0, "rounds": 5, "diverged": "round 43: training diverged"},
            _rec("fedcac", b, "implicit", "ratio", 0, {"ndcg@10": 0.1}, _imp(0.1))]
    assert bs.choose(recs, "fedcac", "implicit")["key"] == b
    assert bs._done(recs, a, "implicit", "ratio", 0, None)
    assert "round 43: training diverged" in bs.table(recs)
