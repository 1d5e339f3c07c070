import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from sharkrec.errors import DataError
from sharkrec.train.metrics import log_loss, roc_auc, task_metrics


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=200))
def test_auc_equals_sklearn_including_ties(pairs):
    labels = np.array([p[0] for p in pairs], dtype=np.float32)
    scores = np.array([p[1] for p in pairs], dtype=np.float32) / 6.0  # few distinct values: many ties
    if labels.min() == labels.max():
        assert np.isnan(roc_auc(labels, scores))
        return
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_and_logloss_on_continuous_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    probs = np.clip(labels * 0.3 + rng.random(5000) * 0.7, 0, 1)
    assert roc_auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7)), rel=1e-9)


def test_perfect_and_reversed_ranking():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(DataError, match="zero samples"):
        roc_auc(np.array([]), np.array([]))
    with pytest.raises(DataError, match="NaN"):
        roc_auc(np.array([0, 1]), np.array([0.2, np.nan]))
    with pytest.raises(DataError, match="differ in length"):
        log_loss(np.array([0, 1]), np.array([0.2]))


def test_task_metrics_per_task():
    labels = np.array([[0, 1], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.6], [0.3, 0.4]], dtype=np.float32)
    out = task_metrics(labels, probs, ("click", "like"))
    assert out["click"]["auc"] == 1.0 and out["like"]["auc"] == 1.0
    assert out["click"]["positive_rate"] == 0.5
    assert out["like"]["mean_prediction"] == pytest.approx(0.525)
