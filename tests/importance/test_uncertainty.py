"""Importance std is a standard error that means something: never a silent 0, smaller with more samples."""

from __future__ import annotations

import numpy as np

from sharkrec.importance import field_importance
from sharkrec.importance.base import MIN_BLOCKS, bootstrap_std


def test_a_split_that_fits_in_one_batch_still_gets_a_positive_std(synthetic_trained) -> None:
    model, synthetic = synthetic_trained
    data = synthetic.data
    result = field_importance(model, data.test, "taylor2", batch_size=100_000)  # one batch: one mean per field
    assert result.std_method == "bootstrap"
    assert MIN_BLOCKS // 2 <= result.raw.shape[0] <= MIN_BLOCKS  # blocks of ⌈N / 64⌉ samples
    assert np.all(np.isfinite(result.std)) and np.all(result.std > 0)
    # a standard error is far below the per-sample spread and in the range of the score's own scale
    assert np.all(result.std < np.abs(result.raw).max(0))


def test_std_shrinks_as_more_samples_are_scored(synthetic_trained) -> None:
    model, synthetic = synthetic_trained
    data = synthetic.data
    few = field_importance(model, data.test, "taylor2", max_samples=len(data.test) // 8)
    many = field_importance(model, data.test, "taylor2")
    assert np.median(many.std / few.std) < 0.6  # about sqrt(1 / 8) = 0.35


def test_bootstrap_std_matches_the_standard_error_of_iid_rows() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(0.0, 2.0, size=(400, 3))
    std = bootstrap_std(rows, np.ones(400))
    np.testing.assert_allclose(std, 2.0 / np.sqrt(400), rtol=0.15)


def test_no_estimate_is_nan_with_the_reason_not_zero(synthetic_trained) -> None:
    model, synthetic = synthetic_trained
    data = synthetic.data
    lasso = field_importance(model, data.test, "lasso", epochs=2)
    assert np.all(np.isnan(lasso.std)) and lasso.std_method.startswith("none")
    assert np.all(np.isnan(bootstrap_std(np.ones((1, 3)), np.ones(1))))


def test_permutation_with_one_repeat_has_a_spread(synthetic_trained) -> None:
    model, synthetic = synthetic_trained
    data = synthetic.data
    result = field_importance(model, data.test, "permutation", repeats=1)
    assert np.all(result.std > 0)
