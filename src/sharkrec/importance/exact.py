"""Exact expected loss change (SHARK Eq. 1 / 2) by Monte Carlo: the ground truth on small data.

``error(i) = mean_x E_{v'~P_i}[L(x with v_i := v') − L(x)]``, with P_i the empirical distribution of
field i's vectors over the scored samples: each sample gets ``draws`` replacement vectors, each the
field-i vector of a uniformly drawn scored sample (independent of batching, seeded). No approximation
except the finite number of draws; cost is F · draws top-network forwards per sample.

``passes`` = 1 (field vectors of every scored sample) + F · draws top-network forwards.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError
from sharkrec.importance.base import ImportanceMethod, block_means, block_size, sweep
from sharkrec.model.protocol import FieldPathModel


class Exact(ImportanceMethod):
    """Monte-Carlo Eq. 1 with ``draws`` replacement vectors per sample and field.

    Args:
        model, task_weights: see :class:`ImportanceMethod`.
        draws: replacement vectors per sample and field (the estimate's noise falls as 1/sqrt(draws·N)).
    """

    name: ClassVar[str] = "exact"

    def __init__(self, model: FieldPathModel, *, draws: int = 64, task_weights: Any = None) -> None:
        super().__init__(model, task_weights=task_weights)
        if draws < 1:
            raise ConfigError(f"draws {draws} must be 1 or more (replacement vectors per sample and field)")
        self.draws = int(draws)

    @torch.no_grad()
    def _attribute(self, split: EncodedSplit, batch_size: int, positions: list[int], seed: int,
                   **options: Any) -> tuple[np.ndarray, np.ndarray, int, float]:
        if options:
            raise ConfigError(f"unknown options {sorted(options)} for method 'exact'")
        model = self.model
        pool = torch.cat([model.field_vectors(b) for b in sweep(split, batch_size)])  # (N, F, D)
        labels = split.labels
        n, draws = len(split), self.draws
        generator = torch.Generator().manual_seed(int(seed))
        chunk = max(1, batch_size // draws)  # samples per forward of chunk·draws rows
        rows, sizes = [], []
        block = min(chunk, block_size(n, batch_size))
        for start in range(0, n, chunk):
            vectors, y = pool[start:start + chunk], labels[start:start + chunk]  # (b, F, D), (b, T)
            b = len(vectors)
            inputs = split.slice(start, start + chunk)  # what the network needs besides the field vectors
            base = self.loss_per_sample(model.logits_from_fields(vectors, inputs), y)  # (b,)
            repeated = vectors.repeat(draws, 1, 1)  # (draws·b, F, D), draw-major
            y_rep = y.repeat(draws, 1)
            per_sample = torch.zeros(b, len(positions), dtype=torch.float64)  # (b, F)
            for k, i in enumerate(positions):
                picks = torch.randint(0, n, (draws * b,), generator=generator)
                replaced = repeated.clone()
                replaced[:, i] = pool[picks, i]
                loss = self.loss_per_sample(model.logits_from_fields(replaced, inputs), y_rep).view(draws, b)
                per_sample[:, k] = loss.double().mean(0) - base.double()
            block_rows, counts = block_means(per_sample, block)
            rows.append(block_rows)
            sizes.append(counts)
        passes = 1.0 + len(positions) * draws
        return np.concatenate(rows), np.concatenate(sizes), n, passes
