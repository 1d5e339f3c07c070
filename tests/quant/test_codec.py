"""Round-trip error bounds per tier and unbiased stochastic rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sharkrec.errors import ConfigError
from sharkrec.quant import codec

rows_strategy = st.integers(1, 6).flatmap(
    lambda n: st.integers(1, 9).flatmap(
        lambda d: arrays(np.float32, (n, d), elements=st.floats(-50, 50, width=32, allow_subnormal=False))
    )
)


@settings(max_examples=60, deadline=None)
@given(rows_strategy, st.booleans())
def test_int8_round_trip_within_one_step(rows: np.ndarray, stochastic: bool) -> None:
    x = torch.from_numpy(rows)
    codes, scales = codec.quantize_int8(x, stochastic)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 127
    error = (codec.dequantize_symmetric(codes, scales) - x).abs()
    bound = scales.unsqueeze(1) * (1.0 if stochastic else 0.5) + 1e-6 * x.abs().amax(1, keepdim=True) + 1e-30
    assert bool((error <= bound).all())
    # the largest entry of each row is exact
    assert torch.allclose(codec.dequantize_symmetric(codes, scales).abs().amax(1), x.abs().amax(1), rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(rows_strategy)
def test_int4_pack_round_trip(rows: np.ndarray) -> None:
    x = torch.from_numpy(rows)
    packed, scales = codec.quantize_int4(x)
    assert packed.shape == (x.shape[0], (x.shape[1] + 1) // 2) and packed.dtype == torch.uint8
    error = (codec.dequantize_int4(packed, scales, x.shape[1]) - x).abs()
    assert bool((error <= scales.unsqueeze(1) * 0.5 + 1e-6 * x.abs().amax(1, keepdim=True) + 1e-30).all())


@settings(max_examples=60, deadline=None)
@given(rows_strategy, st.booleans())
def test_fp16_round_trip_relative_error(rows: np.ndarray, stochastic: bool) -> None:
    x = torch.from_numpy(rows)
    half = codec.to_fp16(x, stochastic)
    assert half.dtype == torch.float16
    error = (half.float() - x).abs()
    ulp = 2.0 ** -10 if stochastic else 2.0 ** -11  # one fp16 ulp (relative) or half of it
    assert bool((error <= x.abs() * ulp + 2.0 ** -24).all())


def test_int8_stochastic_rounding_is_unbiased() -> None:
    torch.manual_seed(0)
    row = torch.tensor([[1.0, 0.3, -0.77, 0.0123, -0.5]])
    draws = row.repeat(20000, 1)
    codes, scales = codec.quantize_int8(draws, stochastic=True)
    mean = codec.dequantize_symmetric(codes, scales).mean(0)
    step = float(scales[0])
    assert torch.allclose(mean, row[0], atol=step * 0.02)
    nearest, _ = codec.quantize_int8(row)
    bias_nearest = (codec.dequantize_symmetric(nearest, scales[:1]) - row).abs().max()
    assert bias_nearest > step * 0.05  # nearest rounding is biased here; the test can fail


def test_fp16_stochastic_rounding_is_unbiased() -> None:
    torch.manual_seed(1)
    x = torch.full((40000, 1), 1.0 + 2.0 ** -12)  # a quarter ulp above 1.0 in fp16
    assert float(codec.to_fp16(x[:1]).float()) == 1.0
    mean = codec.to_fp16(x, stochastic=True).float().mean()
    assert abs(float(mean) - float(x[0, 0])) < 2.0 ** -10 * 0.03


def test_eq6_as_printed_would_overflow() -> None:
    row = torch.tensor([[1.0, -0.5]])
    printed_scale = row.abs().max() / 255  # Eq. 6: max|e| / (I_max - I_min)
    assert float((row / printed_scale).abs().max()) > 127
    codes, _ = codec.quantize_int8(row)
    assert int(codes.abs().max()) == 127


@pytest.mark.parametrize("value", ["fp8", "", "INT8"])
def test_unknown_precision(value: str) -> None:
    with pytest.raises(ConfigError, match="unknown precision"):
        codec.Precision.parse(value)
