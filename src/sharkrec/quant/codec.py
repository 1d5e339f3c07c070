"""Row-wise codecs for the precision tiers of F-Quantization (SHARK §3.2, Eq. 5-6).

Every function works on a block of rows ``(N, D)`` float32 and is exact about what it stores:

=========  ===============================  =====================================
precision  payload per row                  per-row metadata
=========  ===============================  =====================================
fp32       D float32                        none
fp16       D float16                        none
int8       D int8 in [-127, 127]            scale float32 = max|e| / 127
int4       ceil(D/2) uint8, two per byte    scale float32 = max|e| / 7
=========  ===============================  =====================================

**Scale.** Eq. 5 quantizes ``e_q = round(e / scale)``; Eq. 6 as printed sets
``scale = max|e| / (I_max - I_min) = max|e| / 255`` for int8, which maps the largest entry to
±255 and overflows int8. We use the symmetric scale ``max|e| / I_max`` (127 for int8, 7 for
int4): the largest entry lands exactly on ±I_max, zero is exact, no bias word is needed (the
row layout of Table 1 has room for one scale only) and the code -128 is never used, so the
range is symmetric and negation-exact. Embedding rows are centred near zero, so an asymmetric
scale + bias would buy at most one bit on skewed rows at the cost of 4 more bytes per row.

**Rounding.** ``stochastic=True`` rounds ``x`` up with probability equal to its distance from
the lower grid point, so ``E[dequantize(quantize(x))] = x`` (unbiased); small optimizer updates
then survive in expectation instead of being rounded away (Zhang et al., the paper's [34]).
fp16 stochastic rounding picks between the two neighbouring fp16 values the same way.
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor

from sharkrec.errors import parse_choice


class Precision(str, enum.Enum):
    """Storage precision of an embedding row; ``code`` orders them from most to least precise."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def code(self) -> int:
        """Tier code stored in the row map (int8): 0 = fp32, 1 = fp16, 2 = int8, 3 = int4."""
        return _ORDER.index(self)

    @classmethod
    def from_code(cls, code: int) -> Precision:
        return _ORDER[code]

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        return parse_choice(cls, value, "precision")

    @property
    def max_level(self) -> int:
        """I_max of the symmetric integer grid (0 for float tiers)."""
        return {Precision.INT8: 127, Precision.INT4: 7}.get(self, 0)

    def payload_bytes(self, dim: int) -> int:
        """Bytes of one row's values (without its scale)."""
        return {Precision.FP32: 4 * dim, Precision.FP16: 2 * dim, Precision.INT8: dim,
                Precision.INT4: (dim + 1) // 2}[self]

    def scale_bytes(self) -> int:
        return 4 if self.max_level else 0


_ORDER = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4)


def _round(x: Tensor, stochastic: bool, noise: Tensor | None = None) -> Tensor:
    """Round to integers: nearest, or up with probability frac(x) (unbiased); ``noise``: the uniform [0, 1)
    draws to use (same shape as ``x``; default ``torch.rand_like``)."""
    if stochastic:
        return torch.floor(x + (torch.rand_like(x) if noise is None else noise))
    return torch.round(x)


def quantize_symmetric(rows: Tensor, max_level: int, stochastic: bool = False,
                       noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Row-wise symmetric quantization (Eq. 5 with scale = max|e| / I_max).

    Args:
        rows: (N, D) float32.
        max_level: I_max (127 for int8, 7 for int4).
        noise: (N, D) uniform [0, 1) draws for stochastic rounding (default: torch's global generator).
    Returns:
        codes (N, D) int8 in [-I_max, I_max] and scales (N,) float32 (0 for an all-zero row).
    """
    rows = rows.float()
    scales = rows.abs().amax(dim=1) / max_level if rows.shape[1] else rows.new_zeros(rows.shape[0])  # (N,)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = _round(rows / safe.unsqueeze(1), stochastic, noise).clamp_(-max_level, max_level)
    return codes.to(torch.int8), scales


def dequantize_symmetric(codes: Tensor, scales: Tensor) -> Tensor:
    """(N, D) float32 rows ``scale · e_q`` (Eq. 5) from int8 codes (N, D) and scales (N,)."""
    return codes.float() * scales.unsqueeze(1)


def quantize_int8(rows: Tensor, stochastic: bool = False, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(N, D) float32 → int8 codes (N, D), scales (N,) float32; error ≤ scale/2 (nearest) or < scale."""
    return quantize_symmetric(rows, 127, stochastic, noise)


def pack_int4(codes: Tensor) -> Tensor:
    """Pack int8 codes in [-7, 7] (N, D) into (N, ceil(D/2)) uint8, two per byte (low nibble first)."""
    n, d = codes.shape
    nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)  # [1, 15]
    if d % 2:
        nibbles = torch.cat([nibbles, torch.full((n, 1), 8, dtype=torch.uint8)], dim=1)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4(packed: Tensor, dim: int) -> Tensor:
    """Inverse of :func:`pack_int4`: (N, ceil(D/2)) uint8 → (N, D) int8 codes."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=2).reshape(packed.shape[0], -1)[:, :dim]


def quantize_int4(rows: Tensor, stochastic: bool = False, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(N, D) float32 → packed (N, ceil(D/2)) uint8, scales (N,) float32 (scale = max|e| / 7)."""
    codes, scales = quantize_symmetric(rows, 7, stochastic, noise)
    return pack_int4(codes), scales


def dequantize_int4(packed: Tensor, scales: Tensor, dim: int) -> Tensor:
    return dequantize_symmetric(unpack_int4(packed, dim), scales)


def to_fp16(rows: Tensor, stochastic: bool = False, noise: Tensor | None = None) -> Tensor:
    """(N, D) float32 → float16, round-to-nearest or stochastic between the two fp16 neighbours.

    Values beyond the fp16 range (±65504) are clamped first so no row becomes infinite.
    """
    rows = rows.float().clamp(-65504.0, 65504.0)
    nearest = rows.to(torch.float16)
    if not stochastic:
        return nearest
    back = nearest.float()
    # the other neighbour lies on the far side of x from the nearest one
    infinity = torch.full_like(nearest, float("inf"))
    direction = torch.where(back < rows, infinity, -infinity)
    other = torch.nextafter(nearest, direction)
    other_f = other.float()
    gap = (other_f - back).abs()
    p_other = torch.where(gap > 0, (rows - back).abs() / torch.where(gap > 0, gap, torch.ones_like(gap)),
                          torch.zeros_like(gap))
    draws = torch.rand_like(rows) if noise is None else noise
    pick_other = (draws < p_other) & (back != rows) & torch.isfinite(other_f)
    return torch.where(pick_other, other, nearest)
