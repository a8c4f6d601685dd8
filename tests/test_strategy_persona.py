"""Persona (a federated user embedder): the conformance suite, the embedder's equations on a case
computed by hand, its few-shot masks, and what its clients send."""
import math

import numpy as np
import pytest
import torch

from federation.simulation import Federation, FedSettings
from federation.strategies.messages import dense_keys, update_keys
from federation.strategies.registry import get_strategy
from recsys.errors import ConfigError
from recsys.models.autoencoder import AEShape, init_params
from recsys.models.embedder import EMBEDDER_KEYS, history_keep, user_vector
from recsys.splits import ratio_split
from strategy_conformance import StrategyConformance


class TestPersona(StrategyConformance):
    strategy = "persona"
    options = {"heads": 2, "steps": 3}


def _p(Q, wr, W, b):
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return {"emb_Q": t(Q), "emb_r": t(wr), "emb_W": t(W), "emb_b": t(b)}


def test_user_vector_by_hand():
    """H1 = H2 = 2, one head, two entries e1 = (1, 0), e2 = (0, 1) (w_r = 0): context c = (.5, .5),
    query q = Q + c = (1.5, .5), scores (1.5, .5) / sqrt 2, a1 = sigmoid(1 / sqrt 2); with W = I, b = 0
    z = tanh(a1, 1 - a1). Dropping entry 2 leaves c = e1 and a1 = 1: z = tanh(1, 0)."""
    p = _p([[1.0, 0.0]], [0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    rows = torch.eye(2, dtype=torch.float64)
    v, seg = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    a1 = 1 / (1 + math.exp(-1 / math.sqrt(2)))
    torch.testing.assert_close(user_vector(p, rows, v, seg, 1)[0], torch.tanh(torch.tensor([a1, 1 - a1], dtype=torch.float64)))
    keep = torch.tensor([1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(user_vector(p, rows, v, seg, 1, keep)[0], torch.tanh(torch.tensor([1.0, 0.0], dtype=torch.float64)))


def test_rating_vector_and_second_head_by_hand():
    """(1) e_h = row + v_h w_r: one entry row (0, 0) rated 2 with w_r = (1, -1) gives e = (2, -2); a single
    entry gets all the attention of every head, so with two heads p = [e; e] and W = [[1, 0, 0, 0],
    [0, 0, 0, 1]], b = (0, 1): z = tanh(2, -2 + 1)."""
    p = _p([[3.0, 1.0], [-1.0, 0.5]], [1.0, -1.0], [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], [0.0, 1.0])
    z = user_vector(p, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64),
                    torch.zeros(1, dtype=torch.long), 1)
    torch.testing.assert_close(z[0], torch.tanh(torch.tensor([2.0, -1.0], dtype=torch.float64)))


def test_batched_parameters_give_each_user_its_own_vector():
    """The generic path holds one copy of the embedder per client (n, ...): equal copies give the shared
    result, and users do not see each other's entries."""
    g = torch.Generator().manual_seed(0)
    p = {"emb_Q": torch.randn(2, 4, generator=g), "emb_r": torch.randn(4, generator=g),
         "emb_W": torch.randn(3, 8, generator=g), "emb_b": torch.randn(3, generator=g)}
    rows, v = torch.randn(5, 4, generator=g), torch.rand(5, generator=g)
    seg = torch.tensor([0, 0, 1, 1, 1])
    shared = user_vector(p, rows, v, seg, 2)
    batched = user_vector({k: t.unsqueeze(0).expand(2, *t.shape) for k, t in p.items()}, rows, v, seg, 2)
    torch.testing.assert_close(batched, shared)
    alone = user_vector(p, rows[2:], v[2:], torch.zeros(3, dtype=torch.long), 1)
    torch.testing.assert_close(shared[1:], alone)


def test_few_shot_masks_keep_one_entry_and_do_not_depend_on_the_cohort():
    users = torch.arange(200)
    seg = torch.repeat_interleave(users, 10)
    items = torch.arange(2000) % 37
    keep = history_keep(3, 1, users, items, seg, 0, 200)
    per_user = torch.zeros(200).index_add(0, seg, keep)
    assert per_user.min() >= 1 and per_user.max() <= 10
    assert 0.3 < float(keep.mean()) < 0.5                # E[10^-t] = 0.9 / ln 10 = 0.39, plus the one kept
    alone = history_keep(3, 1, users[7:8], items[70:80], torch.zeros(10, dtype=torch.long), 0, 1)
    torch.testing.assert_close(alone, keep[70:80])
    assert not torch.equal(keep, history_keep(3, 1, users, items, seg, 1, 200))   # another step, other masks


def test_the_embedder_is_part_of_every_message_and_nothing_personal_is(tiny_data):
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode="implicit")
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    fed = Federation(shape, FedSettings(strategy="persona", options={"heads": 3}, rounds=2, fraction=0.5,
                                        local_epochs=2, seed=1), train, dtype=torch.float64)
    assert fed.shape.embedder_heads == 3
    assert set(EMBEDDER_KEYS) <= set(dense_keys(fed.shape)) and set(EMBEDDER_KEYS) <= set(update_keys(fed.shape))
    before = {k: fed.global_p[k].clone() for k in EMBEDDER_KEYS}
    msg = fed.client_message(int(np.flatnonzero(np.diff(train.indptr))[0]))
    assert set(msg) == set(update_keys(fed.shape))
    assert msg["emb_W"].shape == (8, 3 * 16) and msg["emb_Q"].shape == (3, 16)
    fed.run_round()
    assert all((fed.global_p[k] - before[k]).abs().max() > 0 for k in EMBEDDER_KEYS), "the embedder did not train"


def test_init_is_seeded_and_leaves_the_other_parameters_alone():
    a = init_params(AEShape(30, h1=8, h2=4), 5)
    b = init_params(AEShape(30, h1=8, h2=4, embedder_heads=2), 5)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    c = init_params(AEShape(30, h1=8, h2=4, embedder_heads=2), 5)
    assert all(torch.equal(b[k], c[k]) for k in EMBEDDER_KEYS)
    assert b["emb_r"].abs().max() == 0 and b["emb_b"].abs().max() == 0


def test_bad_options_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"federation.options.heads"):
        get_strategy("persona", {"heads": 0})
    with pytest.raises(ConfigError, match=r"federation.options.lr"):
        get_strategy("persona", {"lr": 0})


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_existing_users_train_exactly_as_under_personalfr(tiny_data, mode):
    """The embedder's phase never changes PersonalFR's update: after three rounds every encoder, the decoder
    and the item rows equal a personalfr run's with the same seed, bit for bit; only the embedder differs."""
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode=mode)

    def fed(strategy):
        f = Federation(shape, FedSettings(strategy=strategy, rounds=3, fraction=0.5, local_epochs=3, seed=2),
                       train, dtype=torch.float64)
        for _ in range(3):
            f.run_round()
        return f

    a, b = fed("persona"), fed("personalfr")
    assert set(a.global_p) == set(b.global_p) | set(EMBEDDER_KEYS)
    for k in b.global_p:
        assert torch.equal(a.global_p[k], b.global_p[k]), k
    for k in b.store.keys:
        assert torch.equal(a.store.full(k), b.store.full(k)), k
    users = np.arange(tiny_data.n_users)
    assert torch.equal(a.user_scores(users), b.user_scores(users))


