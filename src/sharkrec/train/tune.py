"""A small built-in search on the validation split: what ``sharkrec train`` does when it is given no recipe.

The learning rate and the L2 penalty on looked-up rows decide most of what a DLRM reaches on small
click logs, and no single pair suits every dataset (measured on the shared data: Frappe wants lr 0.1,
the Criteo sample 0.01; README "Training recipes"). So on data small enough that a few trainings cost
little, every pair of :data:`LR_GRID` (for the run's optimizer) x :data:`L2_GRID` is trained with early
stopping, each from the same seed, and the one with the best validation score (the run's stop metric,
log loss by default) is kept — its weights, not a retrain. The test split is never looked at.

Progress is saved under ``OUT/tune/``: ``trials.json`` (every finished trial's settings and validation
metrics), ``best.pt`` (the weights of the best trial so far) and ``trial/`` (the running trial's
resumable checkpoints), so an interrupted search continues with ``--resume``.
"""

from __future__ import annotations

import enum
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from sharkrec import distributed
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import CheckpointError, ConfigError, parse_choice
from sharkrec.io import atomic_save, read_json, write_json
from sharkrec.model.dlrm import DLRM
from sharkrec.train.optim import OptimizerKind
from sharkrec.train.trainer import StopMetric, TrainConfig, Trainer, TrainResult

#: learning rates searched, per optimizer (Adam's useful range sits ~30x lower than Adagrad's)
LR_GRID: dict[OptimizerKind, tuple[float, ...]] = {
    OptimizerKind.ADAGRAD: (0.01, 0.03, 0.1),
    OptimizerKind.SGD: (0.01, 0.03, 0.1),
    OptimizerKind.ADAM: (0.0003, 0.001, 0.003),
}
#: L2 strengths on the looked-up embedding rows
L2_GRID: tuple[float, ...] = (0.001, 0.01, 0.03)
#: ``--tune auto`` searches when the training split has at most this many rows (9 trainings of up to
#: ~1 minute each on 2 cores); larger data trains once with the defaults
AUTO_MAX_TRAIN_ROWS = 300_000
#: settings the search chooses: naming any of them on the command line turns ``auto`` off
TUNED_SETTINGS = ("optimizer", "lr", "embedding_lr", "embedding_l2")
TUNE_DIR = "tune"


class TuneMode(str, enum.Enum):
    """``auto``: search on small data unless the user set a tuned setting; ``on`` / ``off``: always / never."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


def should_tune(mode: TuneMode | str, train_rows: int, given: Sequence[str] = ()) -> bool:
    """Whether to search: ``on``, or ``auto`` with at most :data:`AUTO_MAX_TRAIN_ROWS` rows and none of
    :data:`TUNED_SETTINGS` in ``given`` (the settings the user named)."""
    mode = parse_choice(TuneMode, mode, "tune mode")
    if mode is TuneMode.AUTO:
        return train_rows <= AUTO_MAX_TRAIN_ROWS and not set(given) & set(TUNED_SETTINGS)
    return mode is TuneMode.ON


def tune_grid(config: TrainConfig) -> list[dict[str, Any]]:
    """The (lr, embedding_l2) settings searched for ``config``'s optimizer, in search order."""
    return [{"lr": lr, "embedding_l2": l2} for lr in LR_GRID[config.optimizer] for l2 in L2_GRID]


@dataclass
class TuneResult:
    """The chosen settings, the trained model with them, and every trial's validation metrics."""

    config: TrainConfig
    model: DLRM
    trials: list[dict[str, Any]]
    chosen: int

    @property
    def train_result(self) -> TrainResult:
        """The chosen trial's training (history, steps, throughput)."""
        return TrainResult(**self.trials[self.chosen]["result"])

    def to_dict(self) -> dict[str, Any]:
        """For report.json: the grid, how the winner was picked, and each trial without its history."""
        keys = sorted({key for t in self.trials for key in t["settings"]})
        return {"grid": {key: sorted({t["settings"][key] for t in self.trials}) for key in keys},
                "selected_by": f"validation {self.config.stop_metric.value}", "chosen": self.chosen,
                "chosen_settings": self.trials[self.chosen]["settings"],
                "trials": [_summary(t) for t in self.trials]}


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """A trial for report.json: settings, score, and the training's outcome without its history."""
    result = record["result"]
    return {"trial": record["trial"], "settings": record["settings"], "value": record["value"],
            "valid": result["best_metrics"], "best_step": result["best_step"], "steps": result["steps"],
            "seconds": result["seconds"]}


