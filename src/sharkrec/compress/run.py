"""Compress a saved model and write model.pt, the serving artifact and report.json: the library behind
``sharkrec compress``."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sharkrec import distributed
from sharkrec.compress.pipeline import CompressConfig, CompressResult, compress
from sharkrec.compress.state import CompressState
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import ConfigError
from sharkrec.io import write_json
from sharkrec.model.dlrm import DLRM
from sharkrec.train.checkpoint import MODEL_FILE, ModelBundle, save_model
from sharkrec.train.fine_tune import fine_tune_config
from sharkrec.train.optim import OptimizerKind
from sharkrec.train.trainer import TrainConfig

ARTIFACT_DIR = "artifact"
REPORT_FILE = "report.json"
STATE_DIR = "compress_state"
ADAM_FALLBACK_LR = 0.005


def fine_tune_for(bundle: ModelBundle, *, epochs: int = 2, lr: float | None = None, seed: int = 0) -> TrainConfig:
    """The candidates' fine-tune: the one fine-tune of :mod:`sharkrec.train.fine_tune` (the model's optimizer,
    batch size and regularisation at ``LR_SCALE`` x its lr) for ``epochs``, patience 1. Mixed-precision rows
    train with row-wise Adagrad or SGD, so a model trained with Adam fine-tunes with Adagrad at lr 0.005
    unless ``lr`` is given."""
    config = fine_tune_config(bundle.info.get("train_config"), epochs=epochs, patience=1, lr=lr, seed=seed)
    if config.optimizer not in (OptimizerKind.SGD, OptimizerKind.ADAGRAD):
        config = dataclasses.replace(config, optimizer=OptimizerKind.ADAGRAD, lr=lr or ADAM_FALLBACK_LR,
                                     embedding_lr=None)
    return config


def run_compress(bundle: ModelBundle, data: PreparedData, config: CompressConfig, out_dir: str | Path | None = None,
                 *, on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 resume: bool = False) -> CompressResult:
    """Run :func:`compress` on a saved model; with ``out_dir`` write model.pt, artifact/ and report.json.

    Progress (predictions, each trained candidate) is saved in ``out_dir/compress_state/`` as it
    comes; ``resume=True`` continues an interrupted run from there. The results are written only
    after the whole run succeeded (each file atomically), report.json last; the state folder is then
    removed.
    """
    from sharkrec.export import save_artifact

    model = bundle.model
    if not isinstance(model, DLRM):  # a saved model file holds sharkrec's DLRM; compress() takes any FieldModel
        raise ConfigError(f"cannot compress a {type(model).__name__}; sharkrec compresses DLRM models")
    if out_dir is None:
        if resume:
            raise ConfigError("resuming needs the output folder of the interrupted run")
        return compress(model, data, config, on_event=on_event)
    out = Path(out_dir)
    state = CompressState(out / STATE_DIR, _fingerprint(model, data, config), resume=resume)
    result = compress(model, data, config, on_event=on_event, state=state)
    result.report["distributed"] = distributed.summary()
    if distributed.is_main():  # under torchrun every rank holds the same result; rank 0 writes it
        tick = time.perf_counter()
        info = {**bundle.info, "compression": {"candidate": result.candidate.to_dict(), "config": config.to_dict()},
                "metrics": result.report["metrics"]}
        save_model(out / MODEL_FILE, result.model, bundle.schema, bundle.vocabularies, info=info)
        manifest = save_artifact(result.model, bundle.schema, bundle.vocabularies, out / ARTIFACT_DIR)
        files = manifest.get("files", {})
        result.report["artifact"] = {"path": str(out / ARTIFACT_DIR), "memory": manifest.get("memory", {}),
                                     "file_bytes": {name: meta["bytes"] for name, meta in files.items()}}
        result.report["seconds"]["export"] = time.perf_counter() - tick
        write_json(out / REPORT_FILE, result.report)
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    distributed.barrier()  # other ranks return once the files exist
    return result


def _fingerprint(model: DLRM, data: PreparedData, config: CompressConfig) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one: settings, weights (summaries), data sizes."""
    with torch.no_grad():
        weights = {name: [list(t.shape), float(t.double().sum()), float(t.double().abs().sum())]
                   for name, t in model.state_dict().items() if t.is_floating_point()}
    sizes = {name: len(data.split(name)) for name in ("train", "valid", "test")}
    return {"config": config.to_dict(), "weights": weights, "sizes": sizes,
            "labels": float(data.train.labels.double().sum())}


def print_event(stage: str, payload: dict[str, Any], console: Console | None = None) -> None:
    """One line per stage event: the field ranking, each prediction, each training."""
    console = console or Console()
    if stage == "cluster":
        console.print(f"clustered ({payload['method']}): {payload['rows_compression']:.1f}x fewer rows, "
                      f"fine-tune {'kept' if payload['fine_tune_kept'] else 'undone'}", soft_wrap=True)
    elif stage == "importance":
        console.print(f"importance (least important first): {', '.join(payload['order'])}", soft_wrap=True)
    elif stage == "prediction":
        console.print(f"  predicted {payload['label']}: valid AUC drop {payload['predicted_auc_drop']:+.3%}, "
                      f"{payload['bytes']:,} bytes", soft_wrap=True)
    elif stage == "training":
        status = "kept" if payload["fine_tune_kept"] else "undone (valid log loss rose)"
        console.print(f"trained {payload['label']}: valid AUC drop {payload['valid_auc_drop']:+.3%} "
                      f"(predicted {payload['predicted_auc_drop']:+.3%}), {payload['steps']} steps, fine-tune "
                      f"{status}, {payload['seconds']:.1f} s", soft_wrap=True)


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    b = report["bytes"]
    clustered = f" → clustered {b['after_clustering']:,}" if "after_clustering" in b else ""
    tail = (f" → hashed tail {b['after_rows']:,}" if b.get("after_rows", b["after_pruning"]) != b["after_pruning"]
            else "")
    console.print(f"embedding bytes: fp32 {b['fp32']:,}{clustered} → pruned {b['after_pruning']:,}{tail} → quantized "
                  f"{b['after_quantization']:,} ({b['share_of_fp32']:.1%} of fp32)")
    for split, drops in report["auc_drop"].items():
        before, after = report["metrics_before"][split], report["metrics"][split]
        text = ", ".join(f"{t} {before[t]['auc']:.4f} → {after[t]['auc']:.4f} ({-d:+.3%})" for t, d in drops.items())
        console.print(f"{split} AUC: {text}", soft_wrap=True)
    search = report["search"]
    console.print(f"search: {search['trainings']} training(s) instead of a full grid of {search['grid_size']}; "
                  f"chosen {report['chosen']['label']}; "
                  f"{'meets' if report['met_max_auc_drop'] else 'does NOT meet'} the max AUC drop "
                  f"{report['config']['max_auc_drop']:.2%}")
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items())
    console.print(f"seconds: {secs}")
