"""A tiny learnable dataset built in code (no generator, no files) for trainer tests."""

from __future__ import annotations

import numpy as np

from sharkrec.data.dataset import EncodedSplit, PreparedData, SparseColumn
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.vocab import Vocabulary


def toy_data(rows: int = 3000, seed: int = 0, tasks: int = 1, multi_hot: bool = True) -> PreparedData:
    """Three sparse fields (one informative, one noise, optionally a multi-hot one), two dense features."""
    rng = np.random.default_rng(seed)
    card = [50, 20, 10]
    a = rng.integers(1, card[0], rows)
    b = rng.integers(1, card[1], rows)
    effect = rng.normal(0, 2.0, card[0])
    dense = rng.normal(size=(rows, 2)).astype(np.float32)
    logit = effect[a] + 0.8 * dense[:, 0]
    labels = [(rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)]
    if tasks > 1:
        labels.append((rng.random(rows) < 1 / (1 + np.exp(-(b % 2 * 3.0 - 1.5)))).astype(np.float32))
    label_array = np.stack(labels, 1)
    lengths = rng.integers(0, 4, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    bag = rng.integers(1, card[2], offsets[-1]).astype(np.int64)
    fields = [FieldSpec("a", FieldKind.SPARSE), FieldSpec("b", FieldKind.SPARSE)]
    columns = [a, b]
    if multi_hot:
        fields.append(FieldSpec("tags", FieldKind.SPARSE, separator="|"))
    fields += [FieldSpec("x0", FieldKind.DENSE), FieldSpec("x1", FieldKind.DENSE)]
    task_names = ["y0", "y1"][:tasks]
    fields += [FieldSpec(name, FieldKind.LABEL) for name in task_names]
    schema = Schema(tuple(fields), name="toy")

    def split(lo: int, hi: int) -> EncodedSplit:
        cols = [SparseColumn(c[lo:hi].astype(np.int64)) for c in columns]
        if multi_hot:
            cols.append(SparseColumn(bag[offsets[lo] : offsets[hi]], offsets[lo : hi + 1] - offsets[lo]))
        return EncodedSplit(dense[lo:hi], cols, label_array[lo:hi])

    n_train, n_valid = int(rows * 0.8), int(rows * 0.1)
    vocabularies = {
        "a": Vocabulary.identity("a", np.ones(card[0], np.int64), np.zeros(card[0], np.int64)),
        "b": Vocabulary.identity("b", np.ones(card[1], np.int64), np.zeros(card[1], np.int64)),
    }
    if multi_hot:
        vocabularies["tags"] = Vocabulary.identity("tags", np.ones(card[2], np.int64), np.zeros(card[2], np.int64))
    return PreparedData(
        schema,
        vocabularies,
        split(0, n_train),
        split(n_train, n_train + n_valid),
        split(n_train + n_valid, rows),
        {"format": "toy"},
    )
