"""The C++ training kernels (csrc/tier_rows.cpp) against the same algorithm in PyTorch ops.

Each test builds two identical layers, one with ``use_extension`` off, and checks they read, step, round and
migrate to the same bytes (skipped where the kernels do not build; the rest of tests/quant runs on whichever
path is active, and again with SHARKREC_NO_EXTENSION=1).
"""

from __future__ import annotations

import pytest
import torch

from sharkrec.data.batch import FieldIds
from sharkrec.model.embedding import FloatEmbedding
from sharkrec.quant import MixedPrecisionEmbedding, Precision, build_embedding, kernels

pytestmark = pytest.mark.skipif(kernels.extension() is None, reason="the C++ kernels do not build here")


def pair(stochastic: bool = True, dim: int = 7) -> tuple[MixedPrecisionEmbedding, MixedPrecisionEmbedding]:
    """Two equal layers over all four tiers (odd D: the int4 padding nibble), kernel and PyTorch path."""
    base = FloatEmbedding({"a": 60, "b": 30, "c": 45}, dim, init_std=1.0, generator=torch.Generator().manual_seed(0))
    plan = {name: (torch.arange(rows) * 7 % 4).to(torch.int8) for name, rows in base.num_rows().items()}
    layers = []
    for use_extension in (True, False):
        torch.manual_seed(5)
        with pytest.MonkeyPatch.context() as patch:  # from_float's migration on the same path as the layer
            if not use_extension:
                patch.setenv("SHARKREC_NO_EXTENSION", "1")
            layer = MixedPrecisionEmbedding.from_float(base, plan, stochastic_int=stochastic)
        layer.use_extension = use_extension
        layers.append(layer)
    return layers[0], layers[1]


