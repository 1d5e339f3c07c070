"""Algorithm 1 of SHARK (Fast Permutation): score fields, drop the weakest tables, fine-tune, evaluate, repeat.

::

    result = prune(model, data, method="default", target_memory=0.6)
    result.model      # the pruned DLRM (removed tables gone, their ids never read)
    result.plan       # PruningPlan: kept / removed fields and the scores of each step
    result.history    # one entry per step: fields, bytes, AUC / logloss per task and split, seconds

Stopping (§3.1.3): a step is not taken when it would remove more than ``1 − target_memory`` of the
embedding bytes; a step whose test AUC falls below ``t_accuracy ×`` the base model's test AUC (for any
task) is undone and ends the run (its entry stays in ``history`` with ``accepted: false``), so the
returned model always meets T_accuracy. Algorithm 1 as printed returns that last, failing model.

Departures from the paper, by choice: fields are scored (and E[v_i] measured) on the validation split,
not on the test split that also decides stopping; the dense field is never removed (it owns no table).
A fixed removal order (``order=[...]`` or ``method="random"``) replaces the scoring for baselines.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sharkrec.data.dataset import EncodedSplit, PreparedData
from sharkrec.errors import ConfigError
from sharkrec.importance.base import field_importance, get_method
from sharkrec.model.dlrm import DENSE_FIELD, DLRM
from sharkrec.prune.plan import PruningPlan, check_removable, removable_fields, remove_fields
from sharkrec.train.fine_tune import DEFAULT_FINE_TUNE
from sharkrec.train.trainer import TrainConfig, evaluate, fit_unless_worse, mean_logloss

RANDOM = "random"
ORDER = "order"


@dataclass(frozen=True)
class PruneConfig:
    """Settings of :func:`prune`.

    Attributes:
        target_memory: share of the model's embedding bytes to keep, in (0, 1) (``1 − rate_c``).
        t_accuracy: a step must keep every task's test AUC ≥ t_accuracy × the base test AUC, in (0, 1].
        fields_per_step: f, tables removed per step.
        fine_tune_fraction: share of the training split sampled as support data each step (0: no fine-tune).
        fine_tune: training settings of the fine-tune on the support sample (its seed is offset by the step);
            default :data:`sharkrec.train.fine_tune.DEFAULT_FINE_TUNE`, one pass.
        batch_size: scoring batch size.
        max_samples: score (and measure E[v_i]) on at most this many samples of ``score_split``.
        score_split: split the scores and the constants E[v_i] come from.
        keep: fields never removed.
        seed: drives the support samples, the scoring draws and the random order.
        method_options: extra options of the importance method (e.g. ``{"repeats": 1}``).
    """

    target_memory: float = 0.5
    t_accuracy: float = 0.9925
    fields_per_step: int = 1
    fine_tune_fraction: float = 0.1
    fine_tune: TrainConfig = DEFAULT_FINE_TUNE
    batch_size: int = 4096
    max_samples: int | None = None
    score_split: str = "valid"
    keep: tuple[str, ...] = ()
    seed: int = 0
    method_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", tuple(str(k) for k in self.keep))
        checks = [
            (0.0 < self.target_memory < 1.0,
             f"target memory {self.target_memory} must be in (0, 1): the share of embedding bytes to keep, e.g. 0.6"),
            (0.0 < self.t_accuracy <= 1.0,
             f"T_accuracy {self.t_accuracy} must be in (0, 1]: a share of the base AUC, e.g. 0.9925"),
            (self.fields_per_step >= 1, f"fields per step {self.fields_per_step} must be 1 or more"),
            (0.0 <= self.fine_tune_fraction <= 1.0,
             f"fine-tune fraction {self.fine_tune_fraction} must be in [0, 1], e.g. 0.1"),
            (self.batch_size >= 1, f"batch size {self.batch_size} must be 1 or more"),
            (self.max_samples is None or self.max_samples >= 1, f"max samples {self.max_samples} must be 1 or more"),
            (self.score_split in ("train", "valid", "test"),
             f"score split {self.score_split!r} must be train, valid or test"),
        ]
        for ok, message in checks:
            if not ok or (isinstance(ok, float) and math.isnan(ok)):
                raise ConfigError(message)


@dataclass(frozen=True)
class PruneResult:
    """The pruned model, its plan, one history entry per step (entry 0 is the base model), and why it stopped."""

    model: DLRM
    plan: PruningPlan
    history: tuple[dict[str, Any], ...]
    stopped_because: str


def check_model_matches(model: DLRM, data: PreparedData) -> None:
    """One-line error when ``data`` does not have the model's fields, dense inputs, tasks or rows."""
    if tuple(model.sparse_names) != tuple(data.schema.sparse_names):
        raise ConfigError(
            f"the data does not match the model's schema (model sparse fields {list(model.sparse_names)}, data "
            f"{list(data.schema.sparse_names)}); use the format and schema the model was trained with"
        )
    if model.num_dense != len(data.schema.dense) or tuple(model.task_names) != tuple(data.schema.label_names):
        raise ConfigError(
            f"the data does not match the model's schema (model: {model.num_dense} dense features, tasks "
            f"{list(model.task_names)}; data: {len(data.schema.dense)}, {list(data.schema.label_names)}); "
            "use the data the model was trained with"
        )
    removed = set(removable_fields(model)) ^ set(model.sparse_names)
    model_field_rows = model.field_rows()
    for name, rows in data.cardinalities.items():
        model_rows = model_field_rows[name]
        if name not in removed and model_rows != rows:
            raise ConfigError(
                f"field {name!r} has {rows} rows in the data but {model_rows} in the model; "
                "encode the data with the model's vocabularies"
            )


