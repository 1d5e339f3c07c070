"""Training loop: sparse embedding updates, periodic validation, early stopping, resumable.

A run with an output folder writes ``checkpoints/last.pt`` (everything needed to continue:
weights, optimizer state, random state, position in the epoch) at every validation and when
interrupted, and ``checkpoints/best.pt`` (weights of the best validation score). ``fit(resume=True)``
continues an interrupted run to the same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import enum
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sharkrec import distributed
from sharkrec.data.batch import Batch
from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import CheckpointError, ConfigError, parse_choice
from sharkrec.io import atomic_save
from sharkrec.model.dlrm import DLRM
from sharkrec.train.metrics import task_metrics
from sharkrec.train.optim import OptimizerKind, SplitOptimizer
from sharkrec.train.parallel import DataParallel

STATE_FORMAT = "sharkrec-train-state"
STATE_VERSION = 1


class StopMetric(str, enum.Enum):
    """Validation metric that picks the best checkpoint and drives early stopping."""

    AUC = "auc"
    LOGLOSS = "logloss"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run.

    The defaults are the ones that train well with no flags (README "Training recipes"): row-wise Adagrad
    for the tables (and Adagrad for the dense network) — which every embedding precision also trains
    with —, an L2 penalty on the looked-up rows, a small weight decay on the dense weights, four
    validations per epoch and early stopping after
    1.5 epochs without a better validation log loss. Batch 512 as in the SHARK paper. On small data
    ``sharkrec train`` also searches lr and L2 on the validation split (:mod:`sharkrec.train.tune`).
    """

    optimizer: OptimizerKind = OptimizerKind.ADAGRAD
    lr: float = 0.05
    embedding_lr: float | None = None
    batch_size: int = 512
    epochs: int = 20
    max_steps: int | None = None
    eval_every: int | None = None  # steps between validations; None: evals_per_epoch per epoch
    evals_per_epoch: int = 4
    patience: int = 6  # validations without improvement before stopping; 0 disables early stopping
    stop_metric: StopMetric = StopMetric.LOGLOSS
    embedding_l2: float = 0.001  # L2 penalty on the looked-up vectors of each batch (touches used rows only)
    weight_decay: float = 1e-5  # L2 on the dense network's weights (lifts MovieLens' no-flags AUC 0.7065 -> 0.7101)
    task_weights: tuple[float, ...] | None = None
    seed: int = 0
    eval_batch_size: int = 8192
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, OptimizerKind):
            object.__setattr__(self, "optimizer", parse_choice(OptimizerKind, self.optimizer, "optimizer"))
        if not isinstance(self.stop_metric, StopMetric):
            object.__setattr__(self, "stop_metric", parse_choice(StopMetric, self.stop_metric, "stop metric"))
        checks = [
            (self.lr > 0, f"learning rate {self.lr} must be positive"),
            (self.embedding_lr is None or self.embedding_lr > 0, f"embedding lr {self.embedding_lr} must be positive"),
            (self.batch_size >= 1, f"batch size {self.batch_size} must be 1 or more"),
            (self.epochs >= 1, f"epochs {self.epochs} must be 1 or more"),
            (self.max_steps is None or self.max_steps >= 1, f"max steps {self.max_steps} must be 1 or more"),
            (self.eval_every is None or self.eval_every >= 1, f"eval every {self.eval_every} must be 1 or more"),
            (self.evals_per_epoch >= 1, f"evals per epoch {self.evals_per_epoch} must be 1 or more"),
            (self.patience >= 0, f"patience {self.patience} must be 0 or more"),
            (self.embedding_l2 >= 0 and self.weight_decay >= 0, "regularisation strengths must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.task_weights is not None:
            weights = tuple(float(w) for w in self.task_weights)
            if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
                raise ConfigError(f"task weights {weights} must be non-negative with a positive sum")
            object.__setattr__(self, "task_weights", weights)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["optimizer"] = self.optimizer.value
        out["stop_metric"] = self.stop_metric.value
        return out




class TrainingInterrupted(RuntimeError):
    """Raised after an interrupted run saved its state; continue it with ``resume=True``."""


@dataclass
class TrainResult:
    """What a run produced: history of validations, the best one, and throughput."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int = 0
    best_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    stopped_early: bool = False

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@torch.no_grad()
def predict(model: nn.Module, split: EncodedSplit, batch_size: int = 8192) -> np.ndarray:
    """Probabilities (N, T) for every sample of ``split``, in order."""
    was_training = model.training
    model.eval()
    outputs = [torch.sigmoid(model(batch)) for batch in split.batches(batch_size)]
    model.train(was_training)
    if not outputs:
        return np.zeros((0, split.num_tasks), dtype=np.float32)
    return torch.cat(outputs).numpy()


def evaluate(
    model: nn.Module, split: EncodedSplit, task_names: tuple[str, ...], batch_size: int = 8192
) -> dict[str, dict[str, float]]:
    """AUC, log loss, positive rate and mean prediction per task on ``split``."""
    probabilities = predict(model, split, batch_size)
    return task_metrics(split.labels.numpy(), probabilities, task_names)


def mean_logloss(metrics: dict[str, dict[str, float]]) -> float:
    """Mean log loss over the tasks of :func:`evaluate`'s result."""
    return float(np.mean([m["logloss"] for m in metrics.values()]))


def fit_unless_worse(model: DLRM, config: TrainConfig, task_names: tuple[str, ...], train: EncodedSplit,
                     valid: EncodedSplit) -> tuple[DLRM, dict[str, Any]]:
    """Fine-tune ``model`` on ``train``; keep the result only if the mean validation log loss did not rise.

    Returns the model to use (the trained one, or an untouched copy of the input) and a summary:
    steps, whether the fine-tune was kept, validation metrics before and after training (``valid_after``
    is the trained weights' even when they were not kept). On a converged model a
    fresh optimizer state can cost more than the change being fine-tuned for, so every fine-tune of a
    compression stage goes through this guard.
    """
    untouched = copy.deepcopy(model)
    before = evaluate(model, valid, task_names)
    result = Trainer(model, config, task_names).fit(train, valid)
    after = evaluate(model, valid, task_names)
    kept = mean_logloss(after) <= mean_logloss(before)
    chosen = model if kept else untouched
    chosen.eval()
    return chosen, {"steps": result.steps, "kept": kept, "seconds": result.seconds, "valid_before": before,
                    "valid_after": after}


def batch_loss(
    model: DLRM, batch: Batch, task_weights: torch.Tensor, embedding_l2: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """Task-weighted binary cross-entropy of a batch (+ L2 on its looked-up vectors), or the model's own
    training loss when it has one (a wrapped user model given ``loss=``)."""
    vectors = model.field_vectors(batch)  # (B, F, D)
    own = getattr(model, "training_loss", None)
    custom = own(vectors, batch) if own is not None else None
    if custom is not None:
        if embedding_l2 > 0:
            custom = custom + embedding_l2 * vectors.pow(2).sum(dim=(1, 2)).mean()
        return custom
    logits = model.logits_from_fields(vectors)  # (B, T)
    return loss_from_outputs(vectors, logits, batch, task_weights, embedding_l2, reduction)


def loss_from_outputs(vectors: torch.Tensor, logits: torch.Tensor, batch: Batch, task_weights: torch.Tensor,
                      embedding_l2: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """:func:`batch_loss` from the field vectors (B, F, D) and logits (B, T) already computed."""
    per_task = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")  # (B, T)
    loss = (per_task * task_weights).sum(1)
    loss = loss.mean() if reduction == "mean" else loss.sum()
    if embedding_l2 > 0:
        loss = loss + embedding_l2 * vectors.pow(2).sum(dim=(1, 2)).mean()
    return loss


class Trainer:
    """Trains a DLRM-style model (anything with ``field_vectors``, ``logits_from_fields`` and
    ``embedding.sparse_parameters()``) on an :class:`EncodedSplit`."""

    def __init__(
        self,
        model: DLRM,
        config: TrainConfig,
        task_names: tuple[str, ...],
        out_dir: str | Path | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.task_names = task_names
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_step = on_step
        weights = config.task_weights or (1.0,) * len(task_names)
        if len(weights) != len(task_names):
            raise ConfigError(
                f"{len(weights)} task weights given for {len(task_names)} tasks {list(task_names)}; give one per task"
            )
        self.task_weights = torch.tensor(weights, dtype=torch.float32)
        table_lr = config.embedding_lr if config.embedding_lr is not None else config.lr
        own_optimizer = model.embedding.make_sparse_optimizer(config.optimizer.value, table_lr)
        self.optimizer = SplitOptimizer(
            model,
            list(model.embedding.sparse_parameters()),
            config.optimizer,
            config.lr,
            config.embedding_lr,
            config.weight_decay,
            sparse_optimizer=own_optimizer,
        )
        # under torchrun: DDP for the dense network, gathered sparse rows for the tables (train/parallel.py)
        self.parallel: DataParallel | None = DataParallel(model) if distributed.is_distributed() else None
        self._interrupt_requested = False

    def request_interrupt(self) -> None:
        """Stop after the current step, save state and raise :class:`TrainingInterrupted`."""
        self._interrupt_requested = True

    # ----------------------------------------------------------------- state
    @property
    def state_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoints" / "best.pt"

    def _save_state(self, progress: dict[str, Any], best_state: dict[str, Any] | None) -> None:
        if self.state_path is None or not distributed.is_main():  # ranks hold the same weights: rank 0 writes
            return
        payload = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "train_config": self.config.to_dict(),
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "rng_state": torch.get_rng_state(),
            "threads": torch.get_num_threads(),  # float sums depend on it: a resume must use the same count
            "progress": progress,
        }
        atomic_save(self.state_path, lambda tmp: torch.save(payload, tmp))
        if best_state is not None and self.best_path is not None:
            atomic_save(self.best_path, lambda tmp: torch.save(best_state, tmp))

    def _load_state(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        from sharkrec.train.checkpoint import load_torch_file, read_payload

        assert self.state_path is not None and self.best_path is not None
        if not self.state_path.is_file():
            raise CheckpointError(
                f"nothing to resume: {str(self.state_path)!r} does not exist; run without --resume to start"
            )
        payload = read_payload(self.state_path, STATE_FORMAT, STATE_VERSION)
        saved = payload["train_config"]
        current = self.config.to_dict()
        changed = sorted(
            k for k in current if k not in ("epochs", "max_steps", "progress") and saved.get(k) != current[k]
        )
        if changed:
            raise CheckpointError(
                f"cannot resume: settings {changed} differ from the interrupted run; "
                "use the same settings or a new --out"
            )
        threads = payload.get("threads")
        if threads is not None and threads != torch.get_num_threads():
            raise CheckpointError(
                f"cannot resume: the interrupted run used {threads} thread(s), this one {torch.get_num_threads()} "
                f"(the thread count changes floating-point sums, so the result would differ); resume with "
                f"--threads {threads}"
            )
        fix = "train again without --resume into a new --out (the interrupted state cannot be trusted)"
        best = load_torch_file(self.best_path, "checkpoint", fix) if self.best_path.is_file() else None
        if best is not None and not isinstance(best, dict):
            raise CheckpointError(f"checkpoint {str(self.best_path)!r} is not a state of this model; {fix}")
        try:
            self.model.load_state_dict(payload["model_state"])
            self.optimizer.load_state_dict(payload["optimizer_state"])
        except (KeyError, RuntimeError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"checkpoint {str(self.state_path)!r} does not fit this model ({reason}); {fix}"
                                  ) from None
        torch.set_rng_state(payload["rng_state"])
        return payload["progress"], best

    # ------------------------------------------------------------------- fit
    def fit(self, train: EncodedSplit, valid: EncodedSplit, resume: bool = False) -> TrainResult:
        """Train, validating every ``eval_every`` steps; returns with the best weights loaded."""
        config = self.config
        if len(train) == 0:
            raise ConfigError("the training split is empty; give more data or change the split")
        train = distributed.shard_for_training(train)  # under torchrun: this rank's equal-length shard
        steps_per_epoch = train.num_batches(config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        eval_every = config.eval_every or max(1, steps_per_epoch // config.evals_per_epoch)

        progress: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "batch": 0,
            "history": [],
            "best_value": None,
            "best_step": 0,
            "bad_evals": 0,
            "samples": 0,
            "seconds": 0.0,
            "data_seconds": 0.0,
            "stopped_early": False,
            "world_size": distributed.world_size(),
        }
        best_state: dict[str, Any] | None = None
        if resume:
            progress, best_state = self._load_state()
            if progress.get("world_size", 1) != distributed.world_size():  # shards and steps depend on it
                raise CheckpointError(
                    f"cannot resume: the run used {progress.get('world_size', 1)} process(es), this one "
                    f"{distributed.world_size()}; resume with torchrun --nproc_per_node={progress.get('world_size', 1)}"
                )
        else:
            torch.manual_seed(config.seed)

        result = TrainResult()
        bar = tqdm(
            total=total_steps,
            initial=progress["step"],
            disable=not (config.progress and distributed.is_main()),
            desc="train",
            unit="step",
            dynamic_ncols=True,
            leave=False,
            mininterval=0.5 if sys.stderr.isatty() else 15.0,
        )
        self.model.train()
        started = time.perf_counter() - progress["seconds"]
        data_seconds = progress["data_seconds"]
        done = progress["stopped_early"] or progress["step"] >= total_steps
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, lambda *_: self.request_interrupt())
        try:
            while not done and progress["epoch"] < config.epochs:
                batches = train.batches(
                    config.batch_size, shuffle=True, seed=config.seed, epoch=progress["epoch"], start=progress["batch"]
                )
                while True:
                    tick = time.perf_counter()
                    batch = next(batches, None)
                    data_seconds += time.perf_counter() - tick
                    if batch is None:
                        break
                    loss = self._step(batch)
                    progress["step"] += 1
                    progress["batch"] += 1
                    progress["samples"] += len(batch)
                    bar.update(1)
                    if progress["step"] % 20 == 0:
                        elapsed = time.perf_counter() - started
                        bar.set_postfix(
                            loss=f"{loss:.4f}", samples_s=f"{progress['samples'] / max(elapsed, 1e-9):,.0f}"
                        )
                    if self.on_step is not None:
                        self.on_step(progress["step"], loss)
                    if self._interrupt_requested:
                        raise KeyboardInterrupt
                    at_end = progress["step"] >= total_steps
                    if progress["step"] % eval_every == 0 or at_end:
                        progress["seconds"] = time.perf_counter() - started
                        progress["data_seconds"] = data_seconds
                        best_state, stop = self._validate(valid, progress, best_state)
                        self._save_state(progress, best_state if progress["best_step"] == progress["step"] else None)
                        if stop or at_end:
                            progress["stopped_early"] = stop
                            done = True
                            break
                if not done:
                    progress["epoch"] += 1
                    progress["batch"] = 0
        except KeyboardInterrupt:
            progress["seconds"] = time.perf_counter() - started
            progress["data_seconds"] = data_seconds
            self._save_state(progress, None)
            bar.close()
            where = f"; resume with --resume (state in {self.state_path})" if self.state_path else ""
            raise TrainingInterrupted(f"training interrupted at step {progress['step']}{where}") from None
        finally:
            self._interrupt_requested = False
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        progress["seconds"] = time.perf_counter() - started
        progress["data_seconds"] = data_seconds
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        result.history = progress["history"]
        result.best_step = progress["best_step"]
        best_entries = [h for h in result.history if h["step"] == result.best_step]
        result.best_metrics = best_entries[-1]["valid"] if best_entries else {}
        result.steps = progress["step"]
        result.samples = progress["samples"]
        result.seconds = progress["seconds"]
        result.data_seconds = progress["data_seconds"]
        result.stopped_early = progress["stopped_early"]
        return result

    def _step(self, batch: Batch) -> float:
        self.optimizer.zero_grad()
        self.model.embedding.observe_batch(batch.sparse, batch.labels)
        if self.parallel is None:
            loss = batch_loss(self.model, batch, self.task_weights, self.config.embedding_l2)
            loss.backward()
        else:
            vectors, logits = self.parallel.forward(batch)
            loss = loss_from_outputs(vectors, logits, batch, self.task_weights, self.config.embedding_l2)
            loss.backward()
            self.parallel.sync_tables()
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(f"training loss became {value}; lower the learning rate (now {self.config.lr})")
        return value

    def _validate(
        self, valid: EncodedSplit, progress: dict[str, Any], best_state: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, bool]:
        metrics = evaluate(self.model, valid, self.task_names, self.config.eval_batch_size)
        self.model.train()
        value = self.score(metrics)
        progress["history"].append(
            {"step": progress["step"], "epoch": progress["epoch"], "valid": metrics, "seconds": progress["seconds"]}
        )
        better = progress["best_value"] is None or (
            value > progress["best_value"]
            if self.config.stop_metric is StopMetric.AUC
            else value < progress["best_value"]
        )
        if better:
            progress["best_value"] = value
            progress["best_step"] = progress["step"]
            progress["bad_evals"] = 0
            best_state = copy.deepcopy(self.model.state_dict())
        else:
            progress["bad_evals"] += 1
        stop = self.config.patience > 0 and progress["bad_evals"] >= self.config.patience
        return best_state, stop

    def score(self, metrics: dict[str, dict[str, float]]) -> float:
        """The task-weighted stop metric of :func:`evaluate`'s ``metrics`` (non-finite: the worst value)."""
        weights = self.task_weights.tolist()
        key = self.config.stop_metric.value
        values = [metrics[name][key] for name in self.task_names]
        if any(not math.isfinite(v) for v in values):
            return -math.inf if self.config.stop_metric is StopMetric.AUC else math.inf
        return float(sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights))


def with_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with ``changes`` applied (validated)."""
    return replace(config, **changes)
