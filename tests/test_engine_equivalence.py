"""The vectorized closed-form cohort engine must reproduce the nn.Module/torch.optim reference."""
import numpy as np
import pytest
import torch

from federation.simulation import Federation, FedSettings
from recsys.models.autoencoder import AEShape
from recsys.splits import ratio_split


@pytest.mark.parametrize("mode", ["explicit", "implicit", "implicit-l2"])
@pytest.mark.parametrize("strategy", ["personalfr", "fedavg", "local"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_same_updates_and_aggregate(tiny_data, mode, strategy, dtype, tol):
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    mode, _, norm = mode.partition("-")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, dropout=0.5, mode=mode, input_norm=norm or "none")
    cfg = FedSettings(strategy=strategy, rounds=4, fraction=0.5, local_epochs=5, seed=3,
                      max_cohort_clients=4)      # several cohorts per round
    vec = Federation(shape, cfg, train, dtype=dtype)
    ref = Federation(shape, cfg, train, dtype=dtype)
    for _ in range(2):
        sv = vec.run_round("vectorized")
        sr = ref.run_round("reference")
        assert sv.participants == sr.participants
        assert sv.loss == pytest.approx(sr.loss, rel=1e-5)
    for k in vec.global_p:
        torch.testing.assert_close(vec.global_p[k], ref.global_p[k], atol=tol, rtol=0)
    if vec.store is not None:
        for k in vec.store.tensors:
            torch.testing.assert_close(vec.store.tensors[k], ref.store.tensors[k], atol=tol, rtol=0)
    # Training actually moved the shared decoder (a test that could not fail otherwise).
    fresh = Federation(shape, cfg, train, dtype=dtype)
    if strategy != "local":
        assert (vec.global_p["dec_W1"] - fresh.global_p["dec_W1"]).abs().max() > 1e-4


def test_personalfr_leaves_untouched_rows_alone(tiny_data):
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode="explicit")
    fed = Federation(shape, FedSettings(rounds=2, fraction=0.25, seed=0), train)
    before = fed.global_p["dec_out"].clone()
    users = fed.sample(0)
    fed.run_round()
    touched = np.unique(train[users].indices)
    untouched = np.setdiff1d(np.arange(tiny_data.n_items), touched)
    assert torch.equal(fed.global_p["dec_out"][untouched], before[untouched])
    assert (fed.global_p["dec_out"][touched] - before[touched]).abs().sum(1).min() > 0


def test_resampling_is_deterministic(tiny_data):
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=8, h2=4)
    a = Federation(shape, FedSettings(seed=5, fraction=0.3), train)
    b = Federation(shape, FedSettings(seed=5, fraction=0.3), train)
    assert all(np.array_equal(a.sample(r), b.sample(r)) for r in range(5))
    assert not np.array_equal(a.sample(0), a.sample(1))


def test_l2_input_norm_scales_each_user_row():
    import numpy as np
    from recsys.models.autoencoder import input_values
    shape = AEShape(5, mode="implicit", input_norm="l2")
    v = input_values(shape, np.ones(5), np.array([4, 0, 1]))
    np.testing.assert_allclose(v, [0.5, 0.5, 0.5, 0.5, 1.0])
    assert input_values(AEShape(5, mode="implicit"), np.ones(3), np.array([3])).tolist() == [1, 1, 1]
    np.testing.assert_allclose(input_values(AEShape(5), np.array([4.0, 2.0]), np.array([2])), [4, 2])
