"""Simulate the raw log from the teacher and encode it into :class:`PreparedData` with known truth."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sharkrec.data.dataset import EncodedSplit, PreparedData, SparseColumn
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.synthetic.config import FieldRole, SyntheticConfig
from sharkrec.data.synthetic.teacher import (
    _CHUNK,
    DENSE_FIELD,
    FieldTruth,
    GroundTruth,
    _build_teacher,
    _calibrate_and_score,
    _coarsening,
    _dense_params,
    _draw_dense,
    _draw_ranks,
    _Layout,
    _layout,
    _log_counts,
    _rng,
    _sigmoid,
    _Stream,
    _Teacher,
    _zipf_cdf,
)
from sharkrec.data.vocab import Vocabulary

LABEL_NAME = "click"


# -- simulation and encoding ---------------------------------------------------------------------


@dataclass
class RawSample:
    """The generated log before encoding, rows in order.

    ``ranks`` one (N,) int32 per sparse field (0 = the field's most probable value);
    ``dense_counts`` (N, m) int32; ``labels`` (N,) int8; ``logits`` (N,) float32 teacher logits.
    """

    config: SyntheticConfig
    ranks: list[np.ndarray] = field(repr=False)
    dense_counts: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    logits: np.ndarray = field(repr=False)
    ground_truth: GroundTruth = field(repr=False)


@dataclass
class SyntheticData:
    """Prepared synthetic data plus what is known about it.

    ``teacher_logits`` maps a split name to its (n,) float32 teacher logits; ``row_ranks`` maps a
    sparse field to the (num_rows,) Zipf rank behind each vocabulary row (row 0, OOV: -1), and
    ``row_effects`` holds each row's main teacher effect ``w_f · e_f`` (OOV and untaught fields: 0).
    """

    config: SyntheticConfig
    data: PreparedData = field(repr=False)
    ground_truth: GroundTruth = field(repr=False)
    teacher_logits: dict[str, np.ndarray] = field(repr=False)
    row_ranks: dict[str, np.ndarray] = field(repr=False)
    row_effects: dict[str, np.ndarray] = field(repr=False)


def simulate(config: SyntheticConfig | None = None) -> RawSample:
    """Draw the raw log (ranks, counts, labels) and the teacher's ground truth for ``config``."""
    return _simulate(config or SyntheticConfig())[0]


def _simulate(config: SyntheticConfig) -> tuple[RawSample, _Teacher, _Layout]:
    layout = _layout(config)
    cdfs = [_zipf_cdf(k, s) for k, s in zip(layout.cardinalities, layout.exponents, strict=True)]
    teacher = _build_teacher(config, layout, cdfs)
    importance = _calibrate_and_score(teacher, config, layout, cdfs)

    n = config.rows
    ranks = [_draw_ranks(_rng(config.seed, _Stream.VALUES, f), cdfs[f], n) if role is not FieldRole.REDUNDANT
             else np.empty(0, dtype=np.int32) for f, role in enumerate(layout.roles)]
    for f, src in enumerate(layout.source):
        if src >= 0:
            ranks[f] = _coarsening(layout.cardinalities[src], layout.cardinalities[f])[ranks[src]]
    mu, sigma = _dense_params(config)
    dense_counts = _draw_dense(lambda j: _rng(config.seed, _Stream.DENSE, j), mu, sigma, n)
    logits = np.empty(n, dtype=np.float32)
    labels = np.empty(n, dtype=np.int8)
    label_rng = _rng(config.seed, _Stream.LABELS)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk = teacher.logits([r[start:stop] for r in ranks], _log_counts(dense_counts[start:stop]))
        logits[start:stop] = chunk
        labels[start:stop] = label_rng.random(stop - start) < _sigmoid(chunk)

    n_train, n_valid, _ = config.split_sizes()
    test = slice(n_train + n_valid, n)
    auc, logloss = _auc(logits[test], labels[test]), _logloss(logits[test], labels[test])
    names = layout.names
    truths = []
    for f, role in enumerate(layout.roles):
        mean, se = importance.get(names[f], (0.0, 0.0))
        truths.append(FieldTruth(
            name=names[f], role=role, weight=float(teacher.weights.get(f, 0.0)),
            importance=mean, importance_se=se, cardinality=layout.cardinalities[f],
            zipf_exponent=layout.exponents[f],
            redundant_of=names[layout.source[f]] if layout.source[f] >= 0 else None,
            interacts_with=tuple(names[g] for g in layout.interacting if g != f) if f in layout.interacting else (),
        ))
    if config.num_dense:
        mean, se = importance[DENSE_FIELD]
        truths.append(FieldTruth(
            name=DENSE_FIELD, role=FieldRole.DENSE, weight=float(np.linalg.norm(teacher.dense_coef)),
            importance=mean, importance_se=se, cardinality=0, zipf_exponent=None,
        ))
    truth = GroundTruth(
        fields=tuple(truths), bias=teacher.bias, interaction_weight=teacher.interaction_weight,
        dense_informative=tuple(f"I{j + 1}" for j in layout.dense_informative),
        positive_rate=float(labels.mean()), teacher_test_auc=auc, teacher_test_logloss=logloss,
        sample_size=config.ground_truth_sample,
    )
    return RawSample(config, ranks, dense_counts, labels, logits, truth), teacher, layout


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    """Generate, split by row order, and encode with train-split vocabularies (hottest row first)."""
    config = config or SyntheticConfig()
    raw, teacher, layout = _simulate(config)
    n_train, n_valid, _ = config.split_sizes()
    bounds = {"train": slice(0, n_train), "valid": slice(n_train, n_train + n_valid),
              "test": slice(n_train + n_valid, config.rows)}
    train_labels = raw.labels[bounds["train"]].astype(np.float64)

    vocabularies: dict[str, Vocabulary] = {}
    row_of_rank: list[np.ndarray] = []
    row_ranks: dict[str, np.ndarray] = {}
    row_effects: dict[str, np.ndarray] = {}
    for f, name in enumerate(layout.names):
        train_ranks = raw.ranks[f][bounds["train"]]
        counts = np.bincount(train_ranks, minlength=layout.cardinalities[f])
        positives = np.rint(np.bincount(train_ranks, weights=train_labels, minlength=len(counts))).astype(np.int64)
        seen = np.flatnonzero(counts)
        hottest = seen[np.argsort(-counts[seen], kind="stable")]  # ties by rank
        lookup = np.zeros(len(counts), dtype=np.int64)
        lookup[hottest] = np.arange(1, len(hottest) + 1)
        row_of_rank.append(lookup)
        vocabularies[name] = Vocabulary.identity(
            name, np.concatenate([[0], counts[hottest]]), np.concatenate([[0], positives[hottest]])
        )
        row_ranks[name] = np.concatenate([[-1], hottest]).astype(np.int64)
        effect = teacher.main.get(f)
        row_effects[name] = np.zeros(len(hottest) + 1) if effect is None else np.concatenate([[0.0], effect[hottest]])

    log_counts = _log_counts(raw.dense_counts)
    del raw.dense_counts
    splits: dict[str, EncodedSplit] = {}
    for split, rows in bounds.items():
        ids = np.empty((len(row_of_rank), rows.stop - rows.start), dtype=np.int64)
        for f, lookup in enumerate(row_of_rank):
            np.take(lookup, raw.ranks[f][rows], out=ids[f])
        columns = [SparseColumn(ids[f]) for f in range(len(ids))]
        splits[split] = EncodedSplit(log_counts[rows], columns, raw.labels[rows])
        del ids
    del log_counts

    schema = Schema(
        fields=(
            FieldSpec(LABEL_NAME, FieldKind.LABEL),
            *(FieldSpec(f"I{j + 1}", FieldKind.DENSE) for j in range(config.num_dense)),
            *(FieldSpec(name, FieldKind.SPARSE) for name in layout.names),
        ),
        name="synthetic",
    )
    report = {
        "format": "synthetic",
        "config": config.to_dict(),
        "rows": {split: len(s) for split, s in splits.items()},
        "positive_rate": {split: float(raw.labels[rows].mean()) for split, rows in bounds.items()},
        "ground_truth": raw.ground_truth.to_dict(),
    }
    prepared = PreparedData(schema, vocabularies, splits["train"], splits["valid"], splits["test"], report)
    return SyntheticData(
        config=config, data=prepared, ground_truth=raw.ground_truth,
        teacher_logits={split: raw.logits[rows].copy() for split, rows in bounds.items()},
        row_ranks=row_ranks, row_effects=row_effects,
    )


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve with tied scores counted half."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.repeat(first + (counts + 1) / 2, counts)
    return float((ranks[labels[order] == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    return float(np.mean(np.where(labels == 1, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))))