def batches(count: int, single_hot: bool = False) -> list[list[FieldIds]]:
    """Batches of 16 samples; field b is multi-hot (bags of 0-3 ids) unless ``single_hot``."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        lengths = torch.randint(0, 4, (16,), generator=generator)
        b = (FieldIds(torch.randint(0, 30, (16,), generator=generator)) if single_hot else
             FieldIds(torch.randint(0, 30, (int(lengths.sum()),), generator=generator),
                      torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])))
        out.append([FieldIds(torch.randint(0, 60, (16,), generator=generator)), b,
                    FieldIds(torch.randint(0, 45, (16,), generator=generator))])
    return out


def assert_same_storage(left: MixedPrecisionEmbedding, right: MixedPrecisionEmbedding) -> None:
    a, b = left.state_dict(), right.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_construction_and_lookup_agree() -> None:
    kernel, reference = pair()
    assert_same_storage(kernel, reference)  # from_float's migration rounds the same draws the same way
    for sparse in batches(3):
        assert torch.equal(kernel(sparse), reference(sparse))


@pytest.mark.parametrize("stochastic", [False, True])
def test_sgd_steps_write_the_same_bytes(stochastic: bool) -> None:
    kernel, reference = pair(stochastic)
    optimizers = [layer.make_sparse_optimizer("sgd", 0.3) for layer in (kernel, reference)]
    for sparse in batches(4):
        for layer, optimizer in zip((kernel, reference), optimizers, strict=True):
            torch.manual_seed(11)  # the same rounding draws for both
            optimizer.zero_grad()
            (layer(sparse) ** 2).sum().backward()
            optimizer.step()
        assert_same_storage(kernel, reference)


def test_adagrad_steps_agree_to_rounding() -> None:
    """Adagrad sums mean(g²) in a different order in C++: accumulators agree to float error, rows to one code."""
    kernel, reference = pair(stochastic=False)
    optimizers = [layer.make_sparse_optimizer("adagrad", 0.1) for layer in (kernel, reference)]
    for sparse in batches(4):
        for layer, optimizer in zip((kernel, reference), optimizers, strict=True):
            optimizer.zero_grad()
            (layer(sparse) ** 2).sum().backward()
            optimizer.step()
    for i in range(3):
        sums = [opt.state[opt._anchor][f"sum_{i}"] for opt in optimizers]
        assert bool(sums[0].gt(0).any()) and torch.allclose(sums[0], sums[1], rtol=1e-5, atol=1e-7)
        rows = torch.arange(kernel.num_rows()[kernel.field_names[i]])
        left, right = kernel.read_rows(i, rows), reference.read_rows(i, rows)
        scale = left.abs().amax(1, keepdim=True)
        assert bool(((left - right).abs() <= scale / 7 + 1e-6).all())


def test_migration_moves_the_same_rows_to_the_same_bytes() -> None:
    kernel, reference = pair()
    generator = torch.Generator().manual_seed(3)
    for field, rows in enumerate(kernel.num_rows().values()):
        codes = torch.randint(0, 4, (rows,), generator=generator, dtype=torch.int8)
        torch.manual_seed(field)
        moved = kernel.set_tiers(field, codes)
        torch.manual_seed(field)
        assert reference.set_tiers(field, codes) == moved > 0
    assert_same_storage(kernel, reference)
    assert kernel.rows_moved == reference.rows_moved


def test_stochastic_writes_are_unbiased_and_seeded() -> None:
    """Many copies of one row, one SGD step: the int8 kernel's stored values average to the exact update."""
    rows, dim = 4000, 8
    table = torch.linspace(-1, 1, dim).repeat(rows, 1)
    base = FloatEmbedding.from_tables({"a": table})
    stored = []
    for seed in (0, 0, 1):
        layer = MixedPrecisionEmbedding.from_float(base, Precision.INT8, stochastic_int=False)
        layer.stochastic_int = True
        optimizer = layer.make_sparse_optimizer("sgd", 0.01)
        sparse = [FieldIds(torch.arange(rows))]
        torch.manual_seed(seed)
        (layer(sparse) * torch.linspace(0.3, 2.9, dim)).sum().backward()  # dL/de = the weights
        optimizer.step()
        stored.append(layer.read_rows(0, torch.arange(rows)))
    assert torch.equal(stored[0], stored[1]) and not torch.equal(stored[0], stored[2])
    before = base.table("a").detach()
    scale = before.abs().amax(1, keepdim=True) / 127
    start = (before / scale).round() * scale  # the round-to-nearest row the step starts from
    exact = start - 0.01 * torch.linspace(0.3, 2.9, dim)
    step = (exact.abs().amax(1, keepdim=True) / 127)[0]
    error = stored[0] - exact  # (rows, D), each within one step, mean ~0 (std step / sqrt(12 rows))
    assert bool((error.abs() <= step + 1e-6).all())
    assert bool((error.mean(0).abs() < 4 * step / (12 * rows) ** 0.5).all())
    assert bool((error.abs().mean(0) > step / 10).any())  # really rounded stochastically, not to nearest


@pytest.mark.parametrize("single_hot", [False, True])
def test_f_quant_training_matches_between_paths(single_hot: bool) -> None:
    """observe_batch + re-tier + steps: the same tiers, priorities and (SGD) bytes on both paths (a multi-hot
    batch, and an all single-hot one, whose positive flags the kernel reads per sample)."""
    base = FloatEmbedding({"a": 60, "b": 30, "c": 45}, 16, init_std=0.5, generator=torch.Generator().manual_seed(2))
    layers = []
    for use_extension in (True, False):
        torch.manual_seed(0)  # from_float rounds every row into int4 with the global generator's draws
        with pytest.MonkeyPatch.context() as patch:
            if not use_extension:
                patch.setenv("SHARKREC_NO_EXTENSION", "1")
            layer = build_embedding("f-quant", base, None, memory_budget=0.35, use_int4=True, recheck_every=2,
                                    beta=0.5)
        assert isinstance(layer, MixedPrecisionEmbedding)
        layer.use_extension = use_extension
        layers.append((layer, layer.make_sparse_optimizer("sgd", 0.2)))
    labels = torch.tensor([[1.0], [0.0]] * 8)
    for sparse in batches(6, single_hot):
        for layer, optimizer in layers:
            torch.manual_seed(4)
            optimizer.zero_grad()
            layer.observe_batch(sparse, labels)
            (layer(sparse) ** 2).sum().backward()
            optimizer.step()
    (kernel, _), (reference, _) = layers
    assert kernel.rows_moved == reference.rows_moved > 0
    assert_same_storage(kernel, reference)
