import pytest
import torch
import torch.nn.functional as F

from sharkrec.errors import ConfigError
from sharkrec.model.kernels import extension
from sharkrec.train.optim import LazyAdam, RowWiseAdagrad

needs_kernels = pytest.mark.skipif(extension() is None, reason="no C++ compiler: the PyTorch path runs")


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


def _train_tables(optimizer_of, use_extension: bool, steps: int = 6) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    tables = [torch.nn.Parameter(torch.randn(rows, 4)) for rows in (30, 5, 200)]
    optimizer = optimizer_of(tables)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum((F.embedding(torch.randint(0, t.shape[0], (40,), generator=generator), t, sparse=True) ** 2).sum()
                   * (k + 1) for k, t in enumerate(tables))
        loss.backward()
        if use_extension is None:
            optimizer.step()
        else:
            optimizer.step(use_extension=use_extension)
    return [t.detach() for t in tables], optimizer.state_dict()


@needs_kernels
def test_rowwise_adagrad_kernel_equals_the_pytorch_path_with_repeated_ids():
    fast, fast_state = _train_tables(lambda p: RowWiseAdagrad(p, lr=0.1), True)
    slow, slow_state = _train_tables(lambda p: RowWiseAdagrad(p, lr=0.1), False)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for key in fast_state["state"]:
        torch.testing.assert_close(fast_state["state"][key]["sum"], slow_state["state"][key]["sum"], rtol=1e-6,
                                   atol=1e-6)


@needs_kernels
def test_lazy_adam_kernel_equals_torch_sparse_adam_and_loads_its_state():
    fast, fast_state = _train_tables(lambda p: LazyAdam(p, lr=0.05), True)
    slow, slow_state = _train_tables(lambda p: torch.optim.SparseAdam(p, lr=0.05), None)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for key, state in slow_state["state"].items():
        assert fast_state["state"][key]["step"] == state["step"] == 6
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fast_state["state"][key][name], state[name], rtol=1e-6, atol=1e-7)
    resumed = LazyAdam([torch.nn.Parameter(t.clone()) for t in slow], lr=0.05)
    resumed.load_state_dict(slow_state)  # a SparseAdam checkpoint loads into LazyAdam
    assert resumed.state_dict()["state"][0]["step"] == 6
