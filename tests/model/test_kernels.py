"""The training kernels (sharkrec.model.kernels) against the PyTorch ops they replace: same values, same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sharkrec.data.batch import FieldIds
from sharkrec.errors import DataError
from sharkrec.model import kernels
from sharkrec.model.embedding import FloatEmbedding

needs_kernels = pytest.mark.skipif(kernels.extension() is None, reason="no C++ compiler: the PyTorch path runs")


def _pair_index(fields: int) -> torch.Tensor:
    rows, cols = torch.triu_indices(fields, fields, offset=1)
    return rows * fields + cols


@needs_kernels
@pytest.mark.parametrize(("batch", "fields", "dim"), [(512, 27, 16), (64, 9, 16), (5, 1, 8), (7, 70, 4), (3, 2, 3)])
@pytest.mark.parametrize("dense_first", [False, True])
def test_pair_dots_kernel_matches_bmm(batch: int, fields: int, dim: int, dense_first: bool) -> None:
    torch.manual_seed(0)
    vectors = torch.randn(batch, fields, dim, requires_grad=True)
    index = _pair_index(fields)
    fast = kernels.pair_dots(vectors, index, dense_first=dense_first)
    assert fast.grad_fn is not None and "PairDots" in type(fast.grad_fn).__name__  # the kernel ran
    grad = torch.randn_like(fast)
    (fast_grad,) = torch.autograd.grad(fast, vectors, grad)
    slow = kernels.pair_dots(vectors, index, dense_first=dense_first, use_extension=False)
    (slow_grad,) = torch.autograd.grad(slow, vectors, grad)
    assert fast.shape == (batch, (dim if dense_first else 0) + fields * (fields - 1) // 2)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-5, atol=1e-5)
    if (fields, dim) == (27, 16):  # DLRM on Criteo: the kernel sums in torch.bmm's order, to the bit
        assert torch.equal(fast, slow) and torch.equal(fast_grad, slow_grad)


def test_pair_dots_inference_keeps_bmm() -> None:
    vectors = torch.randn(4, 5, 3)
    with torch.no_grad():
        out = kernels.pair_dots(vectors, _pair_index(5), dense_first=True)
    expected = torch.cat([vectors[:, 0], torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)[:, _pair_index(5)]], 1)
    assert torch.equal(out, expected)


@needs_kernels
def test_single_hot_lookup_equals_embedding_lookups_and_gradients() -> None:
    torch.manual_seed(0)
    rows = {"a": 10, "b": 7, "c": 300}
    embedding = FloatEmbedding(rows, 4)
    ids = [FieldIds(torch.randint(0, r, (64,))) for r in rows.values()]
    out = embedding(ids)
    assert "SingleHotLookup" in type(out.grad_fn).__name__
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    fused = [t.grad for t in embedding.tables]
    assert all(g.is_sparse and g._indices().shape == (1, 64) for g in fused)  # like F.embedding: uncoalesced
    for table in embedding.tables:
        table.grad = None
    pairs = zip(ids, embedding.tables, strict=True)
    expected = torch.stack([F.embedding(i.values, t, sparse=True) for i, t in pairs], 1)
    assert torch.equal(out, expected)
    (expected * weights).sum().backward()
    for got, table in zip(fused, embedding.tables, strict=True):
        assert torch.equal(got.coalesce().to_dense(), table.grad.coalesce().to_dense())


@needs_kernels
def test_single_hot_lookup_rejects_an_id_outside_its_table_naming_the_field() -> None:
    embedding = FloatEmbedding({"a": 10, "b": 7}, 4)
    with pytest.raises(DataError, match=r"field 'b' has ids from 0 to 7 but its table has 7 rows"):
        embedding([FieldIds(torch.tensor([1, 2])), FieldIds(torch.tensor([0, 7]))])
    with pytest.raises(DataError, match="field 'a'"):
        embedding([FieldIds(torch.tensor([-1, 2])), FieldIds(torch.tensor([0, 1]))])
