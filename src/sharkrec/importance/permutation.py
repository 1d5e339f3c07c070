"""Permutation importance (Breiman; SHARK's baseline): shuffle one field's vectors within the batch.

For each batch, repeat and field i, the field vectors (B, F, D) are computed once, field i's rows are
permuted by a seeded random permutation of the batch, and the increase of the task-weighted loss per
sample is averaged over the T repeats. ``raw`` holds one row per block of samples (the mean over the
block and the repeats), so ``std`` is the bootstrap standard error of the score over samples — also
for T = 1, where scikit-learn's spread across repeats would be 0.

``passes`` = 1 (field vectors and the unshuffled loss) + F·T top-network forwards.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError
from sharkrec.importance.base import ImportanceMethod, block_means, block_size, sweep
from sharkrec.model.protocol import FieldPathModel


class Permutation(ImportanceMethod):
    """Shuffle-within-batch importance with ``repeats`` (T) shuffles per field.

    Args:
        model, task_weights: see :class:`ImportanceMethod`.
        repeats: T, shuffles per field and batch.
    """

    name: ClassVar[str] = "permutation"

    def __init__(self, model: FieldPathModel, *, repeats: int = 5, task_weights: Any = None) -> None:
        super().__init__(model, task_weights=task_weights)
        if repeats < 1:
            raise ConfigError(f"repeats {repeats} must be 1 or more (shuffles per field)")
        self.repeats = int(repeats)

    @torch.no_grad()
    def _attribute(self, split: EncodedSplit, batch_size: int, positions: list[int], seed: int,
                   **options: Any) -> tuple[np.ndarray, np.ndarray, int, float]:
        if options:
            raise ConfigError(f"unknown options {sorted(options)} for method 'permutation'")
        generator = torch.Generator().manual_seed(int(seed))
        block = block_size(len(split), batch_size)
        rows, sizes = [], []
        for batch in sweep(split, batch_size):
            vectors = self.model.field_vectors(batch)  # (B, F, D)
            base = self.loss_per_sample(self.model.logits_from_fields(vectors), batch.labels)  # (B,)
            increase = torch.zeros(len(batch), len(positions), dtype=torch.float64)  # (B, F), summed over repeats
            for _ in range(self.repeats):
                for k, i in enumerate(positions):
                    order = torch.randperm(len(batch), generator=generator)
                    shuffled = vectors.clone()
                    shuffled[:, i] = vectors[order, i]
                    loss = self.loss_per_sample(self.model.logits_from_fields(shuffled), batch.labels)
                    increase[:, k] += (loss - base).double()
            block_rows, counts = block_means(increase / self.repeats, block)
            rows.append(block_rows)
            sizes.append(counts)
        passes = 1.0 + len(positions) * self.repeats
        return np.concatenate(rows), np.concatenate(sizes), len(split), passes
