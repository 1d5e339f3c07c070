"""Group-LASSO field importance: proximal SGD on one gate vector per field, the trained model frozen.

Choice: in DLRM a field's vector feeds dot products (and, with ``dot-concat``, the first top layer), so
there is no single weight matrix that reads exactly one field. We therefore put a gate g_i (D,) on each
field vector, ``v_i ← g_i ⊙ v_i`` (g_i = 1 is the unchanged model), and minimise
``mean BCE + λ Σ_i ||g_i||_2`` over the gates only, with proximal SGD (group soft-thresholding
``g_i ← g_i · max(0, 1 − lr·λ / ||g_i||)`` after each gradient step). The score is ``||g_i||_2 / sqrt(D)``
(1: untouched; 0: the field was switched off). It adds no parameters to the model and changes no weight.

``passes`` = 2 · epochs (a forward and a backward of the top network per epoch) + epochs field-vector
forwards, counted as 3 · epochs.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError
from sharkrec.importance.base import ImportanceMethod
from sharkrec.model.protocol import FieldPathModel


class GroupLasso(ImportanceMethod):
    """Proximal-SGD group LASSO on per-field gates.

    Args:
        model, task_weights: see :class:`ImportanceMethod`.
        strength: λ, the group-norm penalty.
        lr: SGD step size of the gates.
        epochs: passes over the split (shuffled by ``seed``).
        gate_batch_size: batch size of the gate updates (``attribute``'s ``batch_size`` is not used).
    """

    name: ClassVar[str] = "lasso"

    def __init__(self, model: FieldPathModel, *, strength: float = 0.01, lr: float = 1.0, epochs: int = 10,
                 gate_batch_size: int = 64, task_weights: Any = None) -> None:
        super().__init__(model, task_weights=task_weights)
        if not (strength > 0 and math.isfinite(strength)):
            raise ConfigError(f"lasso strength {strength} must be a positive number such as 0.01")
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"lasso lr {lr} must be a positive number such as 1.0")
        if epochs < 1 or gate_batch_size < 1:
            raise ConfigError(f"lasso epochs {epochs} and gate_batch_size {gate_batch_size} must be 1 or more")
        self.strength, self.lr, self.epochs, self.gate_batch_size = float(strength), float(lr), int(epochs), int(
            gate_batch_size)

    #: the score is one trained gate norm: resampling samples would mean retraining the gates
    std_method: ClassVar[str] = "none: one trained gate norm per field (retrain with other seeds for a spread)"

    def _attribute(self, split: EncodedSplit, batch_size: int, positions: list[int], seed: int,
                   **options: Any) -> tuple[np.ndarray, np.ndarray, int, float]:
        if options:
            raise ConfigError(f"unknown options {sorted(options)} for method 'lasso'")
        model = self.model
        dim = model.embedding_dim
        gates = torch.ones(model.num_fields, dim, requires_grad=True)  # (F, D)
        trainable = torch.zeros(model.num_fields, 1)
        trainable[positions] = 1.0  # fields not scored keep gate 1
        rows = []
        for epoch in range(self.epochs):
            for batch in split.batches(self.gate_batch_size, shuffle=True, seed=seed, epoch=epoch):
                with torch.no_grad():
                    vectors = model.field_vectors(batch)  # (B, F, D)
                logits = model.logits_from_fields(vectors * gates)
                loss = self.loss_per_sample(logits, batch.labels).mean()
                (grad,) = torch.autograd.grad(loss, gates)
                with torch.no_grad():
                    gates -= self.lr * grad * trainable
                    norms = gates.norm(dim=1, keepdim=True)  # (F, 1)
                    shrink = torch.clamp(1 - self.lr * self.strength / norms.clamp_min(1e-12), min=0.0)
                    gates *= torch.where(trainable > 0, shrink, torch.ones_like(shrink))
            rows.append((gates.detach().norm(dim=1) / math.sqrt(dim))[positions].numpy().astype(np.float64))
        # the score is the final group norm; raw keeps the norm after each epoch (weight only the last)
        weights = np.zeros(len(rows))
        weights[-1] = 1.0
        return np.stack(rows), weights, len(split), 3.0 * self.epochs
