"""``sharkrec compress``: F-Permutation pruning, then F-Quantization training, then a serving artifact.

::

    result = compress(model, data, CompressConfig(target_memory=0.3, max_auc_drop=0.0015))
    result.model       # the compressed model (pruned fields → constants, kept rows in fp32/fp16/int8/int4)
    result.report      # bytes per stage, metrics before/after, seconds per stage, the search

Stages:

1. **importance** — F-Permutation scores (taylor2 by default) of every field on the validation split;
   the removal order is least important first.
2. **search** — every split of the budget between pruning and quantization
   (:func:`~sharkrec.compress.search.enumerate_candidates`) is predicted without training
   (post-training compressed model on the validation split); candidates are ranked by predicted
   validation AUC drop.
3. **train** — candidates are fine-tuned in that order with F-Quantization active (priorities
   and tiers keep updating; rows are written back in their tier) until one keeps every task's
   validation AUC within ``max_auc_drop`` (relative) of the uncompressed model, at most
   ``max_trainings`` of them. A full grid would train every candidate; the report says how many
   trainings the search took against that grid. A fine-tune that ends with a worse validation log
   loss than it started from is undone (the post-training model is kept).
4. **export** — the chosen model as an artifact (:func:`sharkrec.export.save_artifact`).

The test split is only used to report the chosen model's metrics, never to choose.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sharkrec.compress.search import (
    Candidate,
    Prediction,
    budget_floors,
    build_candidate,
    enumerate_candidates,
    field_overhead,
    predict_candidates,
    relative_auc_drop,
)
from sharkrec.compress.state import CompressState, candidate_from_dict
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import ConfigError
from sharkrec.importance.base import field_importance
from sharkrec.model.dlrm import DLRM
from sharkrec.model.embedding import storage
from sharkrec.model.protocol import check_field_path
from sharkrec.prune.loop import check_model_matches
from sharkrec.prune.plan import field_means, removable_fields
from sharkrec.train.fine_tune import DEFAULT_FINE_TUNE
from sharkrec.train.optim import OptimizerKind
from sharkrec.train.run import memory_summary
from sharkrec.train.trainer import TrainConfig, evaluate, fit_unless_worse

#: quantization-aware fine-tune of a candidate: the one fine-tune default for up to 2 epochs, best epoch kept
CANDIDATE_FINE_TUNE = dataclasses.replace(DEFAULT_FINE_TUNE, epochs=2, patience=1)


@dataclass(frozen=True)
class CompressConfig:
    """Settings of :func:`compress`.

    Attributes:
        target_memory: compressed embedding bytes as a share of the model's, in (0, 1].
        max_auc_drop: largest relative validation AUC drop (per task) a result may have, e.g. 0.0015.
        max_trainings: at most this many candidates are fine-tuned.
        fine_tune: training settings of each candidate's quantization-aware fine-tune.
        importance_method: F-Permutation method ranking the fields (``"default"`` = taylor2).
        fp32_shares: F-Quantization splits of the spare bytes tried (share promoting rows to fp32).
        allow_int4: let candidates use the int4 tier (needed for budgets below ~0.4 at dim 16).
        max_removed: never remove more than this many fields (default: no limit).
        keep: fields never removed.
        alpha, beta, recheck_every: F-Quantization's Eq. 7 / Eq. 8 settings during the fine-tune.
        batch_size: scoring and evaluation batch size.
        max_samples: score fields on at most this many validation samples.
        seed: scoring draws.
        cluster_rows_ratio: with a value, a Saec stage first clusters every field's values to this share of
            its rows (``sharkrec.cluster``), fine-tuned like a candidate; the search then prunes and
            quantizes the clustered model (pruning → clustering → quantization on the kept fields).
        cluster_method: ``saec`` (fast, head k-means + tail assignment), ``kmeans``, ``hashing`` or ``frequency``.
        tail_ratios: the rows axis: shares of each kept field's rows a candidate may keep through a hashed tail
            (hot values keep their rows, the rest share hashed ones; fields of at most 64 values stay whole);
            empty: every row kept. Not used over a clustered model (its maps already decide the rows).
        hot_share: share of a tailed field's rows given to its hottest values.
    """

    target_memory: float = 0.3
    max_auc_drop: float = 0.0015
    max_trainings: int = 3
    fine_tune: TrainConfig = CANDIDATE_FINE_TUNE
    importance_method: str = "default"
    fp32_shares: tuple[float, ...] = (0.25, 0.5)
    allow_int4: bool = True
    max_removed: int | None = None
    keep: tuple[str, ...] = ()
    alpha: float = 2.0
    beta: float = 0.01
    recheck_every: int = 100
    batch_size: int = 4096
    max_samples: int | None = None
    seed: int = 0
    cluster_rows_ratio: float | None = None
    cluster_method: str = "saec"
    tail_ratios: tuple[float, ...] = (0.5, 0.25, 0.1, 0.05, 0.02, 0.01)
    hot_share: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", tuple(str(k) for k in self.keep))
        object.__setattr__(self, "fp32_shares", tuple(float(s) for s in self.fp32_shares))
        object.__setattr__(self, "tail_ratios", tuple(float(r) for r in self.tail_ratios))
        checks = [
            (0.0 < self.target_memory <= 1.0,
             f"target memory {self.target_memory} must be in (0, 1]: the share of embedding bytes to keep, e.g. 0.3"),
            (0.0 <= self.max_auc_drop < 1.0,
             f"max AUC drop {self.max_auc_drop} must be in [0, 1): a relative drop, e.g. 0.0015 for 0.15%"),
            (self.max_trainings >= 1, f"max trainings {self.max_trainings} must be 1 or more"),
            (bool(self.fp32_shares) and all(0.0 <= s <= 1.0 for s in self.fp32_shares),
             f"fp32 shares {self.fp32_shares} must be one or more values in [0, 1]"),
            (self.max_removed is None or self.max_removed >= 0, f"max removed {self.max_removed} must be 0 or more"),
            (self.batch_size >= 1, f"batch size {self.batch_size} must be 1 or more"),
            (self.max_samples is None or self.max_samples >= 1, f"max samples {self.max_samples} must be 1 or more"),
            (all(0.0 < r < 1.0 for r in self.tail_ratios),
             f"tail ratios {self.tail_ratios} must be in (0, 1): shares of a field's rows to keep, e.g. 0.1"),
            (0.0 <= self.hot_share <= 1.0, f"hot share {self.hot_share} must be in [0, 1], e.g. 0.5"),
            (self.cluster_rows_ratio is None or 0.0 < self.cluster_rows_ratio <= 1.0,
             f"cluster rows ratio {self.cluster_rows_ratio} must be in (0, 1]: the share of rows kept, e.g. 0.5"),
            (self.fine_tune.optimizer in (OptimizerKind.SGD, OptimizerKind.ADAGRAD),
             f"the fine-tune optimizer is {self.fine_tune.optimizer.value}; mixed-precision rows train with "
             "sgd or adagrad"),
        ]
        for ok, message in checks:
            if not ok or any(isinstance(v, float) and math.isnan(v) for v in (self.target_memory, self.max_auc_drop)):
                raise ConfigError(message)

    def policy(self) -> dict[str, Any]:
        """F-Quantization options every candidate shares."""
        return {"alpha": self.alpha, "beta": self.beta, "recheck_every": self.recheck_every,
                "batch_size": self.fine_tune.batch_size}

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "fine_tune"}
        out["fine_tune"] = self.fine_tune.to_dict()
        out["keep"], out["fp32_shares"], out["tail_ratios"] = list(self.keep), list(self.fp32_shares), list(
            self.tail_ratios)
        return out


@dataclass(frozen=True)
class CompressResult:
    """The compressed model, the candidate it came from, and the report (see :func:`compress`)."""

    model: DLRM
    candidate: Candidate
    met_max_auc_drop: bool
    report: dict[str, Any] = field(default_factory=dict)


def compress(model: DLRM, data: PreparedData, config: CompressConfig | None = None, *,
             on_event: Callable[[str, dict[str, Any]], None] | None = None,
             state: CompressState | None = None) -> CompressResult:
    """Compress ``model`` (fp32, not changed) to ``config.target_memory`` of its embedding bytes.

    ``on_event(stage, payload)`` is called after the importance scores, each prediction and each
    training, so a CLI can show progress. With ``state`` the predictions and every finished
    training are saved as they come, and a resumed run takes them from there.
    """
    config = config or CompressConfig()
    _check_model(model, data, config)
    notify = on_event or (lambda stage, payload: None)
    tasks = data.schema.label_names
    valid = data.valid if len(data.valid) > 0 else data.train
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    base = {"valid": evaluate(model, valid, tasks), "test": _test_metrics(model, data)}
    base_bytes = int(model.embedding.embedding_bytes())
    source, cluster_report = model, None
    if config.cluster_rows_ratio is not None:
        tick = time.perf_counter()
        source, cluster_report = _cluster_stage(model, data, config)
        seconds["cluster"] = time.perf_counter() - tick
        notify("cluster", cluster_report)

    tick = time.perf_counter()
    removable = [f for f in removable_fields(source) if f not in config.keep]
    importance = field_importance(source, valid, config.importance_method, batch_size=config.batch_size,
                                  fields=removable, max_samples=config.max_samples, seed=config.seed)
    scores = {f: importance.score(f) for f in removable}
    order = sorted(removable, key=lambda f: scores[f])  # least important first; stable: model order
    means = field_means(source, valid, order, config.batch_size)
    seconds["importance"] = time.perf_counter() - tick
    notify("importance", {"scores": scores, "order": order})

    tick = time.perf_counter()
    candidates = enumerate_candidates(source, order, scores, config.target_memory, fp32_shares=config.fp32_shares,
                                      allow_int4=config.allow_int4, max_removed=config.max_removed,
                                      base_bytes=base_bytes, tail_ratios=config.tail_ratios,
                                      hot_share=config.hot_share)
    if not candidates:
        floors = budget_floors(source, order, allow_int4=config.allow_int4, max_removed=config.max_removed,
                               base_bytes=base_bytes, tail_ratios=config.tail_ratios, hot_share=config.hot_share)
        listed = ", ".join(f"{axis} {value:.4g}" for axis, value in floors.items())
        raise ConfigError(
            f"no way to reach {config.target_memory} of the embedding bytes: the smallest shares reachable are "
            f"{listed} (fields: removing all allowed, rows: the smallest tail ratio, precision: the lowest tier); "
            f"raise --target-memory to {floors['all']:.4g} or more, or allow more (int4, fields, smaller tail ratios)"
        )
    policy = config.policy()
    saved = state.predictions() if state is not None else None
    if saved is not None:
        predictions = [Prediction(candidate_from_dict(p), p["predicted_valid"], p["predicted_auc_drop"], p["bytes"])
                       for p in saved]
    else:
        predictions = predict_candidates(source, data, candidates, valid, means, policy, seed=config.seed,
                                         on_prediction=lambda p: notify("prediction", p.to_dict()))
        if state is not None:
            state.save_predictions([p.to_dict() for p in predictions])
    seconds["search"] = time.perf_counter() - tick

    tick = time.perf_counter()
    trainings: list[dict[str, Any]] = []
    best: tuple[float, DLRM, Prediction] | None = None
    done = state.trained() if state is not None else []
    for k, prediction in enumerate(predictions[: config.max_trainings]):
        if k < len(done) and state is not None:
            trial, entry = state.load_trained(k), {**done[k], "resumed": True}
        else:
            trial, entry = _fine_tune(source, data, prediction, means, policy, config, base["valid"])
            if state is not None:
                state.save_trained(k, trial, entry, data)
        trainings.append(entry)
        notify("training", entry)
        if best is None or entry["valid_auc_drop"] < best[0]:
            best = (entry["valid_auc_drop"], trial, prediction)
        if entry["valid_auc_drop"] <= config.max_auc_drop:
            break
    seconds["train"] = time.perf_counter() - tick
    assert best is not None
    drop, compressed, chosen = best
    compressed.eval()

    after = {"valid": evaluate(compressed, valid, tasks), "test": _test_metrics(compressed, data)}
    memory = memory_summary(compressed)
    pruned_bytes = _bytes_without(source, chosen.candidate.removed)
    rows_bytes = _fp32_bytes(compressed, len(chosen.candidate.removed))
    final_bytes = int(compressed.embedding.embedding_bytes())
    report: dict[str, Any] = {
        "command": "compress",
        "config": config.to_dict(),
        "chosen": chosen.to_dict(),
        "met_max_auc_drop": bool(drop <= config.max_auc_drop),
        "bytes": {"fp32": base_bytes,
                  **({"after_clustering": int(source.embedding.embedding_bytes())} if cluster_report else {}),
                  "after_pruning": pruned_bytes,
                  "after_rows": rows_bytes,
                  "after_quantization": final_bytes,
                  "share_of_fp32": final_bytes / base_bytes},
        "axes": _axes(base_bytes, int(source.embedding.embedding_bytes()), pruned_bytes, rows_bytes, final_bytes,
                      chosen.candidate),
        "metrics_before": base,
        "metrics": after,
        "auc_drop": {split: {t: 1.0 - after[split][t]["auc"] / base[split][t]["auc"] for t in tasks}
                     for split in after if after[split]},
        "memory": memory,
        "importance": {"method": importance.method, "scores": scores, "order": order},
        "cluster": cluster_report,
        "search": {"grid_size": len(candidates), "trainings": len(trainings),
                   "predictions": [p.to_dict() for p in predictions], "trained": trainings},
        "seconds": {**seconds, "total": time.perf_counter() - started},
    }
    return CompressResult(compressed, chosen.candidate, report["met_max_auc_drop"], report)


def _check_model(model: DLRM, data: PreparedData, config: CompressConfig) -> None:
    check_field_path(model, "compress")
    if storage(model.embedding).kind != "float" or model.embedding.removed_fields():
        raise ConfigError(
            f"compress starts from an fp32 model; this one has a {type(model.embedding).__name__} embedding "
            "(compress the model 'sharkrec train' wrote, before pruning or quantizing it)"
        )
    check_model_matches(model, data)
    unknown = [f for f in config.keep if f not in model.field_names]
    if unknown:
        raise ConfigError(f"fields {unknown} are not in the model; known fields: {', '.join(model.field_names)}")
    if len(data.train) == 0:
        raise ConfigError("the training split is empty; compress needs training data to fine-tune on")


def _cluster_stage(model: DLRM, data: PreparedData,
                   config: CompressConfig) -> tuple[DLRM, dict[str, Any]]:
    """Saec on every field to ``cluster_rows_ratio`` of its rows, fine-tuned like a candidate (kept only if it
    lowers the validation log loss); the map, clusters and seconds go to the report."""
    from sharkrec.cluster import cluster_model

    clustered, report = cluster_model(model, data, rows_ratio=config.cluster_rows_ratio,
                                      method=config.cluster_method, seed=config.seed, evaluate=False)
    valid = data.valid if len(data.valid) > 0 else data.train
    clustered, tuned = fit_unless_worse(clustered, config.fine_tune, data.schema.label_names, data.train, valid)
    kept, after = tuned["kept"], tuned["valid_after"] if tuned["kept"] else tuned["valid_before"]
    memory = report["memory"]
    return clustered, {"method": config.cluster_method, "rows_ratio": config.cluster_rows_ratio,
                       "rows_compression": memory.get("rows_compression"), "fine_tune_kept": kept, "valid": after,
                       "bytes_map_folded_into_vocabulary": memory.get("bytes_map_folded_into_vocabulary"),
                       "bytes_map_as_index": memory.get("bytes_map_as_index"),
                       "clustering": report.get("clustering")}


def _bytes_without(model: DLRM, removed: tuple[str, ...]) -> int:
    """Embedding bytes of ``model`` with the tables (and cluster maps) of ``removed`` replaced by constants."""
    embedding = model.embedding
    dim = int(embedding.embedding_dim)
    rows, overhead = embedding.num_rows(), field_overhead(embedding)
    dropped = sum(rows[f] * dim * 4 + overhead.get(f, 0) for f in removed)
    return int(embedding.embedding_bytes()) - dropped + len(removed) * dim * 4


def _fp32_bytes(model: DLRM, constants: int) -> int:
    """Bytes ``model``'s embedding would hold with its rows in fp32: the rows it keeps (all kept fields), the maps,
    hot ids and hash pairs in front of them, and ``constants`` removed fields' vectors."""
    embedding = model.embedding
    dim = int(embedding.embedding_dim)
    rows = storage(embedding).num_rows()
    return int(sum(rows.values()) * dim * 4 + sum(embedding.fixed_bytes().values()) + constants * dim * 4)


