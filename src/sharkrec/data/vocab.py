"""Per-field vocabularies: raw value -> row id, with the frequencies later stages need.

Built on the training split only. Row 0 is the out-of-vocabulary (OOV) row: ids seen fewer than
``min_count`` times in training and ids never seen map to it. The other rows are numbered by
descending training frequency (ties by raw value), so row ids are deterministic and hottest-first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sharkrec.errors import DataError

OOV_ROW = 0


class Vocabulary:
    """Maps raw values of one field to embedding rows, keeping row and positive-label counts.

    Attributes (after :meth:`fit`):
        keys_: raw values that got their own row; ``keys_[i]`` is row ``i + 1``.
        counts_: (num_rows,) int64 occurrences of each row in the training split (row 0: OOV).
        positive_counts_: (num_rows,) int64 occurrences in samples whose first label is 1.
    """

    def __init__(self, name: str, min_count: int = 1) -> None:
        if min_count < 1:
            raise DataError(f"vocabulary {name!r}: min_count {min_count} must be 1 or more")
        self.name = name
        self.min_count = min_count

    def fit(self, values: np.ndarray, positive: np.ndarray | None = None) -> Vocabulary:
        """Learn rows from ``values`` (1-D raw values, one per occurrence).

        ``positive`` (same length, bool) marks occurrences in positive samples.
        """
        values = np.asarray(values)
        if values.ndim != 1:
            raise DataError(f"vocabulary {self.name!r}: values must be 1-D, got shape {values.shape}")
        codes, uniques = pd.factorize(values, sort=True)
        counts = np.bincount(codes, minlength=len(uniques)).astype(np.int64)
        pos_counts = (
            np.bincount(codes, weights=np.asarray(positive, dtype=np.float64), minlength=len(uniques)).astype(np.int64)
            if positive is not None
            else np.zeros(len(uniques), dtype=np.int64)
        )
        return self.fit_counts(np.asarray(uniques), counts, pos_counts)

    def fit_counts(self, keys: np.ndarray, counts: np.ndarray, positive_counts: np.ndarray) -> Vocabulary:
        """Learn rows from counted values: ``keys`` (K,) distinct raw values in ascending order, ``counts``
        (K,) their occurrences and ``positive_counts`` (K,) those in positive samples.

        The one place the row rules live (:meth:`fit` counts, then calls it; streaming preparation
        merges counts chunk by chunk, then calls it): values seen fewer than ``min_count`` times share
        the OOV row, the rest are numbered hottest first, ties by raw value.
        """
        counts = np.asarray(counts, dtype=np.int64)
        pos_counts = np.asarray(positive_counts, dtype=np.int64)
        keep = counts >= self.min_count
        # hottest first; stable sort on the (sorted) unique values breaks ties by raw value
        order = np.argsort(-counts[keep], kind="stable")
        kept_keys = np.asarray(keys)[keep][order]
        self.keys_ = kept_keys
        self.counts_ = np.concatenate([[counts[~keep].sum()], counts[keep][order]]).astype(np.int64)
        self.positive_counts_ = np.concatenate([[pos_counts[~keep].sum()], pos_counts[keep][order]]).astype(np.int64)
        self._index = pd.Index(kept_keys)
        return self

    @property
    def num_rows(self) -> int:
        self._check_fitted()
        return len(self.keys_) + 1

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Row ids (int64) for raw ``values``; unknown values get :data:`OOV_ROW`."""
        self._check_fitted()
        positions = self._index.get_indexer(np.asarray(values))
        return (positions + 1).astype(np.int64)  # -1 (unknown) becomes 0 (OOV)

    def _check_fitted(self) -> None:
        if not hasattr(self, "keys_"):
            raise DataError(f"vocabulary {self.name!r} is used before fit(); call fit() on training values")

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "name": self.name,
            "min_count": self.min_count,
            "keys": self.keys_.tolist(),
            "counts": self.counts_.tolist(),
            "positive_counts": self.positive_counts_.tolist(),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Vocabulary:
        vocab = cls(payload["name"], payload.get("min_count", 1))
        vocab.keys_ = np.asarray(payload["keys"])
        vocab.counts_ = np.asarray(payload["counts"], dtype=np.int64)
        vocab.positive_counts_ = np.asarray(payload["positive_counts"], dtype=np.int64)
        vocab._index = pd.Index(vocab.keys_)
        return vocab

    @classmethod
    def identity(cls, name: str, counts: np.ndarray, positive_counts: np.ndarray) -> Vocabulary:
        """A vocabulary over already-encoded ids ``0..n-1`` (row 0 is OOV), e.g. synthetic data."""
        vocab = cls(name)
        vocab.keys_ = np.arange(1, len(counts), dtype=np.int64)
        vocab.counts_ = np.asarray(counts, dtype=np.int64)
        vocab.positive_counts_ = np.asarray(positive_counts, dtype=np.int64)
        vocab._index = pd.Index(vocab.keys_)
        return vocab
