import numpy as np
import pytest

from recsys.data import from_interactions


@pytest.fixture
def tiny_data():
    """12 users x 30 items, 4-12 explicit ratings each, seeded."""
    rng = np.random.default_rng(0)
    users, items, ratings = [], [], []
    for u in range(12):
        its = rng.choice(30, size=rng.integers(4, 13), replace=False)
        users += [u] * len(its)
        items += list(its)
        ratings += list(rng.integers(1, 6, len(its)))
    return from_interactions("tiny", np.array(users), np.array(items), np.array(ratings, float),
                             np.arange(len(users), dtype=float))