def _axes(fp32: int, clustered: int, pruned: int, rows: int, final: int, candidate: Candidate) -> dict[str, Any]:
    """Which axis paid for what: bytes each stage took off, in the order they apply, and as shares of fp32."""
    saved = {"rows (clustering)": fp32 - clustered, "fields (F-Permutation)": clustered - pruned,
             "rows (hashed tail)": pruned - rows, "precision (F-Quantization)": rows - final}
    return {"bytes_saved": saved, "share_of_fp32_saved": {axis: b / fp32 for axis, b in saved.items()},
            "fields_removed": len(candidate.removed), "tail_ratio": candidate.tail_ratio,
            "quant_budget": candidate.quant_budget, "use_int4": candidate.use_int4,
            "dimension": "not searched: every candidate keeps D (PEP and mixed dimensions are separate methods)"}


def _test_metrics(model: DLRM, data: PreparedData) -> dict[str, dict[str, float]]:
    return evaluate(model, data.test, data.schema.label_names) if len(data.test) > 0 else {}


def _fine_tune(model: DLRM, data: PreparedData, prediction: Prediction, means: Mapping[str, Any],
               policy: Mapping[str, Any], config: CompressConfig, base_valid: Mapping[str, Mapping[str, float]]
               ) -> tuple[DLRM, dict[str, Any]]:
    """Build the candidate and train it with F-Quantization active; undo a fine-tune that hurt."""
    valid = data.valid if len(data.valid) > 0 else data.train
    tick = time.perf_counter()
    trial = build_candidate(model, data, prediction.candidate, means, policy, config.seed)
    trial, tuned = fit_unless_worse(trial, config.fine_tune, data.schema.label_names, data.train, valid)
    kept, after = tuned["kept"], tuned["valid_after"] if tuned["kept"] else tuned["valid_before"]
    rows_moved = getattr(_quantized(trial), "rows_moved", 0)
    entry = {
        "label": prediction.candidate.label,
        "predicted_auc_drop": prediction.auc_drop,
        "valid_auc_drop": relative_auc_drop(base_valid, after),
        "valid": after,
        "fine_tune_kept": kept,
        "steps": tuned["steps"],
        "rows_moved": int(rows_moved),
        "bytes": int(trial.embedding.embedding_bytes()),
        "seconds": time.perf_counter() - tick,
    }
    return trial, entry


def _quantized(model: DLRM) -> Any:
    embedding = model.embedding
    return getattr(embedding, "kept", embedding)

