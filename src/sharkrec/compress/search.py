"""Choosing how a memory budget is split between pruning and quantization, without a hand-tuned grid.

SHARK (§4, Table 4) searched the split of the budget between F-Permutation and F-Quantization by
hand and names automating it as future work. Every option here is a *candidate*: remove the ``k``
least important fields (the F-Permutation ranking), then quantize the kept rows to whatever share
of their fp32 bytes the budget leaves (F-Quantization tiers from the row-priority distribution)::

    total bytes = quantized kept tables + k constant vectors  ≤  target_memory · fp32 bytes

A third axis cuts *rows* with no per-value state (:mod:`sharkrec.hashed.tail`): with a tail ratio r, every
kept field of V > 64 values keeps ⌈r·V⌉ rows, half for its hottest values and half shared by the hashed rest,
so the bytes fall past the ~16x an int32 value → row map allows::

    total bytes = Σ_kept (rows_f · quantized row bytes + 4·H_f + 16) + k constant vectors

Each candidate is *predicted* without training: the fields are replaced by their mean vectors
(E[v_i], as in pruning) and the kept rows are put in the tiers their expected priority gives,
post-training (a hashed tail's shared rows start at the count-weighted mean of the trained rows hashed to
them), and the validation AUC of that model is the prediction. Importance scores decide
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

from sharkrec.cluster.saec import value_counts
from sharkrec.data.dataset import EncodedSplit, PreparedData
from sharkrec.hashed.tail import hash_tail, tail_layout
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
        tail_ratio: share of each kept field's rows kept through a hashed tail (``None``: every row kept).
        hot_share: share of a tailed field's rows that are its hottest values' own rows.
    """

    removed: tuple[str, ...]
    quant_budget: float | None
    use_int4: bool
    fp32_share: float
    importance_removed: float
    predicted_bytes: int
    tail_ratio: float | None = None
    hot_share: float = 0.5

    @property
    def label(self) -> str:
        pruned = f"-{len(self.removed)} fields" if self.removed else "no pruning"
        if self.tail_ratio is not None:
            pruned += f", rows {self.tail_ratio:g} (hashed tail)"
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
                         max_removed: int | None = None, base_bytes: int | None = None,
                         tail_ratios: Sequence[float] = (), hot_share: float = 0.5) -> list[Candidate]:
    """Every (fields removed, rows kept, quantization) option that meets ``target_memory`` of ``base_bytes``.

    ``order`` lists the removable fields least important first; option k removes ``order[:k]``.
    For each k the rows axis is tried from every row kept down through ``tail_ratios`` (largest first; only
    for a model whose ids are rows, i.e. not clustered): the kept tables get the bytes the budget leaves
    after the constants of the removed fields, the hot ids and hash pairs of a tail (and, for a clustered
    model, the value → row maps of the kept fields); an option is listed when its lowest tier fits (int8,
    or int4 with ``allow_int4``). Once the kept rows fit in fp32, fewer rows cannot help: the ratios stop
    there, and once pruning alone meets the budget the list ends. ``base_bytes`` defaults to the model's
    embedding bytes (give the unclustered model's when ``model`` is clustered).
    """
    embedding = model.embedding
    dim = int(embedding.embedding_dim)
    rows = embedding.num_rows()
    overhead = field_overhead(embedding)
    base = int(embedding.embedding_bytes()) if base_bytes is None else int(base_bytes)
    allowed_total = target_memory * base
    limit = len(order) if max_removed is None else min(max_removed, len(order))
    ratios: list[float | None] = [None]
    if not overhead:  # the tail maps ids of the rows themselves: not over a clustered model's maps
        ratios += sorted({float(r) for r in tail_ratios}, reverse=True)
    out: list[Candidate] = []
    for k in range(limit + 1):
        removed = tuple(order[:k])
        kept = [name for name in rows if name not in removed]
        importance = float(sum(scores.get(f, 0.0) for f in removed))
        for ratio in ratios:
            kept_rows, fixed = _kept_rows(kept, rows, overhead, ratio, hot_share)
            kept_fp32 = kept_rows * dim * 4
            allowed = allowed_total - k * dim * 4 - fixed
            if kept_fp32 == 0 or allowed <= 0:
                continue
            share = allowed / kept_fp32
            if share >= 1.0:
                out.append(Candidate(removed, None, False, 0.0, importance, kept_fp32 + k * dim * 4 + fixed,
                                     ratio, hot_share))
                if ratio is None:
                    return out  # pruning alone meets the budget: removing more fields cannot help
                break
            for use_int4 in (False, True) if allow_int4 else (False,):
                if share < lowest_tier_share(dim, use_int4):
                    continue
                for fp32_share in fp32_shares:
                    out.append(Candidate(removed, round(share, 6), use_int4, float(fp32_share), importance,
                                         int(allowed + k * dim * 4 + fixed), ratio, hot_share))
    return out


