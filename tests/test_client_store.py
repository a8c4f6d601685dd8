"""The simulator's packed client state (federation.engine.state.ClientStore) and the engine's fast paths."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from federation.engine.cohort import cohort_pattern, sampled_scores, train_cohort
from federation.engine.local_sgd import SGDConfig
from federation.simulation import Federation, FedSettings
from federation.engine.state import ENC_SCALE, ENC_SHIFT, ClientStore, make_cohorts
from recsys.models.autoencoder import (AEShape, dropout_keep, dropout_keep_steps, init_params, rows_kept,
                                      rows_kept_steps)
from recsys.splits import ratio_split


def _store(dtype=torch.float64):
    # 3 users with 2, 0 and 3 entries over 5 items; encoder inputs x are the data.
    train = sp.csr_matrix((np.array([2.0, 0.5, 1.0, 3.0, 4.0]), np.array([0, 3, 1, 2, 4]),
                           np.array([0, 2, 2, 5])), shape=(3, 5))
    init = init_params(AEShape(5, h1=4, h2=2), seed=0, dtype=dtype)
    return ClientStore(train, init, ("enc_in", "enc_W2"), dtype), train, init


def test_encoder_rows_in_affine_form_by_hand():
    st, train, init = _store()
    (c,) = make_cohorts(np.array([0, 2]), train, 8, 100, torch.device("cpu"), torch.float64)
    W0 = init["enc_in"]
    torch.testing.assert_close(st.gather("enc_in", c, torch.float64), W0[[0, 3, 1, 2, 4]])
    g = torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)   # (B, H1)
    st.update_encoder_rows(c, 0.9, g)
    st.update_encoder_rows(c, 0.5, 2 * g)
    # two rounds by hand: row <- 0.9 row + x g, then row <- 0.5 row + x 2g
    x = torch.tensor([2.0, 0.5, 1.0, 3.0, 4.0], dtype=torch.float64)
    gg = g[[0, 0, 1, 1, 1]]
    want = 0.5 * (0.9 * W0[[0, 3, 1, 2, 4]] + x[:, None] * gg) + x[:, None] * 2 * gg
    torch.testing.assert_close(st.gather("enc_in", c, torch.float64), want)
    torch.testing.assert_close(st.full("enc_in"), want)
    # the encoder input sum_i x_i row_i, from (B, H1) numbers, equals the rows' own sum
    sums = torch.stack([(x[:2, None] * want[:2]).sum(0), (x[2:, None] * want[2:]).sum(0)])
    torch.testing.assert_close(st.encoder_input(c, torch.float64), sums)
    # a full write (the reference engine's) restarts the affine part and keeps the sums right
    rows = torch.arange(20, dtype=torch.float64).view(5, 4)
    st.scatter("enc_in", c, rows)
    assert torch.equal(st.tensors[ENC_SCALE], torch.ones(3, dtype=torch.float64))
    assert torch.equal(st.tensors[ENC_SHIFT], torch.zeros(3, 4, dtype=torch.float64))
    torch.testing.assert_close(st.full("enc_in"), rows)
    torch.testing.assert_close(st.encoder_input(c, torch.float64),
                               torch.stack([(x[:2, None] * rows[:2]).sum(0), (x[2:, None] * rows[2:]).sum(0)]))


def test_load_checks_shapes_and_accepts_state_saved_without_the_affine_part():
    st, train, _ = _store()
    (c,) = make_cohorts(np.array([0, 2]), train, 8, 100, torch.device("cpu"), torch.float64)
    st.update_encoder_rows(c, 0.8, torch.ones(2, 4, dtype=torch.float64))
    saved = {k: v.clone() for k, v in st.tensors.items()}
    rows = st.full("enc_in").clone()
    other, _, _ = _store()
    other.load(saved)
    torch.testing.assert_close(other.full("enc_in"), rows)
    torch.testing.assert_close(other.encoder_input(c, torch.float64), st.encoder_input(c, torch.float64))
    old = {"enc_in": rows, "enc_W2": saved["enc_W2"]}            # an older state file: rows in full
    other.load(old)
    torch.testing.assert_close(other.full("enc_in"), rows)
    torch.testing.assert_close(other.encoder_input(c, torch.float64), st.encoder_input(c, torch.float64))
    before = {k: v.clone() for k, v in other.tensors.items()}
    with pytest.raises(ValueError, match="enc_W2 has shape"):
        other.load({**saved, "enc_W2": torch.zeros(3, 2, 3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="enc_W2 is missing"):
        other.load({"enc_in": rows})
    assert all(torch.equal(before[k], other.tensors[k]) for k in before)    # nothing changed


def test_work_buffer_gather_and_commit_in_place(tiny_data):
    """Per-client matrices gathered into the store's reusable buffer and updated in place give the
    same state as the out-of-place path, and a committed result refuses to read overwritten values."""
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode="explicit")
    feds = [Federation(shape, FedSettings(strategy="local", fraction=0.5, seed=3), train, dtype=torch.float64)
            for _ in range(2)]
    users = feds[0].sample(0)
    (c,) = feds[0].cohorts(users)
    moved = feds[0].store.full("enc_W2").clone()
    results = []
    for f, in_place in zip(feds, (False, True)):
        res = train_cohort(shape, f.strategy, c, f.global_p, f.store, SGDConfig(), 0.1, 3, 0, 0, torch.float64,
                           in_place=in_place)
        results.append(res)
        if in_place:
            assert res.work >= {"enc_W2", "dec_W1"}
            res.commit(f.store, f.strategy.personal)
        else:
            for k in f.strategy.personal:
                f.store.scatter(k, c, res.value(k))
    for k in feds[0].store.keys:
        torch.testing.assert_close(feds[1].store.full(k), feds[0].store.full(k), atol=1e-12, rtol=0)
    assert (feds[0].store.full("enc_W2") - moved).abs().max() > 1e-4      # training moved it
    with pytest.raises(RuntimeError, match="overwritten"):
        results[1].value("enc_W2")


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_fused_kernel_writes_the_personal_layer_in_place(tiny_data, mode):
    """personalfr in place: the fused kernel writes each client's trained enc_W2 into the store itself
    (result.written), equal to the out-of-place value; commit skips it and value refuses it."""
    from federation.engine import kernels
    if not kernels.available(torch.float64, "cpu"):
        pytest.skip("numba not installed")
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode=mode)
    feds = [Federation(shape, FedSettings(fraction=0.5, seed=3), train, dtype=torch.float64) for _ in range(2)]
    (c,) = feds[0].cohorts(feds[0].sample(0))
    before = feds[1].store.full("enc_W2").clone()
    out, inp = (train_cohort(shape, f.strategy, c, f.global_p, f.store, SGDConfig(), 0.1, 3, 0, 0, torch.float64,
                             in_place=ip) for f, ip in zip(feds, (False, True)))
    assert inp.written == {"enc_W2"} and not out.written
    want = out.value("enc_W2")                                                  # (B, H2, H1)
    torch.testing.assert_close(feds[1].store.full("enc_W2")[c.users], want, atol=1e-12, rtol=0)
    others = np.setdiff1d(np.arange(train.shape[0]), c.users.numpy())
    assert torch.equal(feds[1].store.full("enc_W2")[others], before[others])   # only the cohort's rows
    assert (want - before[c.users]).abs().max() > 1e-4
    with pytest.raises(RuntimeError, match="wrote the trained values"):
        inp.value("enc_W2")
    inp.commit(feds[1].store, feds[1].strategy.personal)                          # no second update
    torch.testing.assert_close(feds[1].store.full("enc_W2")[c.users], want, atol=1e-12, rtol=0)


def test_sampled_scores_match_the_dense_product_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    train = sp.random(6, 9, density=0.4, format="csr", random_state=1)
    train.sort_indices()
    (c,) = make_cohorts(np.arange(6), train, 8, 100, torch.device("cpu"), torch.float64)
    h = torch.randn(c.size, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = sampled_scores(h, W, cohort_pattern(c, 9, torch.float64))
    want = (h @ W.T)[c.seg, c.items]
    torch.testing.assert_close(y, want)
    w = torch.randn(len(y), generator=g, dtype=torch.float64)
    (gy,) = torch.autograd.grad((y * w).sum(), h)
    (gw,) = torch.autograd.grad((want * w).sum(), h)
    torch.testing.assert_close(gy, gw)


def test_masks_for_all_steps_equal_the_per_step_masks():
    users = torch.tensor([0, 5, 17, 123_456, 2**31 + 7])
    m = dropout_keep_steps(4, 9, users, range(5), 32, 0.7)
    assert m.shape == (5, 5, 32)
    for s in range(5):
        assert torch.equal(m[s], dropout_keep(4, 9, users, s, 32, 0.7))
    r = rows_kept_steps(4, 9, users, [1, 3], 0.4)
    assert torch.equal(r[0], rows_kept(4, 9, users, 1, 0.4)) and torch.equal(r[1], rows_kept(4, 9, users, 3, 0.4))
    dropped = float(dropout_keep_steps(0, 0, torch.arange(2000), [0], 16, 0.7).eq(0).float().mean())
    assert dropped == pytest.approx(0.7, abs=0.02)


def test_a_checkpoint_from_before_the_affine_part_still_loads(tiny_data, tmp_path):
    """Runs saved when client.enc_in held the rows in full (no client.enc_in.scale/.shift) load and
    score the same; a checkpoint with only one of the two keys is refused."""
    from safetensors.torch import save_file

    from federation.runs.jobs import _load_checkpoint
    from recsys.errors import ManifestError
    from recsys.io import sha256_file, write_json

    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode="explicit")

    def fed():
        return Federation(shape, FedSettings(fraction=0.5, seed=3), train)
    a = fed()
    for _ in range(2):
        a.run_round()
    old = {k: v for k, v in a.state_tensors().items() if k not in (f"client.{ENC_SCALE}", f"client.{ENC_SHIFT}")}
    old["client.enc_in"] = a.store.full("enc_in")

    def write(tensors):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "checkpoint.safetensors"),
                  metadata={"round": "2"})
        write_json(tmp_path / "checkpoint.json", {"round": 2, "sha256": sha256_file(tmp_path / "checkpoint.safetensors")})
    write(old)
    b = fed()
    _load_checkpoint(tmp_path, b)
    users = np.arange(tiny_data.n_users)
    torch.testing.assert_close(b.user_scores(users), a.user_scores(users), atol=1e-5, rtol=0)
    write({**old, f"client.{ENC_SCALE}": a.store.tensors[ENC_SCALE]})
    with pytest.raises(ManifestError, match="shapes do not match"):
        _load_checkpoint(tmp_path, fed())