def test_dp_clips_and_noises_the_embedder_with_the_rest_of_the_update(tiny_data):
    """Under DP the embedder is part of the clipped update (its change counts in the norm and is scaled
    with the rest) and gets noise like every other shared coordinate."""
    from federation.privacy.dp import DPSettings, clip_update, dp_aggregate
    from federation.strategies.messages import update_norm

    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    fed = Federation(AEShape(tiny_data.n_items, h1=16, h2=8, mode="implicit"),
                     FedSettings(strategy="persona", rounds=1, fraction=0.5, local_epochs=2, seed=1), train)
    users = np.flatnonzero(np.diff(train.indptr))[:4]
    msgs, _ = fed.client_messages(users)
    g = fed.global_p
    m = msgs[int(users[0])]
    emb_sq = sum(float(((torch.as_tensor(m[k]) - g[k]) ** 2).sum()) for k in EMBEDDER_KEYS)
    assert emb_sq > 0
    norm = update_norm(m, g)
    clipped, before = clip_update(m, g, clip=norm / 4)
    assert before == pytest.approx(norm) and update_norm(clipped, g) == pytest.approx(norm / 4, rel=1e-4)
    for k in EMBEDDER_KEYS:
        torch.testing.assert_close(torch.as_tensor(clipped[k]) - g[k], (torch.as_tensor(m[k]) - g[k]) / 4,
                                   atol=1e-6, rtol=1e-4)
    dp = DPSettings(noise_multiplier=1.0, clip=0.1, delta=1e-5, noise_seed=0)
    quiet = dp_aggregate(g, [], dp, expected_clients=4)          # no messages: the change is noise alone
    for k in EMBEDDER_KEYS:
        assert (quiet[k] - g[k]).abs().max() > 0
    new = dp_aggregate(g, list(msgs.values()), dp, expected_clients=4)
    assert all(new[k].shape == g[k].shape for k in EMBEDDER_KEYS)