def _kept_rows(kept: Sequence[str], rows: Mapping[str, int], overhead: Mapping[str, int], ratio: float | None,
               hot_share: float) -> tuple[int, int]:
    """(rows the kept fields hold, bytes quantization cannot shrink) for a tail ``ratio`` (``None``: none)."""
    if ratio is None:
        return sum(rows[n] for n in kept), sum(overhead.get(n, 0) for n in kept)
    total, fixed = 0, 0
    for name in kept:
        layout = tail_layout(rows[name], ratio, hot_share)
        total += layout.rows
        fixed += layout.fixed_bytes
    return total, fixed


def budget_floors(model: DLRM, order: Sequence[str], *, allow_int4: bool = True, max_removed: int | None = None,
                  base_bytes: int | None = None, tail_ratios: Sequence[float] = (),
                  hot_share: float = 0.5) -> dict[str, float]:
    """The smallest share of ``base_bytes`` each axis reaches alone and all of them together (one-line errors)."""
    embedding = model.embedding
    dim = int(embedding.embedding_dim)
    rows = embedding.num_rows()
    overhead = field_overhead(embedding)
    base = int(embedding.embedding_bytes()) if base_bytes is None else int(base_bytes)
    lowest = lowest_tier_share(dim, allow_int4)
    limit = len(order) if max_removed is None else min(max_removed, len(order))
    removed = set(order[:limit])
    kept = [n for n in rows if n not in removed]
    ratio = min(tail_ratios) if tail_ratios and not overhead else None

    def share(names: Sequence[str], k: int, tail: float | None, row_share: float) -> float:
        kept_rows, fixed = _kept_rows(names, rows, overhead, tail, hot_share)
        return (kept_rows * dim * 4 * row_share + fixed + k * dim * 4) / base

    floors = {"fields": share(kept, limit, None, 1.0), "precision": share(list(rows), 0, None, lowest)}
    if ratio is not None:
        floors["rows"] = share(list(rows), 0, ratio, 1.0)
    floors["all"] = share(kept, limit, ratio, lowest)
    return floors


def field_overhead(embedding: Any) -> dict[str, int]:
    """Bytes per field that quantization cannot shrink (a clustered field's value → row map, int32 per value)."""
    overhead: dict[str, int] = embedding.fixed_bytes()
    return overhead


def build_candidate(model: DLRM, data: PreparedData, candidate: Candidate, means: Mapping[str, Tensor],
                    policy: Mapping[str, Any], seed: int = 0) -> DLRM:
    """A new model: ``candidate.removed`` replaced by ``means``, the kept rows (behind a hashed tail when the
    candidate has a ``tail_ratio``, its hash seeded by ``seed``) in F-Quantization tiers.

    Tiers start from the expected Eq. 7 priority of every row over the training split (the
    fixed point of its expectation), so they are the tiers training would settle near. ``policy``
    holds further :class:`~sharkrec.quant.FQuantPolicy` options (alpha, beta, recheck_every).
    Rows are encoded with stochastic rounding drawn from ``seed`` (the caller's random state is
    left as it was), so a candidate is the same model every time it is built.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_candidate(model, data, candidate, means, policy, seed)


def _build_candidate(model: DLRM, data: PreparedData, candidate: Candidate, means: Mapping[str, Tensor],
                     policy: Mapping[str, Any], seed: int) -> DLRM:
    source: Any = model.embedding
    if storage(source).kind != "float" or source.removed_fields():
        raise TypeError("build_candidate takes an unpruned fp32 model (clustered or not)")
    kept_names = [f for f in source.field_names if f not in candidate.removed]
    kept: Any = source.subset(kept_names)  # copies: the given model is never changed
    if candidate.tail_ratio is not None:
        counts = value_counts(data)
        rows = kept.num_rows()
        layouts = {n: tail_layout(rows[n], candidate.tail_ratio, candidate.hot_share) for n in kept_names}
        kept = hash_tail(kept, counts, layouts, seed=seed)
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
