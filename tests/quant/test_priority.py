"""Eq. 7 against a hand-computed sequence, lazy == eager decay, thresholds and policy errors."""

from __future__ import annotations

import pytest
import torch

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError
from sharkrec.quant.codec import Precision
from sharkrec.quant.priority import (
    FQuantPolicy,
    batch_row_weights,
    current_priority,
    lazy_update,
    tier_counts_for_budget,
    tiers_by_rank,
    tiers_by_threshold,
)


def test_batch_weights_count_positives_alpha_times() -> None:
    ids = FieldIds(torch.tensor([3, 1, 3, 3]))
    positive = torch.tensor([True, False, False, True])
    rows, weights = batch_row_weights(ids, positive, alpha=2.0)
    assert rows.tolist() == [1, 3] and weights.tolist() == [1.0, 5.0]  # row 3: 2 + 1 + 2
    bag = FieldIds(torch.tensor([0, 2, 2]), torch.tensor([0, 2, 2, 3]))  # samples: [0, 2], [], [2]
    rows, weights = batch_row_weights(bag, torch.tensor([True, True, False]), alpha=3.0)
    assert rows.tolist() == [0, 2] and weights.tolist() == [3.0, 4.0]


def test_eq7_hand_computed_sequence() -> None:
    beta, alpha = 0.5, 2.0
    priority, last = torch.zeros(2), torch.zeros(2, dtype=torch.int32)
    batches = [  # (ids, positive)
        (torch.tensor([0, 0, 1]), torch.tensor([True, False, False])),  # row0: 2+1=3, row1: 1
        (torch.tensor([1]), torch.tensor([True])),  # row1: 2
        (torch.tensor([1]), torch.tensor([False])),  # row1: 1
    ]
    for step, (ids, positive) in enumerate(batches, start=1):
        rows, weights = batch_row_weights(FieldIds(ids), positive, alpha)
        lazy_update(priority, last, rows, weights, step, 1 - beta, beta)
    # row 0: 0.5*3 = 1.5, then decays twice: 0.375
    # row 1: 0.5*1 = 0.5; 0.25 + 0.5*2 = 1.25; 0.625 + 0.5*1 = 1.125
    got = current_priority(priority, last, 3, 1 - beta)
    assert torch.allclose(got, torch.tensor([0.375, 1.125]))


@pytest.mark.parametrize("beta", [0.01, 0.3, 0.99, 1.0])
def test_lazy_decay_equals_eager(beta: float) -> None:
    generator = torch.Generator().manual_seed(0)
    rows_total, alpha = 50, 2.0
    lazy, last = torch.zeros(rows_total), torch.zeros(rows_total, dtype=torch.int32)
    eager = torch.zeros(rows_total, dtype=torch.float64)
    for step in range(1, 41):
        uniform = torch.randint(0, rows_total, (16,), generator=generator)
        ids = (uniform * uniform) // rows_total  # skewed: low ids are hot, many rows skip batches
        positive = torch.rand(16, generator=generator) < 0.3
        rows, weights = batch_row_weights(FieldIds(ids), positive, alpha)
        lazy_update(lazy, last, rows, weights, step, 1 - beta, beta)
        bracket = torch.zeros(rows_total, dtype=torch.float64).index_add_(0, rows, weights.double())
        eager = (1 - beta) * eager + beta * bracket  # Eq. 7 on every row
        if step % 7 == 0:
            assert torch.allclose(current_priority(lazy, last, step, 1 - beta).double(), eager, rtol=1e-5, atol=1e-12)


def test_thresholds_follow_eq8() -> None:
    policy = FQuantPolicy(t8=1.0, t16=10.0)
    codes = tiers_by_threshold(torch.tensor([0.0, 0.99, 1.0, 9.9, 10.0, 1e6]), policy)
    assert codes.tolist() == [Precision.INT8.code] * 2 + [Precision.FP16.code] * 2 + [Precision.FP32.code] * 2


def test_budget_counts_meet_the_budget() -> None:
    dim, rows = 16, 1000
    for budget in (0.45, 0.5, 0.9):
        counts = tier_counts_for_budget(rows, dim, FQuantPolicy(memory_budget=budget))
        held = counts[0] * (64 + 5) + counts[1] * (32 + 5) + counts[2] * (16 + 4 + 5)
        assert sum(counts) == rows and held <= budget * rows * dim * 4
        assert held > (budget - 0.05) * rows * dim * 4  # and uses most of it
    with pytest.raises(ConfigError, match="enable int4"):
        tier_counts_for_budget(rows, dim, FQuantPolicy(memory_budget=0.3))  # int8 everywhere is 25/64 = 0.39
    counts = tier_counts_for_budget(rows, 32, FQuantPolicy(memory_budget=0.25, use_int4=True))
    assert counts[3] > 0 and sum(counts) == rows


def test_rank_assignment_puts_hottest_rows_highest() -> None:
    codes = tiers_by_rank([torch.tensor([5.0, 0.0, 3.0]), torch.tensor([9.0, 1.0])], [1, 2, 2])
    assert codes[0].tolist() == [1, 2, 1] and codes[1].tolist() == [0, 2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"t8": 10.0, "t16": 10.0}, "t8 .* must be below t16"),
        ({"t8": 20.0, "t16": 10.0}, "t8 .* must be below t16"),
        ({"memory_budget": 0.0}, "memory budget"),
        ({"memory_budget": 1.5}, "memory budget"),
        ({"memory_budget": 0.5, "alpha": -1.0}, "alpha"),
        ({"memory_budget": 0.5, "beta": 0.0}, "beta"),
        ({"memory_budget": 0.5, "beta": 1.01}, "beta"),
        ({"memory_budget": 0.5, "recheck_every": 0}, "recheck_every"),
        ({}, "give thresholds"),
        ({"tier_fractions": (0.5, 0.6, 0.1)}, "tier fractions"),
    ],
)
def test_bad_policy_is_a_one_line_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        FQuantPolicy(**options)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
