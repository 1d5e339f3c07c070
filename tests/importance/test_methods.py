"""Baselines behind the common interface, the result type, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from sharkrec.errors import ConfigError, DataError, SharkrecError
from sharkrec.importance import METHODS, field_importance, get_method
from sharkrec.importance.base import block_size


def test_registry_has_every_method() -> None:
    get_method("default")
    assert {"taylor", "taylor-abs", "taylor2", "taylor-logit", "permutation", "exact", "lasso"} <= set(METHODS)


def test_permutation_is_deterministic_for_a_seed(toy_two_task) -> None:
    model, data = toy_two_task
    first = field_importance(model, data.test, "permutation", repeats=2, seed=7, batch_size=128)
    again = field_importance(model, data.test, "permutation", repeats=2, seed=7, batch_size=128)
    other = field_importance(model, data.test, "permutation", repeats=2, seed=8, batch_size=128)
    np.testing.assert_array_equal(first.scores, again.scores)
    assert not np.array_equal(first.scores, other.scores)
    # one row per block of samples (the repeats averaged in it), so the standard error is defined
    assert first.raw.shape == (-(-len(data.test) // block_size(len(data.test), 128)), model.num_fields)
    assert np.all(np.isfinite(first.std)) and np.all(first.std >= 0)


def test_result_round_trips_to_json(toy_two_task) -> None:
    model, data = toy_two_task
    result = field_importance(model, data.test, "taylor", fields=["a", "dense"])
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["method"] == "taylor"
    assert np.isnan(result.score("b")) and not np.isnan(result.score("a"))
    assert result.ranking()[:2] in (("a", "dense"), ("dense", "a"))


def test_exact_and_default_agree_on_synthetic(synthetic_trained) -> None:
    model, synthetic = synthetic_trained
    split = synthetic.data.test
    exact = field_importance(model, split, "exact", draws=32)
    default = field_importance(model, split)
    assert spearmanr(exact.scores, default.scores)[0] > 0.8


def test_lasso_keeps_the_strongest_field(synthetic_trained) -> None:
    model, synthetic = synthetic_trained
    result = field_importance(model, synthetic.data.valid, "lasso", epochs=4)
    assert np.all((result.scores >= 0) & (result.scores <= 1.5))
    noise = [result.score(f.name) for f in synthetic.ground_truth.fields if f.role.value == "noise"]
    assert result.score("C2") > max(noise)


@pytest.mark.parametrize(
    ("call", "error", "fix"),
    [
        (dict(method="taylor-magic"), ConfigError, "use one of"),
        (dict(method="taylor", fields=["C99"]), ConfigError, "known fields"),
        (dict(method="permutation", repeats=0), ConfigError, "1 or more"),
        (dict(method="exact", draws=0), ConfigError, "1 or more"),
        (dict(method="lasso", strength=-1.0), ConfigError, "positive"),
        (dict(method="taylor", batch_size=0), ConfigError, "1 or more"),
        (dict(method="taylor", task_weights=[1.0, 1.0]), ConfigError, "one non-negative weight per task"),
        (dict(method="exact", bogus=1), ConfigError, "does not take"),
    ],
)
def test_bad_input_is_a_one_line_error(synthetic_trained, call, error, fix) -> None:
    model, synthetic = synthetic_trained
    with pytest.raises(error) as caught:
        field_importance(model, synthetic.data.test, **call)
    assert isinstance(caught.value, SharkrecError)
    assert fix in str(caught.value) and "\n" not in str(caught.value)


def test_data_of_another_schema_is_refused(synthetic_trained, toy_two_task) -> None:
    model, _ = synthetic_trained
    _, toy = toy_two_task
    with pytest.raises(SharkrecError) as caught:
        field_importance(model, toy.test, "taylor")
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, (DataError, ConfigError))
