"""The fused inference lookups of the hashed layers equal their PyTorch (training) path.

Each layer is looked up twice on the same batch: with gradients (the PyTorch ops, autograd) and under
``torch.no_grad()`` (one kernel call). QR, ROBE-Z and the hybrid do the same arithmetic in the same
order, so they must match bit for bit; mixed dims project with the same ``mm`` and are held to fp32
rounding. Shapes: one field, D not a multiple of 8, empty bags, weighted bags, int32 ids, ids near
2^31 (the hash's int64 products), hash parameters that wrap around int64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

import sharkrec.hashed.hybrid
import sharkrec.hashed.mixed
import sharkrec.hashed.qr
import sharkrec.hashed.robe
from sharkrec.data.batch import FieldIds
from sharkrec.errors import DataError
from sharkrec.hashed import HASH_PRIME, HybridEmbedding, MixedDimEmbedding, QREmbedding, RobeEmbedding, kernels
from sharkrec.model.embedding import FieldEmbedding

pytestmark = pytest.mark.skipif(kernels.extension() is None, reason="the C++ kernels do not build here")

DIM = 5  # not a multiple of 8
ROWS = {"user": 500, "item": 37, "tags": 12}


def qr(combine: str = "multiply", rows: dict[str, int] = ROWS, dim: int = DIM) -> FieldEmbedding:
    remainders = {name: max(1, v // 7) for name, v in rows.items()}
    return QREmbedding(rows, remainders, dim, combine=combine, init_std=0.5,
                       generator=torch.Generator().manual_seed(1))


def robe(signed: bool = True, rows: dict[str, int] = ROWS, dim: int = DIM) -> FieldEmbedding:
    # chunk 3 does not divide D = 5 (the last chunk is cut) and a 7-weight array wraps around often
    return RobeEmbedding(rows, dim, 7, chunk_size=min(3, dim), signed=signed, seed=3, init_std=0.5,
                         generator=torch.Generator().manual_seed(2))


def hybrid(rows: dict[str, int] = ROWS, dim: int = DIM) -> FieldEmbedding:
    hot = {name: torch.arange(0, min(v, 40), 3) for name, v in rows.items()}
    if "tags" in hot:
        hot["tags"] = torch.tensor([], dtype=torch.int64)  # no hot values: every id hashed
    if "item" in hot:
        hot["item"] = torch.arange(rows["item"])  # every id hot
    return HybridEmbedding(rows, hot, dict.fromkeys(rows, 5), dim, seed=4, init_std=0.5,
                           generator=torch.Generator().manual_seed(3))


def mixed(rows: dict[str, int] = ROWS, dim: int = DIM) -> FieldEmbedding:
    blocks = {name: ([(v, dim)] if name == "item" or dim < 3 else [(3, dim), (7, 2), (v - 10, 1)])
              for name, v in rows.items()}
    return MixedDimEmbedding(blocks, dim, init_std=0.5, generator=torch.Generator().manual_seed(4))


BUILDERS: dict[str, Callable[..., FieldEmbedding]] = {
    "qr": qr, "qr_add": lambda **k: qr("add", **k), "robe": robe, "robe_unsigned": lambda **k: robe(False, **k),
    "hybrid": hybrid, "mixed_dim": mixed}
MODULES = {"qr": sharkrec.hashed.qr, "robe": sharkrec.hashed.robe, "hybrid": sharkrec.hashed.hybrid,
           "mixed_dim": sharkrec.hashed.mixed}


def bags(values: torch.Tensor, lengths: list[int], weighted: bool, seed: int) -> FieldIds:
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int64).cumsum(0)])
    weights = torch.randn(values.numel(), generator=torch.Generator().manual_seed(seed)) if weighted else None
    return FieldIds(values, offsets, weights)


def batch(rows: dict[str, int], size: int, *, multi_hot: str | None = "tags", weighted: bool = False,
          seed: int = 0) -> list[FieldIds]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for name, v in rows.items():
        if name != multi_hot:
            out.append(FieldIds(torch.randint(0, v, (size,), generator=generator)))
            continue
        lengths = torch.randint(0, 5, (size,), generator=generator).tolist()
        lengths[0] = 0  # an empty bag
        values = torch.randint(0, v, (sum(lengths),), generator=generator)
        out.append(bags(values, lengths, weighted, seed))
    return out


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The kinds whose forward returned the fused kernel's output (the real kernel, counted)."""
    calls: list[str] = []
    for kind, module in MODULES.items():
        def counted(*args: object, _kind: str = kind) -> torch.Tensor | None:
            out = kernels.fused_lookup(*args)  # type: ignore[arg-type]
            if out is not None:
                calls.append(_kind)
            return out
        monkeypatch.setattr(module, "fused_lookup", counted)
    yield calls


