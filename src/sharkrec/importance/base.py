"""One interface and one result type for every field-importance method (captum / scikit-learn style).

A method is a class registered under a name; ``Method(model, **options).attribute(split)`` returns a
:class:`FieldImportance`, and :func:`field_importance` does the same by name::

    result = field_importance(model, data.valid, method="taylor-logit", batch_size=4096)
    result.ranking()        # field names, most important first

Every score estimates the same quantity, SHARK Eq. 1 / 2: the expected increase of the (task-weighted
binary cross-entropy) loss per sample when a field's vector is replaced by one drawn from the field's
data distribution. Larger means more important.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from sharkrec.data.batch import Batch
from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.protocol import FieldPathModel

DEFAULT_METHOD = "taylor2"


@dataclass(frozen=True)
class FieldImportance:
    """Scores of F fields by one method.

    Attributes:
        method: registered name of the method.
        field_names: the F scored fields, in model order (``"dense"`` first when present).
        scores: (F,) mean score per sample over all scored samples (larger = more important).
        std: (F,) standard error of each score: the spread of the sample-weighted mean over
            ``BOOTSTRAP_RESAMPLES`` bootstrap resamples of the rows of ``raw`` (blocks of samples), so it
            shrinks as more samples are scored. NaN where a method has no estimate (see ``std_method``).
        raw: (R, F) mean scores of R blocks of samples (at least ``MIN_BLOCKS`` when there are enough
            samples; one block per batch on large splits); lasso keeps one row per epoch instead.
        samples: samples the scores average over.
        seconds: wall-clock time of the whole computation.
        passes: forward-equivalent passes over the scored samples (see each method's docstring).
    """

    method: str
    field_names: tuple[str, ...]
    scores: np.ndarray
    std: np.ndarray
    raw: np.ndarray
    samples: int
    seconds: float
    passes: float
    std_method: str = "bootstrap"

    def ranking(self) -> tuple[str, ...]:
        """Field names by descending score (ties keep field order)."""
        order = np.argsort(-self.scores, kind="stable")
        return tuple(self.field_names[i] for i in order)

    def score(self, field_name: str) -> float:
        return float(self.scores[check_fields(self.field_names, [field_name])[0]])

    def as_dict(self) -> dict[str, float]:
        """``{field: score}`` in field order."""
        return {name: float(s) for name, s in zip(self.field_names, self.scores, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (raw per-batch values included)."""
        return {
            "method": self.method,
            "fields": list(self.field_names),
            "scores": self.as_dict(),
            "std": {name: float(s) for name, s in zip(self.field_names, self.std, strict=True)},
            "std_method": self.std_method,
            "ranking": list(self.ranking()),
            "raw": self.raw.tolist(),
            "samples": self.samples,
            "seconds": self.seconds,
            "passes": self.passes,
        }


def check_fields(known: Sequence[str], wanted: Sequence[str] | None) -> list[int]:
    """Positions of ``wanted`` in ``known`` (all of them for ``None``); one-line error for an unknown name."""
    if wanted is None:
        return list(range(len(known)))
    positions = []
    for name in wanted:
        if name not in known:
            raise ConfigError(f"field {name!r} is not in the model; known fields: {', '.join(known)}")
        positions.append(list(known).index(name))
    if not positions:
        raise ConfigError("no fields to score; give at least one field name or None for all")
    return positions


class ImportanceMethod(abc.ABC):
    """Base class: subclasses set ``name`` (registered on definition) and implement :meth:`_attribute`.

    Args:
        model: a trained field-path model (:class:`~sharkrec.model.protocol.FieldPathModel`: a DLRM or a wrapped
            user network).
        task_weights: (T,) weights of the tasks' losses; default 1 per task.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            METHODS[cls.name] = cls

    def __init__(self, model: FieldPathModel, *, task_weights: Sequence[float] | None = None) -> None:
        self.model = model
        weights = tuple(float(w) for w in (task_weights or (1.0,) * model.num_tasks))
        if len(weights) != model.num_tasks or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(
                f"task weights {list(weights)} do not fit the model's {model.num_tasks} tasks "
                f"{list(model.task_names)}; give one non-negative weight per task"
            )
        self.task_weights = torch.tensor(weights, dtype=torch.float32)  # (T,)

    def attribute(self, split: EncodedSplit, *, batch_size: int = 4096, fields: Sequence[str] | None = None,
                  max_samples: int | None = None, seed: int = 0, **options: Any) -> FieldImportance:
        """Score the fields on ``split`` (its first ``max_samples`` samples, or all).

        ``fields`` restricts scoring to these names (the other fields get score NaN); ``seed`` drives
        every random draw, so a call is deterministic.
        """
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size} must be 1 or more")
        if len(split) == 0:
            raise DataError("the split to score is empty; score on a split with samples")
        if split.num_tasks != self.model.num_tasks:
            raise DataError(
                f"the data has {split.num_tasks} label columns but the model has {self.model.num_tasks} tasks; "
                "score with data of the model's schema"
            )
        positions = check_fields(self.model.field_names, fields)
        if max_samples is not None:
            if max_samples < 1:
                raise ConfigError(f"max_samples {max_samples} must be 1 or more")
            if max_samples < len(split):
                split = split.subset(np.arange(max_samples))
        started = time.perf_counter()
        was_training = self.model.training
        self.model.eval()  # no dropout: per-sample terms must not depend on the batch
        try:
            raw, weights, samples, passes = self._attribute(split, batch_size, positions, seed, **options)
        finally:
            self.model.train(was_training)
        return make_result(self.name, self.model.field_names, positions, raw, weights, samples,
                           time.perf_counter() - started, passes, self.std_method)

    @abc.abstractmethod
    def _attribute(self, split: EncodedSplit, batch_size: int, positions: list[int], seed: int,
                   **options: Any) -> tuple[np.ndarray, np.ndarray, int, float]:
        """(raw (R, len(positions)) block means, weights (R,) samples per row, samples, passes).

        Rows are blocks of :func:`block_size` samples (:func:`block_means`), so ``std`` is a bootstrap
        standard error; a method whose rows are not sample blocks sets :attr:`std_method`.
        """

    #: how ``std`` is estimated from this method's raw rows ("bootstrap", or "none: <why>")
    std_method: ClassVar[str] = "bootstrap"

    def loss_per_sample(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(B, T) logits, (B, T) labels → (B,) task-weighted BCE."""
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (bce * self.task_weights).sum(-1)


#: blocks of samples a split is cut into (when it has that many samples) so the bootstrap has rows to draw
MIN_BLOCKS = 64
BOOTSTRAP_RESAMPLES = 200


def block_size(samples: int, batch_size: int) -> int:
    """Samples per row of ``raw``: enough blocks for a bootstrap (:data:`MIN_BLOCKS`), never more than a batch."""
    return max(1, min(batch_size, -(-samples // MIN_BLOCKS)))


def block_means(values: Tensor, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample scores (B, F) of one batch → (rows (⌈B/block⌉, F) block means, (rows,) block sizes)."""
    values = values.double()
    full = len(values) // block * block
    means = [values[:full].reshape(-1, block, values.shape[1]).mean(1)]  # (full / block, F) in one op
    sizes = [np.full(full // block, float(block))]
    if full < len(values):  # the batch's last, shorter block
        means.append(values[full:].mean(0, keepdim=True))
        sizes.append(np.array([float(len(values) - full)]))
    return torch.cat(means).numpy(), np.concatenate(sizes)


def bootstrap_std(raw: np.ndarray, weights: np.ndarray, seed: int = 0) -> np.ndarray:
    """Standard error (F,) of the weighted mean of ``raw`` (R, F) rows, from resampling rows with replacement.

    NaN when fewer than two rows carry weight: one number has no spread to measure, and 0 would read as
    certainty.
    """
    used = weights > 0
    raw, weights = raw[used], weights[used]
    if len(raw) < 2:
        return np.full(raw.shape[1], np.nan)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(raw), size=(BOOTSTRAP_RESAMPLES, len(raw)))  # (S, R)
    w = weights[picks]  # (S, R)
    means = np.einsum("sr,srf->sf", w, raw[picks]) / w.sum(1, keepdims=True)  # (S, F)
    return means.std(0, ddof=1)


def make_result(method: str, field_names: Sequence[str], positions: list[int], raw: np.ndarray,
                weights: np.ndarray, samples: int, seconds: float, passes: float,
                std_method: str = "bootstrap") -> FieldImportance:
    """Assemble a :class:`FieldImportance`: sample-weighted mean of the raw rows and its bootstrap standard error
    (``std_method="bootstrap"``), or NaN std with ``std_method`` saying why; NaN for unscored fields."""
    count = len(field_names)
    raw = np.asarray(raw, dtype=np.float64).reshape(len(weights), len(positions))
    w = np.asarray(weights, dtype=np.float64)
    mean = (raw * w[:, None]).sum(0) / w.sum()
    std = bootstrap_std(raw, w) if std_method == "bootstrap" else np.full(len(positions), np.nan)
    if std_method == "bootstrap" and np.isnan(std).all():
        std_method = "none: one block of samples"
    scores, stds, full_raw = np.full(count, np.nan), np.full(count, np.nan), np.full((len(w), count), np.nan)
    scores[positions], stds[positions], full_raw[:, positions] = mean, std, raw
    return FieldImportance(method, tuple(field_names), scores, stds, full_raw, int(samples), float(seconds),
                           float(passes), std_method)


def sweep(split: EncodedSplit, batch_size: int) -> Iterator[Batch]:
    """The split's batches in order, without shuffling (scores are sums over samples)."""
    return split.batches(batch_size, shuffle=False)


METHODS: dict[str, type[ImportanceMethod]] = {}


def get_method(name: str) -> type[ImportanceMethod]:
    """The registered class of ``name`` (``"default"`` is :data:`DEFAULT_METHOD`)."""
    _register_builtin()
    key = DEFAULT_METHOD if name == "default" else name
    if key not in METHODS:
        raise ConfigError(f"unknown importance method {name!r}; use one of {', '.join(sorted(METHODS))}")
    return METHODS[key]


def field_importance(model: FieldPathModel, split: EncodedSplit, method: str = "default", *,
                     task_weights: Sequence[float] | None = None, **options: Any) -> FieldImportance:
    """Score every field of ``model`` on ``split`` with the named method (see :data:`METHODS`).

    Options not taken by :meth:`ImportanceMethod.attribute` go to the method's constructor
    (e.g. ``repeats`` for permutation, ``draws`` for exact).
    """
    cls = get_method(method)
    attribute_keys = {"batch_size", "fields", "max_samples", "seed"}
    call = {k: v for k, v in options.items() if k in attribute_keys}
    build = {k: v for k, v in options.items() if k not in attribute_keys}
    try:
        instance = cls(model, task_weights=task_weights, **build)
    except TypeError as error:
        raise ConfigError(f"method {method!r} does not take these options: {sorted(build)} ({error})") from None
    return instance.attribute(split, **call)


def _register_builtin() -> None:
    # importing the modules registers their classes
    from sharkrec.importance import exact, lasso, learned, permutation, taylor  # noqa: F401

