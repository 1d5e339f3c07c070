"""The stored-precision kernels agree with the pure-PyTorch reference for every tier mix and id pattern."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharkrec.data.batch import FieldIds
from sharkrec.errors import DataError
from sharkrec.export.engine import ServingEmbedding, pack_int8
from sharkrec.export.fused import PackedPools, extension
from sharkrec.export.tables import FieldTables, ServingVocabulary, TierPool
from sharkrec.quant import codec
from sharkrec.quant.codec import Precision


def make_field(name: str, counts: tuple[int, int, int, int], dim: int, seed: int) -> FieldTables:
    generator = torch.Generator().manual_seed(seed)
    pools = []
    for precision, n in zip(Precision, counts, strict=True):
        if n == 0:
            continue
        values = torch.randn(n, dim, generator=generator)
        scale = None
        if precision is Precision.FP32:
            payload = values
        elif precision is Precision.FP16:
            payload = values.half()
        elif precision is Precision.INT8:
            payload, scale = codec.quantize_int8(values)
        else:
            payload, scale = codec.quantize_int4(values)
        pools.append(TierPool(precision, payload, scale, traffic=n * (4 - precision.code)))
    rows = sum(counts)
    return FieldTables(name, tuple(pools), ServingVocabulary(name, "int", torch.arange(1, rows).numpy(), 0))


@settings(max_examples=40, deadline=None)
@given(counts=st.tuples(*[st.integers(0, 6)] * 4).filter(lambda c: sum(c) > 0),
       dim=st.sampled_from([4, 5, 8]), batch=st.integers(0, 12), seed=st.integers(0, 10**6),
       multi_hot=st.booleans())
def test_kernels_match_reference(counts, dim, batch, seed, multi_hot):
    field = make_field("f", counts, dim, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    if multi_hot:
        lengths = torch.randint(0, 4, (batch,), generator=generator)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        ids = FieldIds(torch.randint(0, field.rows, (int(offsets[-1]),), generator=generator), offsets)
    else:
        ids = FieldIds(torch.randint(0, field.rows, (batch,), generator=generator))
    constant = torch.randn(dim, generator=generator)
    args = (["f", "gone"], [field], {"gone": constant}, dim)
    bags = ["f"] if multi_hot else []
    slow = ServingEmbedding(*args, kernel="reference")([ids, FieldIds(torch.zeros(batch, dtype=torch.int64))])
    for kernel in ("fused", "fbgemm"):
        fast = ServingEmbedding(*args, kernel=kernel, multi_hot=bags)([ids, FieldIds(torch.zeros(batch,
                                                                                                 dtype=torch.int64))])
        assert fast.shape == (batch, 2, dim) and fast.dtype == torch.float32
        torch.testing.assert_close(fast, slow, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(fast[:, 1], constant.expand(batch, dim))


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.tuples(*[st.integers(0, 5)] * 4).filter(lambda c: sum(c) > 0), min_size=1, max_size=4),
       dim=st.sampled_from([1, 4, 5, 8, 16, 19]), batch=st.integers(0, 12), seed=st.integers(0, 10**6))
def test_fused_kernel_and_pytorch_fallback_agree_with_reference(counts, dim, batch, seed):
    """The C++ kernel and the PyTorch reading of the packed pools give the reference values exactly."""
    fields = [make_field(f"f{k}", c, dim, seed + k) for k, c in enumerate(counts)]
    generator = torch.Generator().manual_seed(seed)
    slots = torch.stack([torch.randint(0, f.rows, (batch,), generator=generator) for f in fields], dim=1) \
        if batch else torch.zeros(0, len(fields), dtype=torch.int64)
    pools = PackedPools.build(fields, dim)
    reference = ServingEmbedding([f.name for f in fields], fields, {}, dim, kernel="reference")(
        [FieldIds(slots[:, k].contiguous()) for k in range(len(fields))])
    assert extension() is not None, "the C++ kernel did not build; install a C++ compiler"
    torch.testing.assert_close(pools.gather(slots), reference, atol=0, rtol=0)
    torch.testing.assert_close(pools.gather_torch(slots), reference, atol=0, rtol=0)


@settings(max_examples=30, deadline=None)
@given(counts=st.tuples(*[st.integers(0, 5)] * 4).filter(lambda c: sum(c) > 0),
       dim=st.sampled_from([1, 5, 8, 16]), batch=st.integers(0, 10), seed=st.integers(0, 10**6))
def test_fused_bags_agree_with_reference(counts, dim, batch, seed):
    """Multi-hot bags (empty ones too) summed by the C++ kernel and by the PyTorch path equal the reference."""
    fields = [make_field("other", (1, 1, 1, 1), dim, seed), make_field("bag", counts, dim, seed + 1)]
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (batch,), generator=generator)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    values = torch.randint(0, fields[1].rows, (int(offsets[-1]),), generator=generator)
    pools = PackedPools.build(fields, dim)
    reference = ServingEmbedding(["bag"], [fields[1]], {}, dim, kernel="reference")([FieldIds(values, offsets)])[:, 0]
    torch.testing.assert_close(pools.bag(values, offsets, 1), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pools.bag(values, offsets, 1, use_extension=False), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match="field 'bag' has slots outside"):
        pools.bag(torch.tensor([fields[1].rows]), torch.tensor([0, 1]), 1)


def test_fused_pools_store_one_scale_word_per_quantized_row():
    fields = [make_field("a", (1, 2, 3, 4), 8, 0), make_field("b", (0, 0, 5, 0), 8, 1)]
    pools = PackedPools.build(fields, 8)
    assert pools.fp32.shape == (1, 8) and pools.fp16.shape == (2, 8)
    assert pools.int8.shape == (8, 4 + 8) and pools.int4.shape == (4, 4 + 4)
    assert pools.nbytes == 1 * 32 + 2 * 16 + 8 * 12 + 4 * 8
    assert pools.ends.tolist() == [[1, 3, 6, 10], [0, 0, 5, 5]]


@pytest.mark.parametrize("use_extension", [True, False])
def test_fused_slots_outside_a_field_name_the_field(use_extension):
    pools = PackedPools.build([make_field("a", (2, 0, 0, 0), 4, 0), make_field("b", (0, 1, 2, 0), 4, 1)], 4)
    with pytest.raises(DataError, match=r"field 'b' has slots outside 0\.\.2"):
        pools.gather(torch.tensor([[0, 1], [1, 3]]), use_extension=use_extension)
    with pytest.raises(DataError, match=r"field 'a' has slots outside 0\.\.1"):
        pools.gather(torch.tensor([[-1, 0]]), use_extension=use_extension)


def test_fused_field_given_bags_is_a_clear_error():
    embedding = ServingEmbedding(["f"], [make_field("f", (2, 2, 0, 0), 4, 0)], {}, 4)
    with pytest.raises(DataError, match="takes one value per sample"):
        embedding([FieldIds(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))])


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 20), dim=st.integers(1, 16), seed=st.integers(0, 10**6))
def test_int8_packing_reads_our_rows_exactly(rows, dim, seed):
    values = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)) * 3
    codes, scale = codec.quantize_int8(values)
    packed = pack_int8(codes, scale)
    assert packed.shape == (rows, dim + 8) and packed.dtype == torch.uint8
    ids = torch.arange(rows)
    read = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(packed, ids, ids, False, 0, False, None, None, False)
    torch.testing.assert_close(read, codec.dequantize_symmetric(codes, scale), atol=1e-6, rtol=1e-6)


def test_slots_outside_a_field_are_a_clear_error():
    field = make_field("f", (2, 2, 2, 0), 4, 0)
    embedding = ServingEmbedding(["f"], [field], {}, 4)
    with pytest.raises(DataError, match=r"field 'f' has slots outside 0\.\.5"):
        embedding([FieldIds(torch.tensor([0, 6]))])


@pytest.mark.parametrize("use_extension", [True, False])
def test_fused_gather_writes_into_chosen_columns_of_a_view(use_extension):
    fields = [make_field("a", (1, 2, 3, 4), 8, 0), make_field("b", (2, 0, 3, 0), 8, 1)]
    pools = PackedPools.build(fields, 8)
    slots = torch.tensor([[0, 4], [9, 1], [5, 2]])
    matrix = torch.full((3, 5, 8), -1.0)
    pools.gather(slots, matrix[:, 1:], torch.tensor([3, 0]), use_extension=use_extension)
    want = pools.gather_torch(slots)
    torch.testing.assert_close(matrix[:, 4], want[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(matrix[:, 1], want[:, 1], atol=0, rtol=0)
    assert (matrix[:, [0, 2, 3]] == -1).all()  # untouched
