"""personalfr client messages: exactly what the design says leaves a client, validated on arrival,
and aggregated by the server into the same decoder as the in-process engine."""
import numpy as np
import pytest
import torch

from federation.strategies.messages import (UPDATE_KEYS, RejectedUpdate, aggregate_updates, filter_outliers,
                                 validate_update)
from federation.simulation import Federation, FedSettings
from recsys.models.autoencoder import ENCODER_KEYS, AEShape
from recsys.splits import ratio_split


def _fed(tiny_data, row_average="holders", mode="explicit"):
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode=mode)
    cfg = FedSettings(rounds=4, fraction=0.5, seed=2, row_average=row_average, server_lr=3.0)
    return Federation(shape, cfg, train), train


@pytest.mark.parametrize("row_average,mode", [("holders", "explicit"), ("participants", "implicit")])
def test_messages_aggregate_to_the_engine_result(tiny_data, row_average, mode):
    dep, train = _fed(tiny_data, row_average, mode)      # "deployment": one message per client
    sim, _ = _fed(tiny_data, row_average, mode)          # in-process engine
    users = sim.sample(0)
    msgs = [dep.client_message(int(u)) for u in users]
    new, res = aggregate_updates(dep.global_p, msgs, dep.shape, row_average, dep.cfg.server_lr)
    sim.run_round("vectorized", users)
    assert res.accepted == len(users) and not res.rejected
    for k in ("dec_W1", "dec_b1", "dec_out", "dec_ob"):
        torch.testing.assert_close(new[k], sim.global_p[k], atol=1e-5, rtol=0)
    for k in ENCODER_KEYS:                                 # the personal state evolved identically too
        torch.testing.assert_close(dep.store.full(k), sim.store.full(k), atol=1e-5, rtol=0)


def test_a_message_holds_only_what_the_design_says(tiny_data):
    fed, train = _fed(tiny_data)
    for u in fed.sample(0):
        msg = fed.client_message(int(u))
        assert set(msg) == set(UPDATE_KEYS)                                  # no encoder, no ratings, no state
        assert not set(msg) & set(ENCODER_KEYS)
        own = train.indices[train.indptr[u]:train.indptr[u + 1]]
        assert sorted(msg["item_ids"].tolist()) == sorted(own.tolist())     # rows of its own items only
        assert msg["dec_out"].shape == (len(own), fed.shape.h1)
        ratings = train.data[train.indptr[u]:train.indptr[u + 1]]
        for k, v in msg.items():                                             # no array carries the ratings
            if k != "item_ids" and np.asarray(v).shape == ratings.shape:
                assert not np.allclose(np.sort(v), np.sort(ratings))
        validate_update(msg, fed.shape)


def test_bad_messages_are_rejected_and_the_round_goes_on(tiny_data):
    fed, _ = _fed(tiny_data)
    users = fed.sample(0)
    good = [fed.client_message(int(u)) for u in users]
    bad = []
    m = dict(good[0]); m.pop("dec_b1"); bad.append((m, "missing"))
    m = dict(good[0]); m["enc_in"] = np.zeros((3, 16), np.float32); bad.append((m, "unexpected"))
    m = dict(good[0]); m["dec_out"] = m["dec_out"][:, :5]; bad.append((m, "shape"))
    m = dict(good[0]); m["item_ids"] = m["item_ids"] + 10_000; bad.append((m, "unknown item"))
    m = dict(good[0]); m["dec_ob"] = m["dec_ob"].copy(); m["dec_ob"][0] = np.nan; bad.append((m, "NaN"))
    m = dict(good[0]); m["item_ids"] = np.repeat(m["item_ids"][:1], len(m["item_ids"])); bad.append((m, "repeated"))
    for msg, why in bad:
        with pytest.raises(RejectedUpdate, match=why):
            validate_update(msg, fed.shape)
    huge = {k: (v * 1e4 if k in ("dec_out", "dec_W1") else v) for k, v in good[1].items()}
    clean, r_clean = aggregate_updates(fed.global_p, good, fed.shape)
    mixed, r_mixed = aggregate_updates(fed.global_p, good + [m for m, _ in bad] + [huge], fed.shape)
    assert r_mixed.accepted == len(good) and len(r_mixed.rejected) == len(bad) + 1
    assert "norm" in r_mixed.rejected[-1][1]
    for k in clean:
        torch.testing.assert_close(mixed[k], clean[k])


def test_filter_outliers_by_hand():
    assert filter_outliers(np.array([1.0, 2.0, 1.5, 100.0]), 10).tolist() == [True, True, True, False]
    assert filter_outliers(np.array([1.0, 50.0]), 10).tolist() == [True, True]     # too few to judge
