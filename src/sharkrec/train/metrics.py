"""Binary classification metrics: ROC AUC (ties handled as scikit-learn does) and log loss."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from sharkrec.errors import DataError

LOGLOSS_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, average ranks for ties.

    Equals ``sklearn.metrics.roc_auc_score``. Returns NaN when only one class is present.
    """
    labels, scores = _check(labels, scores)
    positives = labels > 0.5
    n_pos = int(positives.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores, method="average")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities, clipped to [eps, 1 - eps]."""
    labels, probabilities = _check(labels, probabilities)
    p = np.clip(probabilities.astype(np.float64), LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    y = labels.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def task_metrics(
    labels: np.ndarray, probabilities: np.ndarray, task_names: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """``{task: {"auc": ..., "logloss": ..., "positive_rate": ..., "mean_prediction": ...}}``.

    Shapes: labels and probabilities (N, T).
    """
    labels = np.asarray(labels).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities).reshape(len(probabilities), -1)
    out: dict[str, dict[str, float]] = {}
    for t, name in enumerate(task_names):
        out[name] = {
            "auc": roc_auc(labels[:, t], probabilities[:, t]),
            "logloss": log_loss(labels[:, t], probabilities[:, t]),
            "positive_rate": float(labels[:, t].mean()),
            "mean_prediction": float(probabilities[:, t].mean()),
            "samples": len(labels),
        }
    return out


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores).ravel()
    if labels.shape != scores.shape:
        raise DataError(f"labels ({labels.shape[0]}) and scores ({scores.shape[0]}) differ in length")
    if len(labels) == 0:
        raise DataError("cannot compute a metric on zero samples; the evaluation split is empty")
    if not np.isfinite(scores).all():
        raise DataError("predictions contain NaN or infinity; the model diverged (lower the learning rate)")
    return labels, scores
