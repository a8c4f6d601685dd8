"""The numba per-client products (federation/engine/kernels.py) against their torch versions."""
import pytest
import torch

from federation.engine import kernels
from federation.engine.local_sgd import SGDConfig
from federation.simulation import Federation, FedSettings
from recsys.models.autoencoder import AEShape
from recsys.splits import ratio_split

pytestmark = pytest.mark.skipif(kernels._kernels() is None, reason="numba not installed")

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _case(dtype, R=11, B=6, O=5, I=37, S=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(R, O, I, generator=g, dtype=dtype)
    index = torch.randperm(R, generator=g)[:B]                               # distinct rows, any order
    return (src, index, torch.randn(B, I, generator=g, dtype=dtype), torch.randn(B, O, generator=g, dtype=dtype),
            torch.randn(B, O, S, generator=g, dtype=dtype), torch.randn(B, S, I, generator=g, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_products_match_torch_for_buffers_and_rows(dtype):
    src, index, h, d, _, _ = _case(dtype)
    rows = kernels.Rows(src, index)
    dense = src[index]
    by_hand = torch.stack([dense[b] @ h[b] for b in range(len(index))])    # (B, O)
    for P in (dense, rows):
        torch.testing.assert_close(kernels.bmv(P, h), by_hand, atol=TOL[dtype], rtol=0)
        torch.testing.assert_close(kernels.bmv(P, h), kernels.bmv_reference(P, h), atol=TOL[dtype], rtol=0)
        torch.testing.assert_close(kernels.bmtv(P, d), torch.stack([dense[b].T @ d[b] for b in range(len(index))]),
                                   atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_rows_writes_only_the_cohort_rows(dtype):
    src, index, _, _, U, V = _case(dtype)
    expect = src.clone()
    kernels.update_rows_reference(kernels.Rows(expect, index), 0.9, U, V)
    got = src.clone()
    kernels.update_rows(kernels.Rows(got, index), 0.9, U, V)
    torch.testing.assert_close(got, expect, atol=TOL[dtype], rtol=0)
    others = torch.ones(src.shape[0], dtype=torch.bool)
    others[index] = False
    assert torch.equal(got[others], src[others])                            # untouched clients bit for bit
    torch.testing.assert_close(got[index[2]], 0.9 * src[index[2]] + U[2] @ V[2], atol=TOL[dtype], rtol=0)


def test_autograd_and_odd_inputs_take_the_torch_path():
    src, index, h, _, _, _ = _case(torch.float32)
    h.requires_grad_(True)
    out = kernels.bmv(kernels.Rows(src, index), h)
    out.sum().backward()                                                    # differentiable: torch.bmm
    torch.testing.assert_close(h.grad, src[index].sum(1))
    strided = src.transpose(1, 2).contiguous().transpose(1, 2)              # same values, not contiguous
    torch.testing.assert_close(kernels.bmv(kernels.Rows(strided, index), h.detach()), out.detach())
    assert not kernels.available(torch.float16, "cpu") and not kernels.available(torch.float32, "cuda")


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_engine_without_numba_gives_the_same_round(tiny_data, mode, monkeypatch):
    """The fallback (torch.bmm, gathered buffers) and the kernels train the same clients alike."""
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, dropout=0.5, mode=mode)
    cfg = FedSettings(rounds=3, fraction=0.5, local_epochs=5, seed=3, max_cohort_clients=4, sgd=SGDConfig())
    fast = Federation(shape, cfg, train)
    for _ in range(2):
        fast.run_round()
    monkeypatch.setattr(kernels, "_kernels", lambda: None)
    slow = Federation(shape, cfg, train)
    for _ in range(2):
        slow.run_round()
    for k in fast.global_p:
        torch.testing.assert_close(fast.global_p[k], slow.global_p[k], atol=1e-5, rtol=0)
    for k in fast.store.keys:
        torch.testing.assert_close(fast.store.full(k), slow.store.full(k), atol=1e-5, rtol=0)
    assert (fast.store.full("enc_W2") - Federation(shape, cfg, train).store.full("enc_W2")).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_item_sums_match_the_reference_and_a_hand_sum(dtype):
    g = torch.Generator().manual_seed(1)
    B, S, D, N, T = 4, 3, 6, 9, 15
    seg = torch.sort(torch.randint(0, B, (T,), generator=g)).values
    items = torch.randint(0, N - 1, (T,), generator=g)                       # item N-1 held by nobody
    vals, H = torch.randn(T, S, generator=g, dtype=dtype), torch.randn(B, S, D, generator=g, dtype=dtype)
    order = torch.argsort(items, stable=True)
    crow = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(items, minlength=N).cumsum(0)])
    base = torch.randn(N, D, generator=g, dtype=dtype)
    got = base.clone()
    assert kernels.item_sums(order, crow, seg, vals, H, got)                 # adds into got in place
    torch.testing.assert_close(got - base, kernels.item_sums_reference(items, seg, vals, H, N),
                               atol=TOL[dtype], rtol=0)
    got = torch.zeros(N, D, dtype=dtype)
    assert kernels.item_sums(order, crow, seg, vals, H, got)
    t = int(torch.nonzero(items == items[0])[0])
    hand = sum(vals[u, s] * H[seg[u], s] for u in range(T) if items[u] == items[t] for s in range(S))
    torch.testing.assert_close(got[items[t]], hand, atol=TOL[dtype], rtol=0)
    assert torch.equal(got[N - 1], torch.zeros(D, dtype=dtype))


@pytest.mark.parametrize("p", [0.5, 0.8, 0.3])
def test_dropout_masks_are_the_models_bit_for_bit(p):
    from recsys.models.autoencoder import dropout_keep_steps
    users = torch.tensor([0, 5, 942, 17, 2_147_483_646, 123_456_789, 2**40 + 3])
    for seed, rnd in ((0, 0), (3, 41), (12345, 499)):
        got = kernels.dropout_keep_steps(seed, rnd, users, range(5), 128, p)
        want = dropout_keep_steps(seed, rnd, users, range(5), 128, p)
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert abs(float((got == 0).float().mean()) - p) < 0.05                # masks drop a fraction p


def test_vector_exp_is_within_two_ulp_and_float64_is_numpys():
    import numba as nb
    import numpy as np
    exp = kernels.numba_modules()._exp.exp

    @nb.njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = exp(x[i])

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-87, 88, 200_000), -rng.exponential(3, 100_000),
                        [0.0, -1e-7, 1e-7, -86.99, 87.99, np.log(2), -np.log(2) / 2]])
    x32 = x.astype(np.float32)
    got = np.empty_like(x32)
    apply(x32, got)
    want = np.exp(x32.astype(np.float64))                                    # the exact value, rounded once
    ulp = np.abs(got - want) / want / 2.0 ** -24
    assert ulp.max() < 2.0 and got[x32 == 0][0] == 1.0
    sat = np.empty(3, np.float32)
    apply(np.array([-200, -88, 200], np.float32), sat)                       # clamped, never inf, 0 or NaN
    assert np.isfinite(sat).all() and 0 < sat[0] < 2e-38 and sat[2] > 1e38
    got64 = np.empty_like(x)
    apply(x, got64)
    np.testing.assert_allclose(got64, np.exp(x), rtol=4e-16, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampled_dots_and_pattern_products_match_torch_sparse(dtype):
    g = torch.Generator().manual_seed(2)
    B, N, D = 5, 12, 7
    dense_mask = torch.rand(B, N, generator=g) < 0.4
    dense_mask[3] = False                                                    # a row without entries
    pattern = dense_mask.to(dtype).to_sparse_csr()
    h, W = torch.randn(B, D, generator=g, dtype=dtype), torch.randn(N, D, generator=g, dtype=dtype)
    vals = torch.randn(int(dense_mask.sum()), generator=g, dtype=dtype)
    got = kernels.sampled_dots(pattern, h, W)
    torch.testing.assert_close(got, (h @ W.T)[dense_mask], atol=TOL[dtype], rtol=0)   # row-major = CSR order
    torch.testing.assert_close(got, kernels.sampled_dots_reference(pattern, h, W), atol=TOL[dtype], rtol=0)
    V = torch.zeros(B, N, dtype=dtype)
    V[dense_mask] = vals
    got = kernels.pattern_mm(pattern, vals, W)
    torch.testing.assert_close(got, V @ W, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(got, kernels.pattern_mm_reference(pattern, vals, W), atol=TOL[dtype], rtol=0)
    assert torch.equal(got[3], torch.zeros(D, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c0", [0.0, 1.0])
def test_add_lowrank_matches_the_reference_and_a_hand_sum(dtype, c0):
    g = torch.Generator().manual_seed(2)
    B, S, s, D, E = 5, 4, 3, 7, 6
    K, v = torch.randn(B, s, generator=g, dtype=dtype), torch.randn(B, D, generator=g, dtype=dtype)
    U, W = torch.randn(B, S, D, generator=g, dtype=dtype), torch.randn(B, S, E, generator=g, dtype=dtype)
    base = torch.randn(B, E, generator=g, dtype=dtype)
    want = kernels.add_lowrank_reference(base, K, U, v, c0, W, s)
    got = kernels.add_lowrank_(base.clone(), K, U, v, c0, W, s)
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=0)
    hand = base[1] + sum(K[1, j] * (float(U[1, j] @ v[1]) + c0) * W[1, j] for j in range(s))   # steps < s only
    torch.testing.assert_close(got[1], hand, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("mode,ranges", [("explicit", None), ("implicit", None), ("implicit", 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_local_steps_match_the_torch_step_loop(tiny_data, mode, ranges, dtype, monkeypatch):
    """local_steps_explicit / local_steps_implicit (one kernel per round) train the same clients as
    train_cohort's torch loop over steps, which they replace. ranges: the implicit softmax split into
    that many item ranges (30 items: 1 by default), combined per client across ranges."""
    if ranges is not None:
        monkeypatch.setattr(kernels, "item_ranges", lambda n_items, threads: ranges)
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, dropout=0.5, mode=mode)
    cfg = FedSettings(rounds=3, fraction=0.5, local_epochs=5, seed=3, max_cohort_clients=4, sgd=SGDConfig())
    fused = {n: getattr(kernels, n) for n in ("local_steps_explicit", "local_steps_implicit")}
    calls = []
    for n, f in fused.items():
        monkeypatch.setattr(kernels, n, lambda *a, f=f: calls.append(1) or f(*a))
    fast = Federation(shape, cfg, train, dtype=dtype)
    for _ in range(2):
        fast.run_round()
    assert len(calls) >= 2                                                  # the fused path ran
    for n in fused:
        monkeypatch.setattr(kernels, n, lambda *a: False)
    slow = Federation(shape, cfg, train, dtype=dtype)
    for _ in range(2):
        slow.run_round()
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    for k in fast.global_p:
        torch.testing.assert_close(fast.global_p[k], slow.global_p[k], atol=tol, rtol=0)
    for k in fast.store.keys:
        torch.testing.assert_close(fast.store.full(k), slow.store.full(k), atol=tol, rtol=0)
    moved = (fast.store.full("enc_W2") - Federation(shape, cfg, train, dtype=dtype).store.full("enc_W2")).abs().max()
    assert moved > 1e-4


def test_single_threaded_blas_sets_one_thread_and_restores():
    from threadpoolctl import threadpool_info, threadpool_limits
    kernels._blas_controller()                       # loads scipy's OpenBLAS (numba's np.dot), so it is listed
    counts = lambda: {d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}  # noqa: E731
    with threadpool_limits(limits=2, user_api="blas"):   # a count other than 1, so a missed restore shows
        before = counts()
        with kernels._single_threaded_blas():
            inside = counts()
        after = counts()
    assert set(before.values()) == {2}
    assert inside.keys() == before.keys() and set(inside.values()) == {1}
    assert after == before


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decoder_row_sums_match_the_torch_row_sums_and_the_trained_rows(tiny_data, mode, dtype, monkeypatch):
    """kernels.decoder_row_sums (dec_out and dec_ob in one pass) gives FactoredResult.row_sums' torch
    results, and both are the holder-weighted sums of the clients' trained rows."""
    from federation.engine.cohort import train_cohort
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, dropout=0.5, mode=mode)
    fed = Federation(shape, FedSettings(fraction=0.75, seed=3, sgd=SGDConfig()), train, dtype=dtype)
    (c,) = fed.cohorts(fed.sample(0))
    res = train_cohort(shape, fed.strategy, c, fed.global_p, fed.store, SGDConfig(), 0.1, 3, 0, 0, dtype)
    w = torch.rand(c.size, generator=torch.Generator().manual_seed(0), dtype=dtype) + 0.5
    calls = []
    f = kernels.decoder_row_sums
    monkeypatch.setattr(kernels, "decoder_row_sums", lambda *a: calls.append(1) or f(*a))
    got = res.row_sums_all(["dec_out", "dec_ob"], w, shape.n_items)
    assert calls
    monkeypatch.setattr(kernels, "decoder_row_sums", lambda *a: None)
    want = res.row_sums_all(["dec_out", "dec_ob"], w, shape.n_items)
    wt = w.index_select(0, c.seg)                                            # (T,) each entry's client weight
    tol = TOL[dtype]
    for k in ("dec_out", "dec_ob"):
        by_hand = torch.zeros_like(want[k][0]).index_add_(0, c.items, wt.view(-1, *([1] * (want[k][0].dim() - 1)))
                                                          * res.value(k))
        for pair in (got, want):
            torch.testing.assert_close(pair[k][0], by_hand, atol=tol, rtol=0)
            torch.testing.assert_close(pair[k][1], torch.zeros(shape.n_items, dtype=dtype).index_add_(0, c.items, wt),
                                       atol=tol, rtol=0)
    assert got["dec_out"][1] is not got["dec_ob"][1]                       # callers add into them in place


@pytest.mark.parametrize("with_f", [False, True])
def test_quantized_sums_equal_their_torch_references_bit_for_bit(with_f):
    """Secure aggregation's fused fixed-point sums: the integers must be identical (not close), including
    values on rounding ties and beyond the clamp."""
    from federation.engine import kernels

    g = torch.Generator().manual_seed(0)
    X = torch.randn(7, 50, generator=g) * 0.01
    X[0, :4] = torch.tensor([1e6, -1e6, 0.5 / 2 ** 16, 1.5 / 2 ** 16])      # clamp, clamp, ties to even
    G = torch.randn(50, generator=g) * 0.01
    G[:4] = 0
    f = torch.rand(7, generator=g) if with_f else None
    want = kernels.quantized_sum_reference(X, G, f, 16, 2 ** 21 - 1)
    got = kernels.quantized_sum(X, G, f, 16, 2 ** 21 - 1)
    assert torch.equal(got, want) and want[0] != 0
    V = torch.randn(40, 9, generator=g) * 0.01
    Gr = torch.randn(12, 9, generator=g) * 0.01
    items = torch.randint(0, 12, (40,), generator=g)
    seg = torch.sort(torch.randint(0, 7, (40,), generator=g)).values
    assert torch.equal(kernels.quantized_rows(V, Gr, items, f, seg, 16, 2 ** 21 - 1, 12),
                       kernels.quantized_rows_reference(V, Gr, items, f, seg, 16, 2 ** 21 - 1, 12))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_from_factors_matches_the_reference(dtype):
    g = torch.Generator().manual_seed(1)
    P0 = torch.randn(30, 16, generator=g, dtype=dtype)
    seg = torch.sort(torch.randint(0, 5, (40,), generator=g)).values
    items = torch.randint(0, 30, (40,), generator=g)
    KE = torch.randn(40, 3, generator=g, dtype=dtype)
    H = torch.randn(5, 3, 16, generator=g, dtype=dtype)
    want = kernels.rows_from_factors_reference(P0, items, seg, KE, H, 0.9)
    got = kernels.rows_from_factors(P0, items, seg, KE, H, 0.9)
    torch.testing.assert_close(got, want, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    hand = 0.9 * P0[items[7]] + sum(KE[7, s] * H[seg[7], s] for s in range(3))
    torch.testing.assert_close(got[7], hand, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
