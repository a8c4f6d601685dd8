"""Aggregation rules against hand-computed values."""
import numpy as np
import torch

from federation.strategies.aggregation import fedavg_rows_with_decay, rowwise_average, weighted_average
from federation.strategies.comm import client_bytes, clients_bytes, fedavg_bytes
from federation.engine.local_sgd import SGDConfig, decay_factor, sgd_coefficients
from recsys.models.autoencoder import AEShape


def test_weighted_average():
    stack = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.allclose(weighted_average(stack, torch.tensor([1.0, 3.0])), torch.tensor([2.5, 5.0]))


def test_rowwise_average_over_holders_only():
    old = torch.tensor([[10.0], [20.0], [30.0]])
    # client A sends rows 0 and 2; client B sends row 2 only; row 1 nobody.
    ids = torch.tensor([0, 2, 2])
    rows = torch.tensor([[1.0], [2.0], [4.0]])
    out = rowwise_average(old, ids, rows, torch.tensor([1.0, 1.0, 1.0]))
    assert out.tolist() == [[1.0], [20.0], [3.0]]
    out_w = rowwise_average(old, ids, rows, torch.tensor([1.0, 1.0, 3.0]))
    assert out_w[2, 0].item() == (2.0 + 12.0) / 4


def test_fedavg_rows_with_decay():
    old = torch.tensor([[8.0]])
    # 4 clients, weight 1 each; one held the row and returned 2.0, three returned decay*old.
    out = fedavg_rows_with_decay(old, torch.tensor([[2.0]]), torch.tensor([1.0]), 4.0, 0.5)
    assert out.item() == (2.0 + 3 * 0.5 * 8.0) / 4


def test_sgd_closed_form_matches_torch_sgd():
    cfg = SGDConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clip_norm=None)
    torch.manual_seed(0)
    p0 = torch.randn(3, dtype=torch.float64)
    grads = [torch.randn(3, dtype=torch.float64) for _ in range(4)]
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.SGD([p], lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    for g in grads:
        opt.zero_grad()
        p.grad = g.clone()
        opt.step()
    a, b = sgd_coefficients(4, cfg.lr, cfg)
    closed = a[-1] * p0 + sum(b[-1][j] * grads[j] for j in range(4))
    assert torch.allclose(p.detach(), closed, atol=1e-12)
    assert decay_factor(cfg.lr, 4, cfg) == a[-1] < 1


def test_communication_bytes_by_hand():
    s = AEShape(n_items=100, h1=4, h2=2)
    up, down = client_bytes("personalfr", s, n_rows=3)
    assert up == (3 * 5 + (4 * 2 + 4) + 1) * 4 + 3 * 8       # rows+bias, dense layer, weight; ids
    assert down == ((4 * 2 + 4) + 100 * 5) * 4
    full = (100 * 4 + 4 + 2 * 4 + 2) + (4 * 2 + 4) + 100 * 5
    assert fedavg_bytes(s) == full * 4 == client_bytes("fedavg", s, 3)[0]
    assert client_bytes("local", s, 3) == (0, 0)
    n = np.array([3, 0, 7, 3, 3])
    for strat in ("personalfr", "fedavg", "local"):
        per = [client_bytes(strat, s, int(k)) for k in n]
        assert clients_bytes(strat, s, n) == (sum(u for u, _ in per), sum(d for _, d in per))


def test_participant_rows_by_hand():
    from federation.strategies.aggregation import accumulate_rows, participant_rows
    old = torch.tensor([[1.0], [2.0], [3.0]])
    # 4 participants (weight 1 each); row 0 sent by two clients (3, 5), row 1 by one (4), row 2 by none
    sums, wsum = accumulate_rows(3, torch.tensor([0, 0, 1]), torch.tensor([[3.0], [5.0], [4.0]]), torch.ones(3))
    new = participant_rows(old, sums, wsum, total_weight=4.0, server_lr=2.0)
    # row 0: 1 + 2 * ((3-1) + (5-1)) / 4 = 4; row 1: 2 + 2 * (4-2) / 4 = 3; row 2 unchanged
    torch.testing.assert_close(new, torch.tensor([[4.0], [3.0], [3.0]]))
    same = participant_rows(old, sums.clone(), wsum, total_weight=4.0, server_lr=2.0, in_place=True)
    torch.testing.assert_close(same, new)
    g = torch.Generator().manual_seed(0)
    old, sums, wsum = torch.randn(50, 7, generator=g), torch.randn(50, 7, generator=g), torch.rand(50, generator=g)
    buf = sums.clone()
    out = participant_rows(old, buf, wsum, 3.0, 10.0, in_place=True)
    assert out.data_ptr() == buf.data_ptr()                                 # no new (n_rows, ...) tensor
    torch.testing.assert_close(out, participant_rows(old, sums, wsum, 3.0, 10.0), atol=1e-6, rtol=1e-6)
