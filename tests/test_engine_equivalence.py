"""The vectorized closed-form cohort engine must reproduce the nn.Module/torch.optim reference."""
import numpy as np
import pytest
import torch

from federation.engine.local_sgd import SGDConfig
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
        for k in vec.store.keys:
            torch.testing.assert_close(vec.store.full(k), ref.store.full(k), atol=tol, rtol=0)
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


@pytest.mark.parametrize("mode,strategy,row_dropout,weighted", [
    ("explicit", "personalfr", 0.0, False), ("implicit", "personalfr", 0.0, False),
    ("explicit", "fedavg", 0.0, False), ("implicit", "fedavg", 0.0, False),
    ("implicit", "personalfr", 0.5, False), ("explicit", "fedavg", 0.5, False),
    ("implicit", "personalfr", 0.5, True), ("implicit", "fedavg", 0.5, True), ("explicit", "personalfr", 0.5, True)])
def test_content_projection_same_in_both_engines(tiny_data, mode, strategy, row_dropout, weighted):
    """The content-aware decoder (rows + shared projection of item content) trains identically in the
    closed-form engine and the nn.Module reference, and the projection actually learns; also with
    content-only steps (row_dropout) and with holder-weighted content (content-only steps then score
    with the unweighted content_drop)."""
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train").tolil()
    train[:, :3] = 0                                   # items 0-2: cold (no training interactions)
    train = train.tocsr()
    train.eliminate_zeros()
    content = torch.randn(tiny_data.n_items, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, dropout=0.5, mode=mode, content_dim=6,
                    content_dropout=row_dropout)
    cfg = FedSettings(strategy=strategy, rounds=4, fraction=0.5, local_epochs=5, seed=3, max_cohort_clients=4)
    drop = None
    if weighted:
        from recsys.models.autoencoder import holder_weights
        drop = content
        g = torch.as_tensor(holder_weights(np.asarray((train != 0).sum(0)).ravel(), 2.0), dtype=torch.float64)
        content = content * g[:, None]
    vec = Federation(shape, cfg, train, dtype=torch.float64, content=content, content_drop=drop)
    ref = Federation(shape, cfg, train, dtype=torch.float64, content=content, content_drop=drop)
    for _ in range(2):
        assert vec.run_round("vectorized").loss == pytest.approx(ref.run_round("reference").loss, rel=1e-8)
    for k in vec.global_p:
        torch.testing.assert_close(vec.global_p[k], ref.global_p[k], atol=1e-10, rtol=0)
    fresh = Federation(shape, cfg, train, dtype=torch.float64, content=content, content_drop=drop)
    assert (vec.global_p["dec_P"] - fresh.global_p["dec_P"]).abs().max() > 1e-4
    # personalfr: items nobody trained on are scored by content alone (free rows still zero).
    from recsys.models.autoencoder import full_scores
    h3 = torch.randn(3, 16, dtype=torch.float64)
    cold = torch.as_tensor(np.flatnonzero(np.asarray((train != 0).sum(0)).ravel() == 0))
    s = full_scores(vec.global_p, h3, vec.content)
    assert cold.tolist() == [0, 1, 2]
    if strategy == "personalfr":        # (fedavg trains every row, cold ones included)
        torch.testing.assert_close(s[:, cold], (h3 @ vec.global_p["dec_P"]) @ content[cold].T)


def test_content_messages_match_engine(tiny_data):
    """client_messages (the node path) carry the projection; aggregating them equals the engine round."""
    from federation.strategies.messages import aggregate_updates, update_keys
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    content = torch.randn(tiny_data.n_items, 5, generator=torch.Generator().manual_seed(1))
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode="explicit", content_dim=5)
    cfg = FedSettings(rounds=3, fraction=0.5, seed=2)
    a = Federation(shape, cfg, train, content=content)
    b = Federation(shape, cfg, train, content=content)
    users = a.sample(0)
    msgs, _ = a.client_messages(users)
    assert all(set(m) == set(update_keys(shape)) and m["dec_P"].shape == (16, 5) for m in msgs.values())
    new, res = aggregate_updates(a.global_p, [msgs[int(u)] for u in users], shape, outlier_factor=None)
    b.run_round()
    assert res.accepted == len(users)
    for k in b.global_p:
        torch.testing.assert_close(new[k], b.global_p[k], atol=1e-5, rtol=0)


