"""Train and evaluate a model on prepared data, writing a model file and ``report.json``.

These are the library functions behind ``sharkrec train`` and ``sharkrec evaluate``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sharkrec import distributed
from sharkrec.data.dataset import PreparedData
from sharkrec.data.schema import Schema
from sharkrec.errors import ConfigError
from sharkrec.io import write_json
from sharkrec.model.dlrm import DLRM, DLRMConfig
from sharkrec.train.checkpoint import MODEL_FILE, ModelBundle, save_model
from sharkrec.train.trainer import TrainConfig, Trainer, TrainResult, evaluate
from sharkrec.train.tune import tune as tune_search

REPORT_FILE = "report.json"


def model_config_for(data: PreparedData, **options: Any) -> DLRMConfig:
    """A DLRM configuration shaped for ``data`` (fields, rows, dense inputs, tasks) plus ``options``."""
    return DLRMConfig(
        num_dense=len(data.schema.dense),
        field_rows=tuple(data.cardinalities.items()),
        tasks=data.schema.label_names,
        **{k: v for k, v in options.items() if v is not None},
    )


def build_model(data: PreparedData, seed: int = 0, **options: Any) -> DLRM:
    torch.manual_seed(seed)
    return DLRM(model_config_for(data, **options))


def memory_summary(model: DLRM) -> dict[str, Any]:
    """Bytes actually held by the embedding tables, and what fp32 tables of the same rows would hold.

    Layers that report their storage in detail (mixed precision) add ``detail``: per-tier payload,
    scales, row map, the paper's Table 1 header words and training-only extras.
    ``embedding_bytes_per_rank``: what each torchrun rank holds; without ``--shard`` every rank holds every
    table (sharded tables report their local shards: :meth:`sharkrec.train.sharded.ShardedDLRM.memory`).
    """
    rows = model.embedding.num_rows()
    fp32 = sum(rows.values()) * model.embedding.embedding_dim * 4
    summary: dict[str, Any] = {
        "embedding_bytes": int(model.embedding.embedding_bytes()),
        "embedding_bytes_fp32": int(fp32),
        "embedding_rows": int(sum(rows.values())),
    }
    summary["embedding_share_of_fp32"] = summary["embedding_bytes"] / fp32 if fp32 else 0.0
    summary["embedding_bytes_per_rank"] = [summary["embedding_bytes"]] * distributed.world_size()  # replicated
    detail = getattr(model.embedding, "memory_report", None)
    if callable(detail):
        summary["detail"] = detail().to_dict()
    return summary


def split_metrics(model: DLRM, data: PreparedData, splits: tuple[str, ...] = ("valid", "test")) -> dict[str, Any]:
    return {
        name: evaluate(model, data.split(name), data.schema.label_names) for name in splits if len(data.split(name)) > 0
    }


def train_model(
    data: PreparedData,
    train_config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    model_options: dict[str, Any] | None = None,
    model: DLRM | None = None,
    precision: str = "fp32",
    precision_options: dict[str, Any] | None = None,
    tune: bool = False,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[DLRM, dict[str, Any]]:
    """Build (or take) a DLRM, train it, evaluate it and, with ``out_dir``, write model and report.

    With ``tune``, lr and the embedding L2 are searched on the validation split first
    (:func:`sharkrec.train.tune.tune`) and the best trial's model is the result; ``report["tuning"]``
    lists every trial. ``out_dir`` is locked for the run (:func:`sharkrec.io.output_lock`).
    """
    started = time.perf_counter()
    with distributed.hold_output(out_dir, "train"):
        build = _builder(data, model, model_options or {}, precision, precision_options or {})
        tuning = None
        if tune:
            tuning = tune_search(data, train_config, build, out_dir, resume=resume, on_trial=on_trial)
            trained, train_config, result = tuning.model, tuning.config, tuning.train_result
        else:
            trained = build(train_config, copy_model=False)  # the caller's model itself when one was given
            trainer = Trainer(trained, train_config, data.schema.label_names, out_dir)
            result = trainer.fit(data.train, data.valid, resume=resume)
        report = training_report(trained, data, train_config, result)
        report["config"]["precision"] = {"scheme": precision, **(precision_options or {})}
        if tuning is not None:
            report["tuning"] = tuning.to_dict()
        report["distributed"] = distributed.summary()
        report["seconds"] = time.perf_counter() - started
        if out_dir is not None and distributed.is_main():  # under torchrun every rank holds the same model
            out = Path(out_dir)
            save_model(
                out / MODEL_FILE,
                trained,
                data.schema,
                data.vocabularies,
                info={"train_config": train_config.to_dict(), "metrics": report["metrics"]},
            )
            write_json(out / REPORT_FILE, report)
        distributed.barrier()  # other ranks return once the files exist
    return trained, report


def _builder(data: PreparedData, model: DLRM | None, model_options: dict[str, Any], precision: str,
             precision_options: dict[str, Any]) -> Callable[..., DLRM]:
    """A function (config, copy=True) → a model to train: built from ``data`` (seeded) or a copy of ``model``
    (``model`` itself with ``copy=False``), its tables in ``precision``."""
    def build(config: TrainConfig, copy_model: bool = True) -> DLRM:
        if model is None:
            fresh = build_model(data, config.seed, **model_options)
        else:
            fresh = copy.deepcopy(model) if copy_model else model
        if precision == "fp32":
            return fresh
        from sharkrec.model.embedding import FloatEmbedding
        from sharkrec.quant.build import build_embedding

        if fresh.embedding.kind != FloatEmbedding.kind:  # a stack (pruned, clustered, tiers) is not rebuilt
            raise ConfigError(f"--precision {precision} starts from fp32 tables; this model already has "
                              f"a {type(fresh.embedding).__name__}")
        options = {"batch_size": config.batch_size, **precision_options}
        return fresh.with_embedding(build_embedding(precision, fresh.embedding, data, **options))

    return build


def training_report(model: DLRM, data: PreparedData, config: TrainConfig, result: TrainResult) -> dict[str, Any]:
    return {
        "command": "train",
        "metrics": split_metrics(model, data),
        "memory": memory_summary(model),
        "training": {
            "steps": result.steps,
            "samples": result.samples,
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
            "train_seconds": result.seconds,
            "data_seconds": result.data_seconds,
            "samples_per_second": result.samples_per_second,
            "history": result.history,
        },
        "config": {"train": config.to_dict(), "model": model.config.to_dict()},
        "data": _data_summary(data),
    }


def evaluate_bundle(bundle: ModelBundle, data: PreparedData, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a saved model on data encoded with the model's own vocabularies."""
    started = time.perf_counter()
    check_schema_matches(bundle.schema, data.schema)
    model = bundle.model
    if not isinstance(model, DLRM):
        raise ConfigError(f"cannot evaluate a {type(model).__name__}; sharkrec evaluates DLRM models")
    report: dict[str, Any] = {
        "command": "evaluate",
        "metrics": split_metrics(model, data, ("train", "valid", "test")),
        "memory": memory_summary(model),
        "data": _data_summary(data),
    }
    report["seconds"] = time.perf_counter() - started
    if out_dir is not None:
        write_json(Path(out_dir) / REPORT_FILE, report)
    return report


def check_schema_matches(model_schema: Schema, data_schema: Schema) -> None:
    """One-line error when data does not have the model's fields."""
    for kind in ("sparse_names", "dense_names", "label_names"):
        want, got = getattr(model_schema, kind), getattr(data_schema, kind)
        if tuple(want) != tuple(got):
            missing = [n for n in want if n not in got]
            extra = [n for n in got if n not in want]
            raise ConfigError(
                f"the data does not match the model's schema ({kind.split('_')[0]} fields: missing {missing}, "
                f"unexpected {extra}); use the format and schema the model was trained with"
            )


def _data_summary(data: PreparedData) -> dict[str, Any]:
    summary = {k: v for k, v in data.report.items() if k != "ground_truth"}
    summary["rows"] = {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)}
    summary["fields"] = {
        "sparse": list(data.schema.sparse_names),
        "dense": list(data.schema.dense_names),
        "labels": list(data.schema.label_names),
    }
    return summary
