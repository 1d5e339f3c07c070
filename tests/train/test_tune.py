"""The built-in search: which runs tune, the best validation trial is the model, an interrupted search resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sharkrec.errors import CheckpointError, ConfigError
from sharkrec.train.optim import OptimizerKind
from sharkrec.train.run import train_model
from sharkrec.train.trainer import TrainConfig, TrainingInterrupted, evaluate
from sharkrec.train.tune import AUTO_MAX_TRAIN_ROWS, L2_GRID, LR_GRID, should_tune, tune_grid
from tests.toy import toy_data

GRID = [{"lr": 0.003, "embedding_l2": 0.0}, {"lr": 0.05, "embedding_l2": 0.001}, {"lr": 0.05, "embedding_l2": 0.3}]
CONFIG = TrainConfig(batch_size=64, epochs=2, eval_every=10, patience=2, progress=False, seed=1)


def test_auto_tunes_small_data_unless_a_tuned_setting_is_given() -> None:
    assert should_tune("auto", 50_000)
    assert not should_tune("auto", AUTO_MAX_TRAIN_ROWS + 1)
    assert not should_tune("auto", 50_000, given=("lr", "epochs"))
    assert should_tune("auto", 50_000, given=("epochs", "patience"))
    assert should_tune("on", 10**9, given=("lr",)) and not should_tune("off", 10)
    with pytest.raises(ConfigError, match="unknown tune mode 'maybe'"):
        should_tune("maybe", 10)


def test_grid_follows_the_optimizer() -> None:
    grid = tune_grid(TrainConfig())
    assert len(grid) == len(LR_GRID[TrainConfig().optimizer]) * len(L2_GRID) == 9
    assert {g["lr"] for g in tune_grid(TrainConfig(optimizer="adam"))} == set(LR_GRID[OptimizerKind.ADAM])


def test_the_best_validation_trial_is_the_model(monkeypatch) -> None:
    monkeypatch.setattr("sharkrec.train.tune.tune_grid", lambda config: GRID)
    data = toy_data(rows=2000)
    model, report = train_model(data, CONFIG, tune=True)
    trials = report["tuning"]["trials"]
    assert [t["settings"] for t in trials] == GRID
    values = [t["value"] for t in trials]
    assert len(set(values)) == 3  # the settings matter on this data
    chosen = int(np.argmin(values))
    assert report["tuning"]["chosen"] == chosen
    assert report["config"]["train"]["lr"] == GRID[chosen]["lr"]
    # the returned model is that trial's best checkpoint, not a retrain: its validation log loss is the trial's
    valid = evaluate(model, data.valid, data.schema.label_names)
    assert valid["y0"]["logloss"] == pytest.approx(values[chosen], abs=1e-6)
    assert report["metrics"]["valid"]["y0"]["logloss"] == pytest.approx(values[chosen], abs=1e-6)


def test_an_interrupted_search_resumes_to_the_same_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("sharkrec.train.tune.tune_grid", lambda config: GRID)
    data = toy_data(rows=2000)
    reference, _ = train_model(data, CONFIG, tmp_path / "full", tune=True)

    finished = {"trials": 0, "cut": False}

    def count(record) -> None:
        finished["trials"] += 1

    import sharkrec.train.trainer as trainer_module

    original_step = trainer_module.Trainer._step

    def step(self, batch):  # Ctrl-C in the middle of the third trial, after two finished ones
        if finished["trials"] == 2 and not finished["cut"]:
            finished["cut"] = True
            raise KeyboardInterrupt
        return original_step(self, batch)

    monkeypatch.setattr(trainer_module.Trainer, "_step", step)
    with pytest.raises(TrainingInterrupted):
        train_model(data, CONFIG, tmp_path / "cut", tune=True, on_trial=count)
    saved = json.loads((tmp_path / "cut" / "tune" / "trials.json").read_text())
    assert len(saved["trials"]) == 2
    monkeypatch.setattr(trainer_module.Trainer, "_step", original_step)
    resumed, report = train_model(data, CONFIG, tmp_path / "cut", tune=True, resume=True)
    assert len(report["tuning"]["trials"]) == 3
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_resume_needs_progress_and_the_same_grid(tmp_path, monkeypatch) -> None:
    data = toy_data(rows=600)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_model(data, CONFIG, tmp_path / "none", tune=True, resume=True)
    monkeypatch.setattr("sharkrec.train.tune.tune_grid", lambda config: GRID[:1])
    train_model(data, CONFIG, tmp_path / "one", tune=True)
    monkeypatch.setattr("sharkrec.train.tune.tune_grid", lambda config: GRID)
    with pytest.raises(CheckpointError, match=r"grid .* differs"):
        train_model(data, CONFIG, tmp_path / "one", tune=True, resume=True)


def test_tuning_needs_a_validation_split() -> None:
    data = toy_data(rows=600)
    empty = type(data)(data.schema, data.vocabularies, data.train, data.valid.subset(np.arange(0)), data.test,
                       data.report)
    with pytest.raises(ConfigError, match="validation split, which is empty"):
        train_model(empty, CONFIG, tune=True)