def tune(data: PreparedData, base: TrainConfig, build: Callable[[TrainConfig], DLRM],
         out_dir: str | Path | None = None, *, resume: bool = False,
         grid: Sequence[dict[str, Any]] | None = None,
         on_trial: Callable[[dict[str, Any]], None] | None = None) -> TuneResult:
    """Train ``build(config)`` for every setting of ``grid`` (default :func:`tune_grid`) and keep the best.

    Args:
        data: the prepared data; trials fit on ``train`` and are compared on ``valid``.
        base: the run's settings; each trial replaces the keys of its grid entry.
        build: a fresh model for a trial's settings (same seed every time, so trials differ only by settings).
        out_dir: the run folder (progress in ``out_dir/tune/``); None keeps everything in memory.
        resume: continue an interrupted search in ``out_dir`` (finished trials are not trained again).
        on_trial: called with each finished trial's record (for progress output).
    """
    grid = list(grid if grid is not None else tune_grid(base))
    if not grid:
        raise ConfigError("the tuning grid is empty; give at least one setting or train without --tune")
    if len(data.valid) == 0:
        raise ConfigError("tuning compares settings on the validation split, which is empty; give a split "
                          "with validation rows (--split) or train with --tune off")
    folder = Path(out_dir) / TUNE_DIR if out_dir is not None else None
    if resume and folder is not None and not ((folder / "trials.json").is_file()
                                              or (folder / "trial" / "checkpoints" / "last.pt").is_file()):
        raise CheckpointError(f"nothing to resume: {str(folder)!r} holds no tuning progress; run without --resume "
                              "to start")
    trials = _finished_trials(folder, grid) if resume and folder is not None else []
    if not resume and folder is not None and folder.exists() and distributed.is_main():
        shutil.rmtree(folder)
    sign = 1.0 if base.stop_metric is StopMetric.LOGLOSS else -1.0  # lower is better for log loss

    def best() -> int:
        return min(range(len(trials)), key=lambda i: sign * trials[i]["value"])

    best_model: DLRM | None = None
    if trials and folder is not None:  # resumed: the best finished trial's weights
        best_model = build(replace(base, **grid[best()]))
        best_model.load_state_dict(_load_best(folder))
    for k in range(len(trials), len(grid)):
        config = replace(base, **grid[k])
        model = build(config)
        trial_dir = folder / "trial" if folder is not None else None
        trainer = Trainer(model, config, data.schema.label_names, trial_dir)
        can_resume = resume and trial_dir is not None and (trial_dir / "checkpoints" / "last.pt").is_file()
        result = trainer.fit(data.train, data.valid, resume=can_resume)
        record = {"trial": k, "settings": dict(grid[k]), "value": trainer.score(result.best_metrics),
                  "result": asdict(result)}
        trials.append(record)
        better = best() == k
        if better:
            best_model = model
        if folder is not None and distributed.is_main():
            if better:
                state = model.state_dict()
                atomic_save(folder / "best.pt", partial(torch.save, state))
            write_json(folder / "trials.json", {"grid": grid, "trials": trials})
            shutil.rmtree(folder / "trial", ignore_errors=True)  # its weights are in best.pt if they won
        distributed.barrier()
        if on_trial is not None:
            on_trial(record)
    assert best_model is not None
    best_model.eval()
    return TuneResult(replace(base, **grid[best()]), best_model, trials, best())


def _finished_trials(folder: Path, grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not (folder / "trials.json").is_file():
        return []
    saved = read_json(folder / "trials.json", "tuning progress", CheckpointError, "delete it to start over")
    if saved.get("grid") != grid:
        raise CheckpointError(f"cannot resume: the tuning grid in {str(folder)!r} differs from this run's; use the "
                              "same settings or a new --out")
    return list(saved.get("trials", []))


def _load_best(folder: Path) -> dict[str, Any]:
    from sharkrec.train.checkpoint import load_torch_file

    state = load_torch_file(folder / "best.pt", "tuning checkpoint", "delete the run folder's tune/ and start over")
    if not isinstance(state, dict):
        raise CheckpointError(f"tuning checkpoint {str(folder / 'best.pt')!r} is not a model state; delete "
                              "the run folder's tune/ and start over")
    return state


def describe_trial(record: dict[str, Any], metric: StopMetric | str = StopMetric.LOGLOSS) -> str:
    """One progress line for a finished trial."""
    metric = parse_choice(StopMetric, metric, "stop metric")
    settings = ", ".join(f"{k} {v:g}" for k, v in record["settings"].items())
    result = record["result"]
    return (f"tune trial {record['trial'] + 1}: {settings} -> validation {metric.value} {record['value']:.4f} "
            f"(best step {result['best_step']}, {result['seconds']:.1f} s)")