def test_content_only_steps_switch_rows_off(tiny_data):
    """rows_kept draws about the asked share of content-only steps, independently of the cohort; with
    every step content-only the free rows and biases get no gradient (only weight decay shrinks
    them) while the projection still learns."""
    from recsys.models.autoencoder import rows_kept
    users = torch.arange(4000)
    on = rows_kept(0, 3, users, 2, 0.3)
    assert set(on.unique().tolist()) == {0.0, 1.0}
    assert abs(1 - float(on.mean()) - 0.3) < 0.03
    torch.testing.assert_close(rows_kept(0, 3, users[1000:1010], 2, 0.3), on[1000:1010])
    assert not torch.equal(rows_kept(0, 3, users, 3, 0.3), on)
    assert torch.equal(rows_kept(0, 3, users, 2, 0.0), torch.ones(4000))

    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    content = torch.randn(tiny_data.n_items, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cfg = FedSettings(rounds=2, fraction=0.5, seed=3, sgd=SGDConfig(weight_decay=0.0))
    fed = Federation(AEShape(tiny_data.n_items, h1=16, h2=8, mode="implicit", content_dim=4, content_dropout=0.9999),
                     cfg, train, dtype=torch.float64, content=content)
    start = {k: v.clone() for k, v in fed.global_p.items()}
    fed.run_round()
    assert float(fed.global_p["dec_out"].abs().max()) == 0.0 and float(fed.global_p["dec_ob"].abs().max()) == 0.0
    assert (fed.global_p["dec_P"] - start["dec_P"]).abs().max() > 1e-4


def test_holder_weights_by_hand():
    from recsys.models.autoencoder import holder_weights
    np.testing.assert_allclose(holder_weights(np.array([0, 10, 20, 60]), 20.0), [1.0, 2 / 3, 0.5, 0.25], rtol=1e-6)


@pytest.mark.parametrize("mode,strategy,with_content", [
    ("implicit", "personalfr", False), ("explicit", "personalfr", False), ("implicit", "personalfr", True),
    ("implicit", "fedavg", False), ("explicit", "local", False)])
def test_tied_input_same_in_both_engines(tiny_data, mode, strategy, with_content):
    """input_tie: the encoder reads personal rows + alpha * the received output rows. Both engines agree,
    the tie changes training (so it is not a no-op), and a client's message has the same keys and
    shapes as without it (nothing new leaves the client)."""
    from federation.strategies.messages import update_keys
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    content = (torch.randn(tiny_data.n_items, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
               if with_content else None)
    cfg = FedSettings(strategy=strategy, rounds=4, fraction=0.5, local_epochs=5, seed=3, max_cohort_clients=4)

    def fed(tie):
        shape = AEShape(tiny_data.n_items, h1=16, h2=8, dropout=0.5, mode=mode, input_norm="l2" if mode == "implicit" else "none",
                        content_dim=5 if with_content else 0, input_tie=tie)
        return Federation(shape, cfg, train, dtype=torch.float64, content=content)
    vec, ref, untied = fed(3.0), fed(3.0), fed(0.0)
    for _ in range(2):
        assert vec.run_round("vectorized").loss == pytest.approx(ref.run_round("reference").loss, rel=1e-8)
        untied.run_round()
    for k in vec.global_p:
        torch.testing.assert_close(vec.global_p[k], ref.global_p[k], atol=1e-10, rtol=0)
    if vec.store is not None:
        for k in vec.store.keys:
            torch.testing.assert_close(vec.store.full(k), ref.store.full(k), atol=1e-10, rtol=0)
    moved = vec.store.full("dec_W1") if strategy == "local" else vec.global_p["dec_W1"]
    assert (moved - (untied.store.full("dec_W1") if strategy == "local" else untied.global_p["dec_W1"])).abs().max() > 1e-4
    # Inference adds the same received rows: user scores equal the plain forward with enc_in + alpha * r
    # (local: the user's own rows are personal, so its scores are not the shared-row forward).
    users = np.array([0, 3, 5]) if strategy != "local" else np.array([], dtype=int)
    from recsys.models.autoencoder import decode_hidden, encode, full_scores, item_rows
    got = vec.user_scores(users) if len(users) else None
    for j, u in enumerate(users):
        c = vec.cohorts(np.array([u]))[0]
        p = {k: (vec.store.gather(k, c, torch.float64) if vec.store is not None and k in vec.strategy.personal
                 else (vec.global_p[k][c.items] if k == "enc_in" else vec.global_p[k]))
             for k in ("enc_in", "enc_b1", "enc_W2", "enc_b2", "dec_W1", "dec_b1")}
        p["enc_in"] = p["enc_in"] + 3.0 * item_rows(vec.global_p, content, c.items)
        h3 = decode_hidden(p, encode(p, c.seg, c.x, 1))
        torch.testing.assert_close(got[j], full_scores(vec.global_p, h3, content)[0], atol=1e-10, rtol=0)
    if strategy == "personalfr":
        u = int(vec.sample(vec.round)[0])
        m_tied, m_plain = vec.client_message(u), untied.client_message(u)
        assert set(m_tied) == set(m_plain) == set(update_keys(vec.shape))
        assert all(m_tied[k].shape == m_plain[k].shape for k in m_tied)
