import pytest
import torch
import torch.nn.functional as F

from sharkrec.errors import ConfigError
from sharkrec.train.optim import RowWiseAdagrad


def test_rowwise_adagrad_touches_only_used_rows_and_matches_hand_computation():
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(6, 3))
    before = table.detach().clone()
    optimizer = RowWiseAdagrad([table], lr=0.1, eps=1e-8)
    ids = torch.tensor([1, 4, 1])
    loss = F.embedding(ids, table, sparse=True).sum()
    loss.backward()
    optimizer.step()
    grad = torch.zeros(6, 3)
    grad[1] = 2.0  # row 1 used twice
    grad[4] = 1.0
    accumulator = grad.pow(2).mean(1)
    expected = before.clone()
    for row in (1, 4):
        expected[row] -= 0.1 * grad[row] / (accumulator[row].sqrt() + 1e-8)
    assert torch.allclose(table.detach(), expected, atol=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(table.detach()[untouched], before[untouched])
    assert torch.allclose(optimizer.state[table]["sum"], accumulator)


def test_rowwise_adagrad_rejects_bad_lr():
    with pytest.raises(ConfigError, match="learning rate"):
        RowWiseAdagrad([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.0)
