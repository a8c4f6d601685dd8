"""Secure aggregation (federation.privacy): the DPF, the ring, the sealed channel, the two-aggregator
protocol, its refusals, and that the engine's clear-text ring sums equal the protocol's bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from federation.privacy import channel, dpf, secagg as sa
from federation.privacy.fixedpoint import decode, from_ring, quantize, ring_add, to_ring


def _point_sums(alphas, betas, n):
    want = np.zeros((n, betas.shape[1]), np.uint64)
    for a, b in zip(alphas, betas):
        want[a] = (want[a] + b) & 0xFFFFFFFF
    return want.astype(np.uint32)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 13, 100])
def test_dpf_shares_add_up_to_the_point_functions(n):
    rng = np.random.default_rng(n)
    alphas = rng.integers(0, n, 6)
    betas = rng.integers(0, 2 ** 32, (6, 5), dtype=np.uint64).astype(np.uint32)
    k0, k1 = dpf.gen(alphas, betas, n)
    assert k0.shape == (6, dpf.key_bytes(n, 5))
    total = ring_add(dpf.eval_full_sum(0, k0, n, 5), dpf.eval_full_sum(1, k1, n, 5))
    np.testing.assert_array_equal(total, _point_sums(alphas, betas, n))


def test_dpf_hand_case_one_key_alone_looks_random():
    # f(x) = [7, 1] at x = 2 over a domain of 4: the shares add up to it, and neither share shows the
    # point: party 0's share at x = 2 is not beta and its other outputs are not zero.
    k0, k1 = dpf.gen(np.array([2]), np.array([[7, 1]], np.uint32), 4)
    s0, s1 = dpf.eval_full_sum(0, k0, 4, 2), dpf.eval_full_sum(1, k1, 4, 2)
    np.testing.assert_array_equal(ring_add(s0, s1), [[0, 0], [0, 0], [7, 1], [0, 0]])
    assert (s0 != 0).all() and (s1 != 0).all()
    # Keys for two different points share no bytes beyond chance: the root seeds are fresh randomness.
    j0, _ = dpf.gen(np.array([1]), np.array([[7, 1]], np.uint32), 4)
    assert not np.array_equal(j0[0, :16], k0[0, :16])
    with pytest.raises(ValueError):
        dpf.gen(np.array([4]), np.array([[1, 1]], np.uint32), 4)
    with pytest.raises(ValueError):
        dpf.eval_full_sum(0, k0[:, :-1], 4, 2)


def test_fixed_point_sums_cancel_exactly():
    x = np.array([[0.5, -1.25], [-0.5, 3.0], [1e-6, -2.0]])
    q = quantize(x, 16, 8)
    assert q.tolist() == [[32768, -81920], [-32768, 196608], [0, -131072]]
    total = to_ring(q.sum(0))
    np.testing.assert_array_equal(decode(total, 16), [0.0, -0.25])
    # Two random shares of a value add up to it mod 2^32.
    r = np.random.default_rng(0).integers(0, 2 ** 32, 2, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(from_ring(ring_add(r, to_ring(q[0] - r.astype(np.int64)))), q[0])
    # Clamping keeps max_clients contributions inside the ring.
    assert quantize(np.array([1e9]), 16, 1024)[0] * 1024 < 2 ** 31


def test_channel_verifies_and_binds_its_context():
    key = channel.new_private_key()
    sealed = channel.seal(channel.public_bytes(key), b"rows", b"ctx")
    assert len(sealed) == len(b"rows") + channel.OVERHEAD
    assert channel.open_sealed(key, sealed, b"ctx") == b"rows"
    with pytest.raises(channel.OpenError):
        channel.open_sealed(key, sealed, b"other round")
    bad = bytearray(sealed)
    bad[-1] ^= 1
    with pytest.raises(channel.OpenError):
        channel.open_sealed(key, bytes(bad), b"ctx")
    with pytest.raises(channel.OpenError):
        channel.open_sealed(channel.new_private_key(), sealed, b"ctx")


LAY = sa.Layout(n_items=37, h1=4, dense=6)
SET = sa.SecAggSettings(frac_bits=16, min_clients=2, pad_min=4)


def _clients(n_clients=5, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for u in range(n_clients):
        R = int(rng.integers(1, 9))
        ids = np.sort(rng.choice(LAY.n_items, R, replace=False))
        out[100 + u] = (ids, rng.normal(0, 0.1, (R, LAY.h1 + 1)), rng.normal(0, 0.1, LAY.dense))
    return out


def _aggregators(users, rnd=3):
    keys = [channel.new_private_key(), channel.new_private_key()]
    aggs = [sa.Aggregator(p, keys[p], LAY, SET, "run-x") for p in (0, 1)]
    for a in aggs:
        a.open_round(rnd, users)
    return aggs, tuple(channel.public_bytes(k) for k in keys)


def _plain(clients, users):
    ids = np.concatenate([clients[u][0] for u in users])
    rows = np.concatenate([clients[u][1] for u in users])
    dense = np.stack([clients[u][2] for u in users])
    return sa.plain_ring_sums(LAY.n_items, ids, rows, dense, SET)


def test_two_aggregators_reveal_exactly_the_plain_ring_sums():
    clients = _clients()
    aggs, pubs = _aggregators(clients)
    sizes = set()
    for u, (ids, rows, dense) in clients.items():
        sealed = sa.seal_payloads(pubs, "run-x", 3, u, sa.client_payloads(ids, rows, dense, LAY, SET))
        assert sum(map(len, sealed)) == int(sa.upload_bytes(len(ids), LAY, SET))
        sizes.add((len(ids) <= 4, len(sealed[0])))
        for p in (0, 1):
            aggs[p].receive(u, sealed[p])
    assert len(sizes) <= 2                        # an aggregator sees only the padded size
    users = aggs[0].accepted() & aggs[1].accepted()
    rows, dense = sa.combine(aggs[0].share(users), aggs[1].share(users))
    want = _plain(clients, sorted(users))
    np.testing.assert_array_equal(rows, want[0])
    np.testing.assert_array_equal(dense, want[1])
    # Either aggregator's share alone is not the sum (it is a random-looking ring array).
    assert not np.array_equal(aggs[0].share(users)[0], want[0])
    rev = sa.reveal(rows, dense, len(users), SET)
    counts = np.bincount(np.concatenate([c[0] for c in clients.values()]), minlength=LAY.n_items)
    np.testing.assert_array_equal(rev.counts, np.where(counts >= 2, counts, 0))
    assert rev.withheld == int(((counts > 0) & (counts < 2)).sum())
    exact = np.zeros((LAY.n_items, LAY.h1 + 1))
    for ids, r, _ in clients.values():
        exact[ids] += r
    held = rev.counts > 0
    np.testing.assert_allclose(rev.row_sums[held], exact[held], atol=len(clients) * 2 ** -16)
    assert (rev.row_sums[~held] == 0).all()
    np.testing.assert_allclose(rev.dense_sum, sum(c[2] for c in clients.values()), atol=len(clients) * 2 ** -16)


def test_dropped_and_rejected_clients_are_left_out_unrevealed():
    clients = _clients()
    aggs, pubs = _aggregators(clients)
    users = sorted(clients)
    for u in users:
        sealed = sa.seal_payloads(pubs, "run-x", 3, u, sa.client_payloads(*clients[u], LAY, SET))
        aggs[0].receive(u, sealed[0])
        if u != users[1]:                        # users[1] dropped before B got its share
            aggs[1].receive(u, sealed[1])
    both = aggs[0].accepted() & aggs[1].accepted()
    assert both == set(users) - {users[1]}
    rows, dense = sa.combine(aggs[0].share(both), aggs[1].share(both))
    want = _plain(clients, sorted(both))
    np.testing.assert_array_equal(rows, want[0])
    np.testing.assert_array_equal(dense, want[1])


def test_bad_payloads_are_refused_with_a_reason():
    clients = _clients(3)
    aggs, pubs = _aggregators(clients)
    u = 100
    plain = sa.client_payloads(*clients[u], LAY, SET)
    sealed = sa.seal_payloads(pubs, "run-x", 3, u, plain)
    with pytest.raises(sa.RejectedShare, match="not a client"):
        aggs[0].receive(999, sealed[0])
    with pytest.raises(sa.RejectedShare, match="does not verify"):
        aggs[0].receive(101, sealed[0])                     # another user's payload under u's id
    with pytest.raises(sa.RejectedShare, match="does not verify"):
        aggs[1].receive(u, sealed[0])                       # A's payload sent to B
    old = sa.seal_payloads(pubs, "run-x", 2, u, plain)      # last round's message, replayed
    with pytest.raises(sa.RejectedShare, match="does not verify"):
        aggs[0].receive(u, old[0])
    short = channel.seal(pubs[0], plain[0][:-3], sa.aad("run-x", 3, u, 0))
    with pytest.raises(sa.RejectedShare, match="does not fit"):
        aggs[0].receive(u, short)
    aggs[0].receive(u, sealed[0])
    with pytest.raises(sa.RejectedShare, match="replay"):
        aggs[0].receive(u, sealed[0])
    assert aggs[0].accepted() == {u}
    with pytest.raises(sa.RoundRefused):
        sa.reveal(*aggs[0].share({u}), 1, SET)
    with pytest.raises(ValueError):
        sa.client_payloads(clients[u][0], clients[u][1][:, :2], clients[u][2], LAY, SET)


def test_padding_hides_the_number_of_rows():
    assert sa.padded_rows(np.array([1, 4, 16, 17, 100, 5000]), 1682, 16).tolist() == [16, 16, 16, 32, 128, 1682]
    assert sa.padded_rows(3, 5, 16) == 5


def test_aggregator_noise_has_the_dp_std_and_spares_the_count():
    s = sa.SecAggSettings(frac_bits=16, noise_std=0.3, noise_seed=1)
    lay = sa.Layout(n_items=2000, h1=30, dense=5000)
    rows, dense = sa.aggregator_noise(0, lay, s, rnd=4)
    r = decode(rows, 16)
    assert (r[:, -1] == 0).all()                                   # no count coordinate under DP
    assert abs(r[:, :-1].std() - 0.3) < 0.01 and abs(decode(dense, 16).std() - 0.3) < 0.01
    assert abs(r[:, :-1].mean()) < 0.01
    other, _ = sa.aggregator_noise(1, lay, s, rnd=4)               # the two aggregators draw independently
    assert abs(np.corrcoef(r[:, 0], decode(other, 16)[:, 0])[0, 1]) < 0.1
    again, _ = sa.aggregator_noise(0, lay, s, rnd=4)
    np.testing.assert_array_equal(again, rows)
    assert not s.counts and sa.SecAggSettings().counts
    # Under DP every row is revealed (noised), none withheld, and no counts are revealed.
    rev = sa.reveal(rows, dense, 10, s)
    assert rev.withheld == 0 and (rev.counts == 0).all()


def test_prototype_stats_under_secure_aggregation_match_the_plain_stats():
    import torch

    from federation.engine import prototypes as proto

    g = torch.Generator().manual_seed(0)
    codes = torch.tanh(torch.randn(40, 6, generator=g, dtype=torch.float64))
    C = codes[:3].clone()
    plain = proto.client_stats(codes, C)
    q = proto.secure_client_stats(codes[:25], C, 16, 1024)
    q2 = proto.secure_client_stats(codes[25:], C, 16, 1024)         # two chunks of clients, summed
    sec = proto.reveal_stats(*(a + b for a, b in zip(q, q2)), 16, 1, torch.float64)
    torch.testing.assert_close(sec.counts, plain.counts)
    torch.testing.assert_close(sec.sums, plain.sums, atol=40 * 2 ** -16, rtol=0)
    torch.testing.assert_close(sec.sq, plain.sq, atol=6 * 40 * 2 ** -16, rtol=0)
    small = int(plain.counts.argmin())
    held = proto.reveal_stats(*(a + b for a, b in zip(q, q2)), 16, int(plain.counts[small]) + 1, torch.float64)
    assert held.counts[small] == 0 and (held.sums[small] == 0).all()     # too few members: nothing revealed


@pytest.mark.parametrize("over,msg", [
    ({"federation": {"strategy": "fedavg"}}, "strategy 'fedavg' sends none"),
    ({"federation": {"weighting": "interactions"}}, "needs federation.weighting: uniform"),
    ({"content": {"enabled": True, "holder_weight": 5.0}}, "holder counts are exact"),
])
def test_secure_aggregation_config_that_cannot_apply_is_one_clear_error(over, msg):
    from federation.runs.config import parse_config
    from federation.runs.jobs import fed_settings
    from recsys.errors import ConfigError

    d = {"name": "x", "data": {"path": "data/none"}, "model": {"mode": "implicit", "hidden": [8, 4]},
         "federation": {"strategy": "personalfr", "rounds": 1}, "privacy": {"secure_aggregation": True}}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v}
    with pytest.raises(ConfigError, match=msg):
        fed_settings(parse_config(d))
    d2 = {**d, "federation": {"strategy": "personalfr", "rounds": 1}, "content": {}, "privacy":
          {"secure_aggregation": True, "dp": True, "noise_multiplier": 1.0, "clip": 0.5}}
    s = fed_settings(parse_config(d2)).secagg
    assert s.noise_std == pytest.approx(0.5) and not s.counts


@pytest.mark.parametrize("case", ["content", "persona"])
def test_extra_dense_parameters_under_secure_aggregation(tiny_data, case):
    """The content projection dec_P and Persona's user embedder are part of the dense share: the engine's
    secure sums equal the protocol's, and the revealed update moves them as a plain round does."""
    import dataclasses

    import torch

    from federation.simulation import Federation, FedSettings
    from recsys.models.autoencoder import AEShape
    from recsys.splits import ratio_split

    content = (torch.randn(tiny_data.n_items, 5, generator=torch.Generator().manual_seed(1)) if case == "content"
               else None)
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode="implicit", content_dim=5 if content is not None else 0)
    st = sa.SecAggSettings(frac_bits=24, max_clients=16, min_clients=1, pad_min=4)
    strategy = "persona" if case == "persona" else "personalfr"
    cfg = FedSettings(strategy=strategy, rounds=2, fraction=0.5, local_epochs=3, seed=2, secagg=st)
    key, extra = ("dec_P", 16 * 5) if case == "content" else ("emb_W", 2 * 16 + 16 + 8 * 2 * 16 + 8)
    a, b = (Federation(shape, cfg, train, content=content) for _ in range(2))
    plain = Federation(shape, dataclasses.replace(cfg, secagg=None), train, content=content)
    users = a.sample(0)
    rows, dense, _ = a.secure_round_sums(users, a.lr_at(0))
    msgs, _ = b.client_messages(users, b.lr_at(0))
    assert key in next(iter(msgs.values()))
    want = b.secure_ring_sums(msgs)
    np.testing.assert_array_equal(rows, want[0])
    np.testing.assert_array_equal(dense, want[1])
    assert a.secure_layout().dense == 16 * 8 + 16 + extra
    c = Federation(shape, cfg, train, content=content)
    c.run_round()
    plain.run_round()
    torch.testing.assert_close(c.global_p[key], plain.global_p[key], atol=1e-5, rtol=0)
    assert not torch.equal(c.global_p[key], Federation(shape, cfg, train, content=content).global_p[key])
