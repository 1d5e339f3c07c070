"""The stored-precision kernels agree with the pure-PyTorch reference for every tier mix and id pattern."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharkrec.data.batch import FieldIds
from sharkrec.errors import DataError
from sharkrec.export.engine import ServingEmbedding, pack_int8
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
    fast = ServingEmbedding(*args)([ids, FieldIds(torch.zeros(batch, dtype=torch.int64))])
    slow = ServingEmbedding(*args, kernel="reference")([ids, FieldIds(torch.zeros(batch, dtype=torch.int64))])
    assert fast.shape == (batch, 2, dim) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fast[:, 1], constant.expand(batch, dim))


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
