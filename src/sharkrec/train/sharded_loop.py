"""The training loop of sharded tables (``--shard``, fp32 DMP or F-Quantization): validation, early stopping,
per-rank checkpoints and ``--resume``.

A *run* is a :class:`~sharkrec.train.sharded.ShardedDLRM` or :class:`~sharkrec.train.sharded_fq.ShardedFQModel`;
both give ``model``, ``forward(batch)``, ``observe(batch)``, ``table_optimizer(config)``, ``table_state(opt)`` /
``load_table_state(state, opt)`` (this rank's rows and their optimizer state) and ``signature()`` (kind, world
size and plan).

- **Validation** every ``eval_every`` steps (default: ``evals_per_epoch`` per epoch) on every rank (lookups are
  collective; every rank gets the same outputs); the stop decision is rank 0's, broadcast. The best weights are
  kept (each rank its shards) and loaded at the end, as :class:`~sharkrec.train.trainer.Trainer` does.
- **Checkpoints** at every validation into ``OUT/checkpoints/``: every rank writes ``last-rank<r>-of-<W>.pt`` (its
  shards' rows and optimizer state), rank 0 also ``last-dense.pt`` (dense weights and optimizer, progress), each
  atomically; the same ``best-*`` files when the validation improved.
- **Resume** reads them back: the same world size and plan or a one-line :class:`CheckpointError`; all rank files
  of the same step. Batches are the seeded global batches (:func:`~sharkrec.train.sharded.global_batches`) from
  the saved position, and the F-Q rounding draws are keyed by step and row, so an interrupted and resumed run
  takes the same steps as an uninterrupted one (tested).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharkrec import distributed
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import CheckpointError, ConfigError
from sharkrec.io import atomic_save

STATE_FORMAT = "sharkrec-sharded-train-state"
STATE_VERSION = 1


def _paths(out_dir: Path, which: str) -> tuple[Path, Path]:
    folder = out_dir / "checkpoints"
    return folder / f"{which}-dense.pt", folder / f"{which}-rank{distributed.rank()}-of-{distributed.world_size()}.pt"


def _dense_state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    weights = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    return {"weights": weights, "optimizer": copy.deepcopy(optimizer.state_dict())}


@torch.no_grad()
def _load_dense(model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    for key, value in state["weights"].items():
        own[key].copy_(value)
    optimizer.load_state_dict(state["optimizer"])


def _save(out_dir: Path, which: str, payload: dict[str, Any], tables: dict[str, Any]) -> None:
    dense_path, rank_path = _paths(out_dir, which)
    step = payload["progress"]["step"]
    atomic_save(rank_path, lambda tmp: torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
                                                   "signature": payload["signature"], "tables": tables}, tmp))
    if distributed.is_main():
        atomic_save(dense_path, lambda tmp: torch.save(payload, tmp))


def _read(out_dir: Path, which: str, signature: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from sharkrec.train.checkpoint import read_payload

    dense_path, rank_path = _paths(out_dir, which)
    if not dense_path.is_file():
        raise CheckpointError(f"nothing to resume: {str(dense_path)!r} does not exist; run without --resume to start")
    dense = read_payload(dense_path, STATE_FORMAT, STATE_VERSION)
    saved = dense["signature"]
    if saved != signature:
        def what(sig: dict[str, Any]) -> str:
            precision = " --precision f-quant" if "policy" in sig else ""
            return f"{sig['world']} rank(s) with --shard {sig['kind']}{precision}"

        other = saved.get("plan") != signature.get("plan") or saved.get("policy") != signature.get("policy")
        raise CheckpointError(f"cannot resume: the checkpoint was written by {what(saved)}, this run has "
                              f"{what(signature)}{' and another plan or policy' if other else ''}; resume with "
                              f"torchrun --nproc_per_node={saved['world']} and the same options, or use a new --out")
    if not rank_path.is_file():
        raise CheckpointError(f"cannot resume: {str(rank_path)!r} (this rank's shards) is missing; resume with the "
                              "same number of processes and the same --out")
    shard = read_payload(rank_path, STATE_FORMAT, STATE_VERSION)
    if shard["step"] != dense["progress"]["step"] or shard["signature"] != signature:
        raise CheckpointError(f"cannot resume: {str(rank_path)!r} is from step {shard['step']}, the dense state from "
                              f"step {dense['progress']['step']}; the checkpoint is incomplete, start a new --out")
    return dense, shard["tables"]


def _score(metrics: dict[str, dict[str, float]], config: Any, task_names: tuple[str, ...]) -> float:
    from sharkrec.train.trainer import StopMetric

    weights = list(config.task_weights or (1.0,) * len(task_names))
    key = config.stop_metric.value
    values = [metrics[name][key] for name in task_names]
    if any(not math.isfinite(v) for v in values):
        return -math.inf if config.stop_metric is StopMetric.AUC else math.inf
    return float(sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights))


def run_training(run: Any, data: PreparedData, config: Any, out_dir: str | Path | None = None,
                 resume: bool = False) -> dict[str, Any]:
    """Train ``run`` (see the module docstring); returns the training summary with the best weights loaded."""
    from sharkrec.train.metrics import task_metrics
    from sharkrec.train.sharded import global_batches, predict
    from sharkrec.train.trainer import StopMetric, loss_from_outputs

    model = run.model
    world = distributed.world_size()
    steps_per_epoch = len(data.train) // (world * config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    eval_every = config.eval_every or max(1, steps_per_epoch // config.evals_per_epoch)
    valid = data.valid
    names = tuple(data.schema.label_names)
    dense = [p for name, p in model.named_parameters() if not name.startswith("embedding.")]
    kinds = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
    optimizer = kinds[config.optimizer.value](dense, lr=config.lr, weight_decay=config.weight_decay)
    rows_optimizer = run.table_optimizer(config)
    weights = torch.tensor(config.task_weights or [1.0] * model.num_tasks)
    signature = run.signature()
    out = Path(out_dir) if out_dir is not None else None
    progress: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "history": [], "best_value": None,
                                "best_step": 0, "bad_evals": 0, "samples": 0, "seconds": 0.0, "stopped_early": False}
    best: tuple[dict[str, Any], dict[str, Any]] | None = None
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out (the folder of the interrupted run)")
        state, tables = _read(out, "last", signature)
        changed = sorted(k for k, v in config.to_dict().items()
                         if k not in ("epochs", "max_steps", "progress") and state["train_config"].get(k) != v)
        if changed:
            raise CheckpointError(f"cannot resume: settings {changed} differ from the interrupted run; use the same "
                                  "settings or a new --out")
        _load_dense(model, optimizer, state["dense"])
        run.load_table_state(tables, rows_optimizer)
        progress = state["progress"]
        if progress["best_step"] != progress["step"]:
            best_state, best_tables = _read(out, "best", signature)
            best = (best_state["dense"], best_tables)
    losses: list[float] = []
    started = time.perf_counter() - progress["seconds"]
    done = progress["stopped_early"] or progress["step"] >= total_steps
    model.train()
    while not done and progress["epoch"] < config.epochs:
        for index in global_batches(data.train, config.batch_size, progress["epoch"], config.seed)[progress["batch"]:]:
            batch = data.train.batch(index)
            optimizer.zero_grad()
            if rows_optimizer is not None:
                rows_optimizer.zero_grad()
            run.observe(batch)
            vectors, logits = run.forward(batch)  # (B, F, D), (B, T)
            loss = loss_from_outputs(vectors, logits, batch, weights, config.embedding_l2)
            loss.backward()
            optimizer.step()
            if rows_optimizer is not None:
                rows_optimizer.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise ConfigError(f"training loss became {losses[-1]}; lower the learning rate (now {config.lr})")
            progress["step"] += 1
            progress["batch"] += 1
            progress["samples"] += len(index) * world
            at_end = progress["step"] >= total_steps
            if progress["step"] % eval_every != 0 and not at_end:
                continue
            improved = False
            if len(valid):
                metrics = task_metrics(valid.labels.numpy(), predict(model, valid, config.eval_batch_size), names)
                model.train()
                value = _score(metrics, config, names)
                progress["history"].append({"step": progress["step"], "epoch": progress["epoch"], "valid": metrics})
                better = progress["best_value"] is None or (
                    value > progress["best_value"] if config.stop_metric is StopMetric.AUC
                    else value < progress["best_value"])
                improved = bool(distributed.broadcast(torch.tensor([better], dtype=torch.int64))[0])  # rank 0 decides
                if improved:
                    progress.update(best_value=value, best_step=progress["step"], bad_evals=0)
                else:
                    progress["bad_evals"] += 1
            stop = config.patience > 0 and progress["bad_evals"] >= config.patience
            progress["stopped_early"] = bool(stop)
            progress["seconds"] = time.perf_counter() - started
            if out is not None or improved:  # copies of this rank's state: only when kept or written
                dense_state, tables = _dense_state(model, optimizer), run.table_state(rows_optimizer)
                if improved:
                    best = (dense_state, tables)
            if out is not None:
                payload = {"format": STATE_FORMAT, "version": STATE_VERSION, "train_config": config.to_dict(),
                           "signature": signature, "progress": progress, "dense": dense_state}
                _save(out, "last", payload, tables)
                if improved:
                    _save(out, "best", payload, tables)
            if stop or at_end:
                done = True
                break
        if not done:
            progress["epoch"] += 1
            progress["batch"] = 0
    if best is not None and progress["best_step"] != progress["step"]:
        _load_dense(model, optimizer, best[0])
        run.load_table_state(best[1], rows_optimizer)
    model.eval()
    seconds = time.perf_counter() - started
    return {"steps": progress["step"], "samples": progress["samples"], "train_seconds": seconds,
            "best_step": progress["best_step"], "stopped_early": progress["stopped_early"],
            "history": progress["history"], "samples_per_second": progress["samples"] / seconds if seconds else 0.0,
            "final_loss": float(np.mean(losses[-20:])) if losses else None}
