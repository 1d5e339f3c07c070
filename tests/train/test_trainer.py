import numpy as np
import pytest
import torch

from sharkrec.errors import CheckpointError, ConfigError
from sharkrec.train.checkpoint import load_model, save_model
from sharkrec.train.run import build_model, train_model
from sharkrec.train.trainer import TrainConfig, Trainer, TrainingInterrupted, evaluate, predict
from tests.toy import toy_data

FAST = {"batch_size": 64, "epochs": 3, "lr": 0.01, "progress": False}


@pytest.mark.parametrize(
    ("optimizer", "lr", "min_auc"), [("adam", 0.02, 0.8), ("adagrad", 0.02, 0.8), ("sgd", 0.5, 0.6)]
)
def test_each_optimizer_learns_the_informative_field(optimizer, lr, min_auc):
    data = toy_data(rows=4000)
    _, report = train_model(data, TrainConfig(optimizer=optimizer, **{**FAST, "lr": lr}))
    # the label depends on field "a" and dense x0 (teacher AUC about 0.9); plain SGD learns slowest
    assert report["metrics"]["test"]["y0"]["auc"] > min_auc
    assert report["training"]["steps"] > 0


def test_multitask_reports_every_task():
    data = toy_data(rows=3000, tasks=2)
    _, report = train_model(data, TrainConfig(**FAST), model_options={"head": "mmoe"})
    assert set(report["metrics"]["test"]) == {"y0", "y1"}
    assert report["metrics"]["test"]["y1"]["auc"] > 0.7  # y1 depends on field b's parity


def test_task_weights_must_match_tasks():
    data = toy_data(rows=500, tasks=2)
    model = build_model(data)
    with pytest.raises(ConfigError, match="task weights"):
        Trainer(model, TrainConfig(task_weights=(1.0,), progress=False), data.schema.label_names)


def test_resume_equals_uninterrupted_run(tmp_path):
    data = toy_data(rows=2000)
    config = TrainConfig(batch_size=64, epochs=2, eval_every=7, patience=0, progress=False, seed=3)

    reference = build_model(data, seed=3)
    Trainer(reference, config, data.schema.label_names, tmp_path / "full").fit(data.train, data.valid)

    def interrupt_at(step_to_stop):
        def hook(step, loss):
            if step == step_to_stop:
                raise KeyboardInterrupt

        return hook

    model = build_model(data, seed=3)
    trainer = Trainer(model, config, data.schema.label_names, tmp_path / "cut", on_step=interrupt_at(31))
    with pytest.raises(TrainingInterrupted, match="step 31"):
        trainer.fit(data.train, data.valid)
    resumed_model = build_model(data, seed=99)  # different init: everything must come from the checkpoint
    result = Trainer(resumed_model, config, data.schema.label_names, tmp_path / "cut").fit(
        data.train, data.valid, resume=True
    )
    assert result.steps == 2 * data.train.num_batches(64)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_resume_refuses_changed_settings_and_missing_state(tmp_path):
    data = toy_data(rows=600)
    config = TrainConfig(batch_size=64, epochs=1, progress=False)
    Trainer(build_model(data), config, data.schema.label_names, tmp_path).fit(data.train, data.valid)
    changed = TrainConfig(batch_size=32, epochs=1, progress=False)
    with pytest.raises(CheckpointError, match="batch_size"):
        Trainer(build_model(data), changed, data.schema.label_names, tmp_path).fit(data.train, data.valid, resume=True)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(build_model(data), config, data.schema.label_names, tmp_path / "new").fit(
            data.train, data.valid, resume=True
        )


def test_early_stopping_keeps_best_checkpoint(tmp_path):
    data = toy_data(rows=2000)
    config = TrainConfig(
        batch_size=32, epochs=30, eval_every=10, patience=2, lr=0.05, progress=False, stop_metric="logloss"
    )
    model = build_model(data)
    result = Trainer(model, config, data.schema.label_names, tmp_path).fit(data.train, data.valid)
    assert result.stopped_early
    losses = [h["valid"]["y0"]["logloss"] for h in result.history]
    best = int(np.argmin(losses))
    assert result.best_step == result.history[best]["step"]
    assert len(losses) - 1 - best == 2  # stopped after exactly `patience` worse validations
    # the model holds the best weights: its validation loss is the best one seen
    assert evaluate(model, data.valid, ("y0",))["y0"]["logloss"] == pytest.approx(losses[best], rel=1e-6)


def test_checkpoint_round_trip_reproduces_predictions_exactly(tmp_path):
    data = toy_data(rows=1500)
    model, _ = train_model(data, TrainConfig(batch_size=64, epochs=1, progress=False), tmp_path)
    bundle = load_model(tmp_path / "model.pt")
    assert np.array_equal(predict(model, data.test), predict(bundle.model, data.test))
    assert bundle.schema == data.schema
    assert np.array_equal(bundle.vocabularies["a"].counts_, data.vocabularies["a"].counts_)


def test_saved_model_file_corruption_is_a_one_line_error(tmp_path):
    data = toy_data(rows=500)
    model = build_model(data)
    path = tmp_path / "model.pt"
    save_model(path, model, data.schema, data.vocabularies)
    raw = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_model(tmp_path / "truncated.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    torch.save({"format": "sharkrec-model", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_model(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a sharkrec-model"):
        load_model(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": 0},
        {"batch_size": 0},
        {"epochs": 0},
        {"optimizer": "lion"},
        {"stop_metric": "accuracy"},
        {"task_weights": (-1.0,)},
        {"patience": -1},
    ],
)
def test_train_config_validation(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_loss_diverging_to_nan_is_reported():
    data = toy_data(rows=400)
    model = build_model(data)
    with torch.no_grad():
        model.embedding.sparse_parameters()[0].fill_(float("nan"))
    with pytest.raises(ConfigError, match="lower the learning rate"):
        Trainer(model, TrainConfig(batch_size=64, epochs=1, progress=False), ("y0",)).fit(data.train, data.valid)
