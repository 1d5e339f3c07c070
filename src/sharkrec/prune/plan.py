"""What a pruning run decided, as data: :class:`PruningPlan`, and how to turn fields into constants.

A plan is the serialisable half of a compression (STYLE: a transformation returns a new model plus an
explicit plan). ``remove_fields(model, names, split)`` is the transformation: it builds a new model whose
embedding is a :class:`PrunedEmbedding` with constants E[v_i] measured on ``split``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError
from sharkrec.model.dlrm import DENSE_FIELD, DLRM
from sharkrec.prune.embedding import PrunedEmbedding

PLAN_FORMAT = "sharkrec-pruning-plan"


@dataclass(frozen=True)
class PruningPlan:
    """Fields kept and removed by a pruning run.

    Attributes:
        method: importance method that ordered the fields (or ``"order"`` for a given order).
        kept: fields of the pruned model that keep their table (``"dense"`` included when present).
        removed: removed fields, in the order they were removed.
        scores: one ``{field: score}`` per step, the scores the step's choice was made from
            (empty dicts for a given order).
    """

    method: str
    kept: tuple[str, ...]
    removed: tuple[str, ...]
    scores: tuple[dict[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "method": self.method, "kept": list(self.kept),
                "removed": list(self.removed), "scores": [dict(step) for step in self.scores]}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> PruningPlan:
        if not isinstance(payload, Mapping) or payload.get("format") != PLAN_FORMAT:
            raise ConfigError(f"not a pruning plan: expected a JSON object with format {PLAN_FORMAT!r}")
        try:
            return cls(
                method=str(payload["method"]),
                kept=tuple(str(n) for n in payload["kept"]),
                removed=tuple(str(n) for n in payload["removed"]),
                scores=tuple({str(k): float(v) for k, v in step.items()} for step in payload.get("scores", [])),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"pruning plan is malformed ({error}); re-run 'sharkrec prune'") from None


def removable_fields(model: DLRM) -> tuple[str, ...]:
    """Fields that own an embedding table and are not pruned yet (never ``"dense"``)."""
    removed = set(model.embedding.removed_fields())
    return tuple(name for name in model.sparse_names if name not in removed)


def check_removable(model: DLRM, names: Sequence[str]) -> None:
    """One-line errors for unknown, dense, repeated or already removed field names."""
    known = model.field_names
    for name in names:
        if name == DENSE_FIELD:
            raise ConfigError(
                "field 'dense' is the bottom MLP's output, not an embedding table: removing it saves no "
                "embedding bytes, so sharkrec does not prune it; keep it or drop the dense columns and retrain"
            )
        if name not in known:
            raise ConfigError(f"field {name!r} is not in the model; known fields: {', '.join(known)}")
        if name not in removable_fields(model):
            raise ConfigError(f"field {name!r} is already pruned; name a field that still has a table")
    if len(set(names)) != len(names):
        raise ConfigError(f"fields {list(names)} name a field twice; name each field once")


@torch.no_grad()
def field_means(model: DLRM, split: EncodedSplit, names: Sequence[str], batch_size: int = 4096) -> dict[str, Tensor]:
    """E[v_i] (D,) of each named field over ``split``: the frequency-weighted mean of its rows (Eq. 4's E).

    Shapes: ``model.field_vectors`` gives (B, F, D); the sum over samples is taken in float64.
    """
    positions = [model.field_names.index(name) for name in names]
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros(len(positions), model.embedding_dim, dtype=torch.float64)
        for batch in split.batches(batch_size):
            total += model.field_vectors(batch)[:, positions].double().sum(0)  # (P, D)
    finally:
        model.train(was_training)
    mean = (total / max(len(split), 1)).float()
    return {name: mean[k] for k, name in enumerate(names)}


def remove_fields(model: DLRM, names: Sequence[str], split: EncodedSplit, batch_size: int = 4096) -> DLRM:
    """A new model without the tables of ``names``; each is replaced by E[v_i] measured on ``split``.

    The given model is not changed. Every other weight is copied.
    """
    check_removable(model, names)
    if not names:
        return copy.deepcopy(model)
    if len(split) == 0:
        raise ConfigError("the split to measure E[v_i] on is empty; give data with samples")
    constants = field_means(model, split, names, batch_size)
    return model.with_embedding(PrunedEmbedding.wrap(model.embedding, constants))


def apply_plan(model: DLRM, plan: PruningPlan, split: EncodedSplit, batch_size: int = 4096) -> DLRM:
    """Remove ``plan.removed`` from an unpruned ``model`` at once (no fine-tuning), constants from ``split``."""
    return remove_fields(model, plan.removed, split, batch_size)
