import numpy as np
import pytest
import scipy.sparse as sp

from recsys.metrics import coverage, mae, ranking_metrics, ranking_metrics_reference, rmse, tail_share, topk_from_scores


def test_hand_computed_ranking():
    truth = sp.csr_matrix(np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32))
    topk = np.array([[1, 2, 3], [2, 3, 4]])
    m = ranking_metrics(topk, truth, np.array([0, 1]), ks=(2, 3))
    # user 0: hits at ranks 1 and 3; user 1: none. user 2 has no truth and is skipped.
    idcg2 = 1 + 1 / np.log2(3)
    assert m["recall@2"] == pytest.approx((0.5 + 0) / 2)
    assert m["ndcg@2"] == pytest.approx((1 / idcg2) / 2)
    assert m["ndcg@3"] == pytest.approx(((1 + 1 / np.log2(4)) / idcg2) / 2)
    assert m["mrr@3"] == pytest.approx(0.5)
    assert m["hit@3"] == pytest.approx(0.5)


def test_vectorized_matches_reference():
    rng = np.random.default_rng(0)
    truth = sp.random(50, 40, density=0.1, random_state=1, format="csr")
    scores = rng.random((50, 40))
    topk, _ = topk_from_scores(scores.copy(), 10)
    users = np.arange(50)
    a = ranking_metrics(topk, truth, users, ks=(5, 10))
    b = ranking_metrics_reference(topk, truth, users, ks=(5, 10))
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12)


def test_topk_excludes_and_orders():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    ex = sp.csr_matrix(np.array([[0, 1, 0, 0]]))
    ids, s = topk_from_scores(scores.copy(), 2, ex)
    assert ids.tolist() == [[3, 2]] and s.tolist() == [[0.7, 0.5]]


def test_rating_metrics_and_coverage():
    assert rmse(np.array([1.0, 3.0]), np.array([2.0, 5.0])) == pytest.approx(np.sqrt(2.5))
    assert mae(np.array([1.0, 3.0]), np.array([2.0, 5.0])) == pytest.approx(1.5)
    assert coverage(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]]))
    # head (top 20% = 1 item) is item 0
    assert tail_share(np.array([[0, 1], [4, 0]]), train) == pytest.approx(0.5)


def test_item_terciles_activity_quartiles_and_group_recall_by_hand():
    import scipy.sparse as sp

    from recsys.metrics import activity_quartiles, group_recall, item_terciles, user_recall

    # 6 items with popularity 5, 4, 3, 2, 1, 0 -> head {0, 1}, mid {2, 3}, tail {4, 5}
    rows = [u for i, n in enumerate([5, 4, 3, 2, 1, 0]) for u in range(n)]
    cols = [i for i, n in enumerate([5, 4, 3, 2, 1, 0]) for _ in range(n)]
    train = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(5, 6))
    assert item_terciles(train).tolist() == [0, 0, 1, 1, 2, 2]
    # users' training lengths: 5, 4, 3, 2, 1 -> quartile edges 2, 3, 4
    assert activity_quartiles(train, np.arange(5)).tolist() == [3, 2, 1, 0, 0]
    truth = sp.csr_matrix((np.ones(4), ([0, 0, 1, 1], [0, 4, 2, 3])), shape=(5, 6))
    topk = np.array([[4, 1], [2, 5]])
    users = np.array([0, 1])
    r = user_recall(topk, truth, users, 2)
    assert r.tolist() == [0.5, 0.5]
    g = group_recall(topk, truth, users, 2, item_terciles(train), np.array([3, 2]))
    assert g["recall@2_head"] == 0.0            # user 0's head item 0 missed; user 1 has no head item
    assert g["recall@2_mid"] == 0.5             # user 1: 2 of {2, 3}... one of two
    assert g["recall@2_tail"] == 1.0            # user 0: item 4 hit
    assert g["recall@2_q4"] == 0.5 and g["recall@2_q3"] == 0.5 and np.isnan(g["recall@2_q1"])
