"""The batch type: the one contract between data and model (torchrec's ``Batch``, simplified)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FieldIds:
    """The ids of one sparse field for a batch.

    ``values`` holds row ids (int64). With ``offsets is None`` there is exactly one id per sample,
    so ``values`` has shape (B,). Otherwise ``offsets`` has shape (B + 1,) and sample ``b`` uses
    ``values[offsets[b]:offsets[b + 1]]`` (sum-pooled; an empty bag pools to zeros). ``weights`` (same
    shape as ``values``, float32), when given, weighs each id of a bag in the sum (``per_sample_weights``).
    """

    values: Tensor
    offsets: Tensor | None = None
    weights: Tensor | None = None

    def batch_size(self) -> int:
        return int(self.values.shape[0]) if self.offsets is None else int(self.offsets.shape[0]) - 1

    def to(self, device: torch.device | str) -> FieldIds:
        offsets = None if self.offsets is None else self.offsets.to(device)
        weights = None if self.weights is None else self.weights.to(device)
        return FieldIds(self.values.to(device), offsets, weights)


@dataclass(frozen=True)
class Batch:
    """Dense features, per-field sparse ids and labels for B samples.

    Shapes: ``dense`` (B, n_dense) float32 (n_dense may be 0); ``sparse`` one :class:`FieldIds`
    per sparse field in schema order; ``labels`` (B, T) float32 in {0, 1}.
    """

    dense: Tensor
    sparse: tuple[FieldIds, ...]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.dense.to(device), tuple(f.to(device) for f in self.sparse), self.labels.to(device)
        )