def prune(model: DLRM, data: PreparedData, method: str = "default", *, order: Sequence[str] | None = None,
          config: PruneConfig | None = None, on_step: Callable[[dict[str, Any]], None] | None = None,
          **settings: Any) -> PruneResult:
    """Run Algorithm 1 on ``model`` (not changed) and return the pruned model, plan and history.

    Args:
        model: a trained DLRM (possibly pruned already).
        data: its data; train (support samples), valid (scores, E[v_i]) and test (stopping) are used.
        method: an importance method name (``"default"`` = taylor2), or ``"random"`` for a random order.
        order: remove fields in this order instead of scoring (``method`` is then only a label).
        config: a :class:`PruneConfig`, or give its fields as keyword ``settings``.
        on_step: called with each history entry as it is made (progress output).
    """
    if config is not None and settings:
        raise ConfigError("give either config or keyword settings to prune, not both")
    config = config or PruneConfig(**settings)
    check_model_matches(model, data)
    check_removable(model, [k for k in config.keep if k != DENSE_FIELD])
    candidates_at_start = [f for f in removable_fields(model) if f not in config.keep]
    label = method
    if order is not None:
        order = [str(name) for name in order]
        check_removable(model, order)
        label = method if method not in ("default",) else ORDER
    elif method == RANDOM:
        rng = np.random.default_rng(config.seed)
        order = [candidates_at_start[i] for i in rng.permutation(len(candidates_at_start))]
    else:
        label = get_method(method).name  # checks the name before any work
    blocked = sorted(set(order or ()) & set(config.keep))
    if blocked:
        raise ConfigError(f"fields {blocked} are both in the removal order and in keep; drop them from one")

    task_names = data.schema.label_names
    score_split = data.split(config.score_split)
    if config.max_samples is not None and config.max_samples < len(score_split):
        score_split = score_split.subset(np.arange(config.max_samples))
    started = time.perf_counter()
    base_bytes = model.embedding.embedding_bytes()
    entry = _entry(0, model, data, task_names, base_bytes, [], {}, accepted=True, started=started)
    base_auc = {t: entry["metrics"]["test"][t]["auc"] for t in task_names}
    floor = {t: config.t_accuracy * auc for t, auc in base_auc.items()}
    history = [entry]
    if on_step is not None:
        on_step(entry)
    current = model
    removed: list[str] = []
    step_scores: list[dict[str, float]] = []
    queue = list(order) if order is not None else None
    stopped_because = ""
    while not stopped_because:
        step = len(step_scores) + 1
        tick = time.perf_counter()
        candidates = [f for f in removable_fields(current) if f not in config.keep]
        scores: dict[str, float] = {}
        if queue is not None:
            chosen = queue[: config.fields_per_step]
            queue = queue[config.fields_per_step:]
        elif candidates:
            importance = field_importance(current, score_split, method, batch_size=config.batch_size,
                                          fields=candidates, seed=config.seed + step, **dict(config.method_options))
            scores = {f: importance.score(f) for f in candidates}
            chosen = sorted(candidates, key=lambda f: scores[f])[: config.fields_per_step]  # stable: model order
        else:
            chosen = []
        if not chosen:
            stopped_because = "no fields left to remove"
            break
        score_seconds = time.perf_counter() - tick
        trial = remove_fields(current, chosen, score_split, config.batch_size)
        if 1.0 - trial.embedding.embedding_bytes() / base_bytes > 1.0 - config.target_memory + 1e-12:
            stopped_because = "target memory: the next step would remove more than 1 - target of the bytes"
            break
        tick = time.perf_counter()
        trial, fine_tune = _fine_tune(trial, data, config, step)
        fine_tune_seconds = time.perf_counter() - tick
        entry = _entry(step, trial, data, task_names, base_bytes, chosen, scores, accepted=True, started=started)
        entry["fine_tune"] = fine_tune
        entry["seconds_detail"] = {"score": score_seconds, "fine_tune": fine_tune_seconds}
        entry["accepted"] = all(entry["metrics"]["test"][t]["auc"] >= floor[t] for t in task_names)
        history.append(entry)
        if on_step is not None:
            on_step(entry)
        if not entry["accepted"]:
            stopped_because = f"T_accuracy: test AUC fell below {config.t_accuracy} x the base AUC (step undone)"
            break
        current, removed = trial, [*removed, *chosen]
        step_scores.append(scores)
    kept = tuple(f for f in current.field_names if f not in removed)
    plan = PruningPlan(method=label, kept=kept, removed=tuple(removed), scores=tuple(step_scores))
    if current is model:
        current = remove_fields(model, [], score_split)  # a copy: the caller's model is never returned
    return PruneResult(current, plan, tuple(history), stopped_because)