def both_paths(layer: FieldEmbedding, sparse: list[FieldIds]) -> tuple[torch.Tensor, torch.Tensor]:
    """(PyTorch path with autograd, fused kernel without) on the same batch."""
    reference = layer(sparse).detach()
    with torch.no_grad():
        fused = layer(sparse)
    return reference, fused


def assert_same(kind: str, reference: torch.Tensor, fused: torch.Tensor) -> None:
    assert fused.shape == reference.shape and fused.dtype == torch.float32
    if kind == "mixed_dim":
        torch.testing.assert_close(fused, reference, rtol=2e-6, atol=1e-7)
    else:
        assert torch.equal(fused, reference), (fused - reference).abs().max()


@pytest.fixture(params=sorted(BUILDERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def base_kind(kind: str) -> str:
    return kind.split("_")[0] if kind != "mixed_dim" else kind


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("size", [1, 7, 300])
def test_kernel_equals_pytorch_path(kind, size, weighted, kernel_calls):
    layer = BUILDERS[kind]()
    reference, fused = both_paths(layer, batch(ROWS, size, weighted=weighted, seed=size))
    assert kernel_calls == [base_kind(kind)]  # the no-grad lookup ran the kernel, the other did not
    assert_same(kind, reference, fused)
    assert reference.abs().sum() > 0


def test_one_field_all_multi_hot_dim_one_and_wide(kind, kernel_calls):
    for rows, dim in (({"only": 97}, 1), ({"only": 97}, 19), ({"a": 60, "b": 13}, 64)):
        layer = BUILDERS[kind](rows=rows, dim=dim)
        for multi_hot in (None, next(iter(rows))):
            for weighted in (False, True):
                sparse = batch(rows, 33, multi_hot=multi_hot, weighted=weighted, seed=dim)
                assert_same(kind, *both_paths(layer, sparse))


def test_every_bag_empty_and_an_empty_batch(kind):
    layer = BUILDERS[kind]()
    empty = [FieldIds(torch.zeros(4, dtype=torch.int64)), FieldIds(torch.zeros(4, dtype=torch.int64)),
             bags(torch.zeros(0, dtype=torch.int64), [0, 0, 0, 0], True, 0)]
    reference, fused = both_paths(layer, empty)
    assert_same(kind, reference, fused)
    assert torch.equal(fused[:, 2], torch.zeros(4, DIM))
    nothing = [FieldIds(torch.zeros(0, dtype=torch.int64)), FieldIds(torch.zeros(0, dtype=torch.int64)),
               bags(torch.zeros(0, dtype=torch.int64), [], False, 0)]
    with torch.no_grad():
        assert layer(nothing).shape == (0, 3, DIM)


def test_int32_ids(kind):
    layer = BUILDERS[kind]()
    sparse = [FieldIds(ids.values.to(torch.int32), ids.offsets, ids.weights) for ids in batch(ROWS, 50, weighted=True)]
    assert_same(kind, *both_paths(layer, sparse))


@pytest.mark.parametrize("builder", [robe, hybrid])
def test_hash_of_ids_near_two_to_the_31(builder):
    """The hash's int64 products at their largest: ids up to p − 1, (a, b) up to p − 1."""
    rows = {"wide": HASH_PRIME, "other": HASH_PRIME - 5}
    layer = builder(rows=rows, dim=DIM)
    high = torch.tensor([HASH_PRIME - 1, HASH_PRIME - 2, 2**31 - 3, 0, 1, 2**30 + 12345, 987654321])
    sparse = [FieldIds(high), FieldIds(high.clamp(max=HASH_PRIME - 6))]
    assert_same(layer.kind, *both_paths(layer, sparse))
    name = "offset_hash" if layer.kind == "robe" else "cold_hash"
    with torch.no_grad():
        getattr(layer, name).fill_(HASH_PRIME - 1)
    assert_same(layer.kind, *both_paths(layer, sparse))
    with torch.no_grad():  # parameters no draw gives: the products wrap around int64 as torch's do
        getattr(layer, name)[:, 0] = 2**62 + 2**40 + 7
        getattr(layer, name)[:, 1] = -(2**61) - 3
    assert_same(layer.kind, *both_paths(layer, sparse))


def test_frozen_layer_uses_the_kernel_with_gradients_on(kind, kernel_calls):
    """A served layer holds frozen parameters: no graph to build, so the kernel runs even outside no_grad."""
    layer = BUILDERS[kind]()
    sparse = batch(ROWS, 20, weighted=True)
    reference = layer(sparse).detach()
    for parameter in layer.parameters():
        parameter.requires_grad_(False)
    assert_same(kind, reference, layer(sparse))
    assert kernel_calls == [base_kind(kind)]


def test_training_keeps_autograd(kind):
    layer = BUILDERS[kind]()
    out = layer(batch(ROWS, 9))
    assert out.requires_grad
    out.sum().backward()
    assert any(p.grad is not None for p in layer.sparse_parameters())


def test_disabled_extension_serves_the_pytorch_path(kind, kernel_calls, monkeypatch):
    layer = BUILDERS[kind]()
    sparse = batch(ROWS, 40, weighted=True)
    with torch.no_grad():
        fused = layer(sparse)
        monkeypatch.setenv("SHARKREC_NO_EXTENSION", "1")
        assert kernels.extension() is None and kernels.inference_extension(layer) is None
        plain = layer(sparse)
    assert kernel_calls == [base_kind(kind)]  # only the first lookup ran the kernel
    assert_same(kind, plain, fused)


def test_bad_ids_and_offsets_raise_the_layers_errors(kind):
    layer = BUILDERS[kind]()
    sparse = batch(ROWS, 6)
    too_high = [sparse[0], FieldIds(sparse[1].values + ROWS["item"]), sparse[2]]
    with torch.no_grad(), pytest.raises(DataError, match="field 'item' has ids from"):
        layer(too_high)
    with torch.no_grad(), pytest.raises(DataError, match="sparse fields but the embedding has"):
        layer(sparse[:2])
    with torch.no_grad(), pytest.raises(DataError, match="ids must be int64 or int32"):
        layer([sparse[0], FieldIds(sparse[1].values.float()), sparse[2]])
    with torch.no_grad(), pytest.raises(DataError, match="every field of a batch needs the same number"):
        layer([sparse[0], FieldIds(sparse[1].values[:3]), sparse[2]])
    tags = sparse[2]
    assert tags.offsets is not None
    short = FieldIds(tags.values, tags.offsets.clone().index_fill_(0, torch.tensor([6]), 0))
    with torch.no_grad(), pytest.raises(DataError, match="field 'tags' has bag offsets"):
        layer([sparse[0], sparse[1], short])


def test_kernel_declines_inputs_it_does_not_take(kind, kernel_calls):
    """Float64 bag weights are not the kernel's: the PyTorch path serves them (the same result)."""
    layer = BUILDERS[kind]()
    sparse = batch(ROWS, 10, weighted=True)
    tags = sparse[2]
    assert tags.weights is not None
    doubled = [*sparse[:2], FieldIds(tags.values, tags.offsets, tags.weights.double())]
    with torch.no_grad():
        out = layer(doubled)
    assert kernel_calls == []
    assert out.shape == (10, 3, DIM)
