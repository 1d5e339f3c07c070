"""Choosing how a memory budget is split between pruning and quantization, without a hand-tuned grid.

SHARK (§4, Table 4) searched the split of the budget between F-Permutation and F-Quantization by
hand and names automating it as future work. Every option here is a *candidate*: remove the ``k``
least important fields (the F-Permutation ranking), then quantize the kept rows to whatever share
of their fp32 bytes the budget leaves (F-Quantization tiers from the row-priority distribution)::

    total bytes = quantized kept tables + k constant vectors  ≤  target_memory · fp32 bytes

Each candidate is *predicted* without training: the fields are replaced by their mean vectors
(E[v_i], as in pruning) and the kept rows are put in the tiers their expected priority gives,
post-training, and the validation AUC of that model is the prediction. Importance scores decide
which fields go, the priority distribution decides which rows lose precision; the prediction
measures what both cost together on held-out data in one forward pass per candidate. Only the
most promising candidates are then trained (quantization-aware fine-tuning); see
:mod:`sharkrec.compress.pipeline`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharkrec.data.dataset import EncodedSplit, PreparedData
from sharkrec.model.dlrm import DLRM
from sharkrec.model.embedding import layers, replace_storage, storage
from sharkrec.prune.embedding import PrunedEmbedding
from sharkrec.quant.build import build_embedding, expected_priorities
from sharkrec.quant.codec import Precision
from sharkrec.quant.priority import row_cost
from sharkrec.train.trainer import evaluate


@dataclass(frozen=True)
class Candidate:
    """One way to meet the budget: fields removed, then the kept rows quantized to ``quant_budget``.

    Attributes:
        removed: fields whose tables are dropped (replaced by a constant vector), least important first.
        quant_budget: bytes of the kept tables as a share of their fp32 bytes (``None``: kept in fp32).
        use_int4: whether F-Quantization may use the int4 tier.
        fp32_share: share of the bytes above the lowest tier spent on fp32 rows (FQuantPolicy).
        importance_removed: sum of the removed fields' importance scores (their estimated loss increase).
        predicted_bytes: embedding bytes the candidate will hold (the budget arithmetic).
    """

    removed: tuple[str, ...]
    quant_budget: float | None
    use_int4: bool
    fp32_share: float
    importance_removed: float
    predicted_bytes: int

    @property
    def label(self) -> str:
        pruned = f"-{len(self.removed)} fields" if self.removed else "no pruning"
        if self.quant_budget is None:
            return f"{pruned}, fp32"
        int4 = "+int4" if self.use_int4 else ""
        return f"{pruned}, f-quant{int4} {self.quant_budget:.3f} (fp32 share {self.fp32_share:g})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "removed": list(self.removed), "label": self.label}


@dataclass
class Prediction:
    """A candidate and the validation metrics of its untrained (post-training compressed) model."""

    candidate: Candidate
    valid: dict[str, dict[str, float]] = field(default_factory=dict)
    auc_drop: float = math.inf  # worst relative validation AUC drop over tasks vs the uncompressed model
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**self.candidate.to_dict(), "predicted_valid": self.valid, "predicted_auc_drop": self.auc_drop,
                "bytes": self.bytes}


def lowest_tier_share(dim: int, use_int4: bool) -> float:
    """Bytes of a row in the lowest tier (payload, scale, row map) as a share of its fp32 bytes."""
    return row_cost(Precision.INT4 if use_int4 else Precision.INT8, dim) / (4 * dim)


def enumerate_candidates(model: DLRM, order: Sequence[str], scores: Mapping[str, float], target_memory: float,
                         *, fp32_shares: Sequence[float] = (0.25, 0.5), allow_int4: bool = True,
                         max_removed: int | None = None, base_bytes: int | None = None) -> list[Candidate]:
    """Every (fields removed, quantization) option that meets ``target_memory`` of ``base_bytes``.

    ``order`` lists the removable fields least important first; option k removes ``order[:k]``.
    The kept tables get the bytes the budget leaves after the constants of the removed fields (and,
    for a clustered model, the value → row maps of the kept fields); an option is listed when its
    lowest tier fits (int8, or int4 with ``allow_int4``). Once pruning alone meets the budget,
    removing more fields cannot help and the list ends. ``base_bytes`` defaults to the model's
    embedding bytes (give the unclustered model's when ``model`` is clustered).
    """
    embedding = model.embedding
    dim = int(embedding.embedding_dim)
    rows = embedding.num_rows()
    overhead = field_overhead(embedding)
    base = int(embedding.embedding_bytes()) if base_bytes is None else int(base_bytes)
    allowed_total = target_memory * base
    limit = len(order) if max_removed is None else min(max_removed, len(order))
    out: list[Candidate] = []
    for k in range(limit + 1):
        removed = tuple(order[:k])
        kept_fp32 = sum(n for name, n in rows.items() if name not in removed) * dim * 4
        fixed = sum(b for name, b in overhead.items() if name not in removed)
        allowed = allowed_total - k * dim * 4 - fixed
        if kept_fp32 == 0 or allowed <= 0:
            break
        importance = float(sum(scores.get(f, 0.0) for f in removed))
        share = allowed / kept_fp32
        if share >= 1.0:
            out.append(Candidate(removed, None, False, 0.0, importance, kept_fp32 + k * dim * 4 + fixed))
            break
        for use_int4 in (False, True) if allow_int4 else (False,):
            if share < lowest_tier_share(dim, use_int4):
                continue
            for fp32_share in fp32_shares:
                out.append(Candidate(removed, round(share, 6), use_int4, float(fp32_share), importance,
                                     int(allowed + k * dim * 4 + fixed)))
    return out


def field_overhead(embedding: Any) -> dict[str, int]:
    """Bytes per field that quantization cannot shrink (a clustered field's value → row map, int32 per value)."""
    overhead: dict[str, int] = embedding.fixed_bytes()
    return overhead


def build_candidate(model: DLRM, data: PreparedData, candidate: Candidate, means: Mapping[str, Tensor],
                    policy: Mapping[str, Any], seed: int = 0) -> DLRM:
    """A new model: ``candidate.removed`` replaced by ``means``, the kept rows in F-Quantization tiers.

    Tiers start from the expected Eq. 7 priority of every row over the training split (the
    fixed point of its expectation), so they are the tiers training would settle near. ``policy``
    holds further :class:`~sharkrec.quant.FQuantPolicy` options (alpha, beta, recheck_every).
    Rows are encoded with stochastic rounding drawn from ``seed`` (the caller's random state is
    left as it was), so a candidate is the same model every time it is built.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_candidate(model, data, candidate, means, policy)


def _build_candidate(model: DLRM, data: PreparedData, candidate: Candidate, means: Mapping[str, Tensor],
                     policy: Mapping[str, Any]) -> DLRM:
    source: Any = model.embedding
    if storage(source).kind != "float" or source.removed_fields():
        raise TypeError("build_candidate takes an unpruned fp32 model (clustered or not)")
    kept_names = [f for f in source.field_names if f not in candidate.removed]
    kept: Any = source.subset(kept_names)  # copies: the given model is never changed
    if candidate.quant_budget is not None:
        options = {"memory_budget": candidate.quant_budget, "use_int4": candidate.use_int4,
                   "fp32_share": candidate.fp32_share, **policy}
        alpha = float(options.get("alpha", 2.0))
        priorities = expected_priorities(data, alpha, int(policy.get("batch_size", 512)), kept_names)
        stack = layers(kept)
        rows: Any = stack[-1]
        quantized: Any = build_embedding("f-quant", rows, None, **options)
        for layer in stack[:-1]:  # a shared row's priority is the sum of the priorities of the values mapped to it
            maps = [layer.value_map(name) for name in kept_names]
            priorities = [p if m is None else torch.zeros(n).index_add_(0, m, p)
                          for m, n, p in zip(maps, rows.num_rows().values(), priorities, strict=True)]
        quantized.set_priorities(priorities)
        quantized.retier()
        quantized.rows_moved = 0
        kept = replace_storage(kept, quantized)
    if candidate.removed:
        constants = {name: means[name] for name in candidate.removed}
        return model.with_embedding(PrunedEmbedding(source.field_names, kept, constants))
    return model.with_embedding(kept)


def relative_auc_drop(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]) -> float:
    """The worst task's relative AUC drop, ``1 − AUC_after / AUC_before`` (negative: AUC rose)."""
    drops = [1.0 - after[t]["auc"] / before[t]["auc"] for t in before if before[t]["auc"] > 0]
    return float(max(drops)) if drops else 0.0


def predict_candidates(model: DLRM, data: PreparedData, candidates: Sequence[Candidate], split: EncodedSplit,
                       means: Mapping[str, Tensor], policy: Mapping[str, Any], batch_size: int = 8192,
                       on_prediction: Any = None, seed: int = 0) -> list[Prediction]:
    """Validation metrics of every candidate's untrained model, most promising (smallest AUC drop) first."""
    tasks = data.schema.label_names
    reference = evaluate(model, split, tasks, batch_size)
    out = []
    for candidate in candidates:
        trial = build_candidate(model, data, candidate, means, policy, seed)
        valid = evaluate(trial, split, tasks, batch_size)
        prediction = Prediction(candidate, valid, relative_auc_drop(reference, valid),
                                int(trial.embedding.embedding_bytes()))
        out.append(prediction)
        if on_prediction is not None:
            on_prediction(prediction)
    order = np.argsort([p.auc_drop for p in out], kind="stable")
    return [out[i] for i in order]