def _fine_tune(model: DLRM, data: PreparedData, config: PruneConfig, step: int) -> tuple[DLRM, dict[str, Any]]:
    """Algorithm 1, lines 8-9: train briefly on a fresh support sample of the training split.

    Guarded by the validation split (:func:`fit_unless_worse`): when the fine-tuned weights have a higher
    validation log loss than before, the step keeps the weights it had (measured on Frappe: with a fresh
    optimizer state a 10% support sample can cost more than the removed table did).
    """
    if config.fine_tune_fraction == 0 or len(data.train) == 0:
        return model, {"steps": 0, "kept": False}
    size = max(1, round(config.fine_tune_fraction * len(data.train)))
    rng = np.random.default_rng([config.seed, step])
    support: EncodedSplit = data.train.subset(np.sort(rng.choice(len(data.train), size, replace=False)))
    settings = dataclasses.replace(config.fine_tune, seed=config.fine_tune.seed + step)
    valid = data.valid if len(data.valid) > 0 else support
    model, summary = fit_unless_worse(model, settings, data.schema.label_names, support, valid)
    return model, {"steps": summary["steps"], "kept": summary["kept"],
                   "valid_logloss_before": mean_logloss(summary["valid_before"]),
                   "valid_logloss_after": mean_logloss(summary["valid_after"])}


def _entry(step: int, model: DLRM, data: PreparedData, task_names: tuple[str, ...], base_bytes: int,
           chosen: Sequence[str], scores: Mapping[str, float], *, accepted: bool, started: float) -> dict[str, Any]:
    """One history entry: fields, bytes and test / valid metrics of ``model`` after ``step``."""
    embedding = model.embedding
    removed = list(embedding.removed_fields())
    size = embedding.embedding_bytes()
    metrics = {name: evaluate(model, data.split(name), task_names) for name in ("test", "valid")
               if len(data.split(name)) > 0}
    return {
        "step": step,
        "removed": list(chosen),
        "removed_total": removed,
        "kept": [f for f in model.field_names if f not in removed],
        "num_fields_kept": len(model.field_names) - len(removed),
        "embedding_bytes": int(size),
        "removed_share": 1.0 - size / base_bytes if base_bytes else 0.0,
        "scores": dict(scores),
        "metrics": metrics,
        "accepted": accepted,
        "seconds": time.perf_counter() - started,
    }
