"""Row priority (SHARK Eq. 7) with lazy decay, and tier assignment (Eq. 8).

Eq. 7 updates every row's priority after every batch::

    w_r ← (1 − β)·w_r + β·(α·c⁺_r + c⁻_r)

where c⁺_r / c⁻_r count the positive / negative samples of the batch that use row r. Rows a batch
does not use only decay, so we store for each row the value ``w_r`` it had right after its last
update and the step ``last_r`` of that update; its value after step s is
``w_r·(1 − β)^(s − last_r)``. A batch then costs O(rows touched), and the result equals the eager
update exactly (``tests/quant/test_priority.py``).

A sample is *positive* when any of its task labels is 1 (for one task: ``labels[:, 0]``); an id
that appears twice in one sample's bag counts twice.

Tiers (Eq. 8): ``w < t8`` → int8, ``t8 ≤ w < t16`` → fp16, ``w ≥ t16`` → fp32 (and with the int4
tier, ``w < t4`` → int4). Thresholds are absolute, or derived from a memory budget / tier
fractions by ranking all rows of all fields by priority (hottest first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError
from sharkrec.quant.codec import Precision

#: bytes of the row map entry every row has: tier code (int8) + slot (int32)
ROW_MAP_BYTES = 5


@dataclass(frozen=True)
class FQuantPolicy:
    """How rows are scored and assigned to tiers during training.

    Attributes:
        alpha: α of Eq. 7, weight of a positive sample (paper: 2).
        beta: β of Eq. 7. The default 0.01 keeps a memory of ~100 batches; the paper's 0.99 keeps
            almost none (each update replaces w by ~the last batch's count). On Frappe/MovieLens
            both gave the same AUC but 0.99 moved 2.2-2.7x more rows between tiers.
        t8, t16: absolute thresholds of Eq. 8 (need t8 < t16); used when neither ``memory_budget``
            nor ``tier_fractions`` is set.
        t4: threshold below which rows go to int4 (only with ``use_int4``; needs t4 < t8).
        memory_budget: target embedding bytes as a fraction of fp32 bytes, in (0, 1].
        tier_fractions: fractions of rows per tier, hottest first: (fp32, fp16, int8[, int4]).
        fp32_share: with ``memory_budget``, the share of the bytes above the lowest tier's cost
            spent promoting the hottest rows to fp32 (the rest go to fp16, then int8 when int4 is on).
        recheck_every: K, batches between tier re-assignments (Eq. 8 re-checked, rows migrated).
        use_int4: add the int4 tier below int8 (budgets of 25% and below).
        decay: if False the priority only accumulates (w ← w + α·c⁺ + c⁻: an LFU count, used by MPE).
    """

    alpha: float = 2.0
    beta: float = 0.01
    t8: float | None = None
    t16: float | None = None
    t4: float | None = None
    memory_budget: float | None = None
    tier_fractions: tuple[float, ...] | None = None
    fp32_share: float = 0.5
    recheck_every: int = 100
    use_int4: bool = False
    decay: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"alpha is {self.alpha}; use a value >= 0 (the paper uses 2)")
        if not (0 < self.beta <= 1):
            raise ConfigError(f"beta is {self.beta}; use a value in (0, 1] such as 0.01")
        if self.memory_budget is not None and not (0 < self.memory_budget <= 1):
            raise ConfigError(
                f"memory budget is {self.memory_budget}; use a fraction of fp32 bytes in (0, 1] such as 0.5")
        if self.recheck_every < 1:
            raise ConfigError(f"recheck_every is {self.recheck_every}; use 1 or more batches")
        if not 0 <= self.fp32_share <= 1:
            raise ConfigError(f"fp32_share is {self.fp32_share}; use a value in [0, 1]")
        if self.tier_fractions is not None:
            fractions = tuple(float(f) for f in self.tier_fractions)
            want = 4 if self.use_int4 else 3
            if len(fractions) != want or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
                raise ConfigError(
                    f"tier fractions {fractions} must be {want} non-negative numbers summing to 1 "
                    f"(fp32, fp16, int8{', int4' if self.use_int4 else ''})"
                )
            object.__setattr__(self, "tier_fractions", fractions)
        if self.memory_budget is not None and self.tier_fractions is not None:
            raise ConfigError("give either a memory budget or tier fractions, not both")
        absolute = self.memory_budget is None and self.tier_fractions is None
        if absolute and (self.t8 is None or self.t16 is None):
            raise ConfigError("give thresholds t8 and t16, a memory budget (e.g. 0.5) or tier fractions")
        if self.t8 is not None and self.t16 is not None and self.t8 >= self.t16:
            raise ConfigError(f"t8 ({self.t8}) must be below t16 ({self.t16}); Eq. 8 needs t8 < t16")
        if self.use_int4 and absolute and (self.t4 is None or (self.t8 is not None and self.t4 >= self.t8)):
            raise ConfigError(f"with int4, give t4 below t8 (t4 = {self.t4}, t8 = {self.t8})")

    @property
    def tiers(self) -> tuple[Precision, ...]:
        """Tiers this policy uses, most precise first."""
        base = (Precision.FP32, Precision.FP16, Precision.INT8)
        return (*base, Precision.INT4) if self.use_int4 else base

    @property
    def lowest(self) -> Precision:
        return self.tiers[-1]

    @property
    def keep(self) -> float:
        """Per-step factor of the old priority: 1 − β (1 for an LFU count)."""
        return 1.0 - self.beta if self.decay else 1.0

    @property
    def gain(self) -> float:
        """Factor of the batch's weighted count: β (1 for an LFU count)."""
        return self.beta if self.decay else 1.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tier_fractions"] = None if self.tier_fractions is None else list(self.tier_fractions)
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FQuantPolicy:
        payload = dict(payload)
        if payload.get("tier_fractions") is not None:
            payload["tier_fractions"] = tuple(payload["tier_fractions"])
        return cls(**payload)


def batch_row_weights(ids: FieldIds, positive: Tensor, alpha: float,
                      unique: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Unique rows of one field in a batch and their ``α·c⁺ + c⁻`` (Eq. 7's bracket).

    Args:
        ids: the field's ids, (B,) or (nnz,) with (B + 1,) offsets.
        positive: (B,) bool, the sample is positive.
        unique: ``torch.unique(ids.values, return_inverse=True)`` if the caller has it already.
    Returns:
        rows (U,) int64 and weights (U,) float32.
    """
    values = ids.values.long()
    if ids.offsets is None:
        sample_positive = positive
    else:
        lengths = ids.offsets[1:] - ids.offsets[:-1]
        sample_positive = torch.repeat_interleave(positive, lengths)
    rows, inverse = torch.unique(values, return_inverse=True) if unique is None else unique
    per_value = torch.where(sample_positive, float(alpha), 1.0).float()
    weights = torch.zeros(rows.shape[0], dtype=torch.float32).index_add_(0, inverse, per_value)
    return rows, weights


def lazy_update(priority: Tensor, last_step: Tensor, rows: Tensor, weights: Tensor, step: int,
                keep: float, gain: float) -> None:
    """Apply Eq. 7 for batch number ``step`` (1, 2, ...) to the touched ``rows`` in place.

    ``priority`` (R,) float32 holds each row's value right after its last update and ``last_step``
    (R,) int64 the step of that update; untouched rows are left alone (their decay is implicit).
    """
    elapsed = (step - last_step.index_select(0, rows)).double()  # (U,)
    decayed = priority.index_select(0, rows).double() * torch.pow(keep, elapsed)
    priority.index_copy_(0, rows, (decayed + gain * weights.double()).float())
    last_step.index_fill_(0, rows, step)


def current_priority(priority: Tensor, last_step: Tensor, step: int, keep: float) -> Tensor:
    """(R,) float32 priorities after ``step`` batches (the lazy decay applied to every row).

    ``keep ** elapsed`` is looked up in a float64 table of the powers 0..max elapsed when that table is
    shorter than R (R powers become one lookup each).
    """
    elapsed = step - last_step.long()  # (R,)
    base = torch.tensor(keep, dtype=torch.float64)
    low, longest = (int(elapsed.min()), int(elapsed.max())) if elapsed.numel() else (0, 0)
    if low >= 0 and longest < elapsed.numel():
        factor = torch.pow(base, torch.arange(longest + 1, dtype=torch.float64)).index_select(0, elapsed)
    else:
        factor = torch.pow(base, elapsed.double())
    return (priority.double() * factor).float()


def tiers_by_threshold(priority: Tensor, policy: FQuantPolicy) -> Tensor:
    """(R,) int8 tier codes from absolute thresholds (Eq. 8)."""
    assert policy.t8 is not None and policy.t16 is not None  # checked by FQuantPolicy
    codes = torch.full(priority.shape, Precision.INT8.code, dtype=torch.int8)
    codes[priority >= policy.t8] = Precision.FP16.code
    codes[priority >= policy.t16] = Precision.FP32.code
    if policy.use_int4 and policy.t4 is not None:
        codes[priority < policy.t4] = Precision.INT4.code
    return codes


def row_cost(tier: Precision, dim: int) -> int:
    """Bytes one row of ``tier`` holds: payload, scale and its row map entry (what memory_report counts)."""
    return tier.payload_bytes(dim) + tier.scale_bytes() + ROW_MAP_BYTES


def tier_counts_for_budget(num_rows: int, dim: int, policy: FQuantPolicy) -> list[int]:
    """Rows per tier (most precise first) so that held bytes ≤ ``memory_budget`` · fp32 bytes.

    Start from every row in the lowest tier, then spend the remaining bytes hottest-first: a share
    ``fp32_share`` on fp32 promotions and the rest on the next tiers down, split evenly.
    Row costs include the scale and the row map entry (tier code + slot), so the budget is met by
    the bytes :meth:`MixedPrecisionEmbedding.memory_report` counts.
    """
    tiers = policy.tiers
    if policy.tier_fractions is not None:
        counts = [math.floor(f * num_rows) for f in policy.tier_fractions]
        counts[-1] = num_rows - sum(counts[:-1])
        return counts
    assert policy.memory_budget is not None
    cost = [row_cost(t, dim) for t in tiers]
    budget = policy.memory_budget * num_rows * 4 * dim
    spare = budget - num_rows * cost[-1]
    if spare < 0:
        floor = num_rows * cost[-1] / (num_rows * 4 * dim)
        raise ConfigError(
            f"memory budget {policy.memory_budget} is below the cost of every row in {tiers[-1].value} "
            f"({floor:.3f} of fp32 bytes); raise the budget{'' if policy.use_int4 else ' or enable int4'}"
        )
    upper = len(tiers) - 1
    shares = [policy.fp32_share] + [(1 - policy.fp32_share) / (upper - 1)] * (upper - 1)
    counts = [0] * len(tiers)
    left, carry = num_rows, 0.0
    for k in range(upper):
        extra = cost[k] - cost[-1]
        allotment = spare * shares[k] + carry  # unused bytes of a tier's share flow to the next tier down
        n = min(left, int(allotment // extra)) if extra > 0 else 0
        counts[k] = n
        left -= n
        carry = allotment - n * extra
    counts[-1] = left
    # bytes still unspent (every row already promoted): move rows up one tier at a time, hottest first
    for k in range(1, len(tiers)):
        step_cost = cost[k - 1] - cost[k]
        n = min(counts[k], int(carry // step_cost)) if step_cost > 0 else 0
        counts[k - 1] += n
        counts[k] -= n
        carry -= n * step_cost
    return counts


def tiers_by_rank(priorities: Sequence[Tensor], counts: Sequence[int]) -> list[Tensor]:
    """Per-field (R_f,) int8 tier codes giving the ``counts[k]`` hottest rows (all fields together) tier k.

    Ties are broken as a stable sort would (field order, then row id), so the counts are met exactly.
    Each tier boundary is found by selection (``np.partition``, O(R)) instead of sorting all rows.
    """
    flat = torch.cat([p.float() for p in priorities])  # (R,)
    total = flat.shape[0]
    codes = torch.full((total,), len(counts) - 1, dtype=torch.int8)
    boundaries = torch.cumsum(torch.tensor([int(c) for c in counts], dtype=torch.int64), 0).tolist()
    for code in range(len(counts) - 2, -1, -1):  # widest top set first; hotter tiers overwrite
        codes.masked_fill_(_hottest(flat, boundaries[code]), code)
    return list(torch.split(codes, [int(p.shape[0]) for p in priorities]))


def _hottest(values: Tensor, count: int) -> Tensor:
    """(R,) bool: the ``count`` largest values, ties taken in index order (a stable descending sort's top)."""
    total = values.shape[0]
    if count <= 0:
        return torch.zeros(total, dtype=torch.bool)
    if count >= total:
        return torch.ones(total, dtype=torch.bool)
    rank = total - count  # ascending: the count-th largest value (numpy's introselect: ~5x torch.kthvalue on CPU)
    threshold = torch.tensor(np.partition(values.detach().cpu().numpy(), rank)[rank], dtype=values.dtype)
    above = values > threshold
    room = count - int(above.sum())
    ties = (values == threshold).nonzero().squeeze(1)  # (n_ties,) in index order
    above[ties[:room]] = True  # the first ``room`` ties, as a stable sort takes them
    return above
