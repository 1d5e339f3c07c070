"""Algorithm 1: stopping at the memory target and at T_accuracy, plans, history, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from sharkrec.errors import ConfigError
from sharkrec.prune import PruneConfig, PrunedEmbedding, PruningPlan, apply_plan, prune
from sharkrec.train.trainer import TrainConfig
from tests.toy import toy_data

QUICK = TrainConfig(optimizer="adagrad", lr=0.01, epochs=1, patience=0, max_steps=5, batch_size=128, progress=False)
# toy tables, D = 8: a 50 rows, b 20, tags 10 -> 80 rows; removing b keeps 61 rows (b's constant is one row)


@pytest.mark.parametrize(("target", "removed"), [(0.7, ("b",)), (0.6, ("b", "tags")), (0.99, ())])
def test_fixed_order_stops_before_exceeding_the_memory_target(toy_trained, target, removed):
    model, data = toy_trained
    result = prune(model, data, order=["b", "tags", "a"], target_memory=target, t_accuracy=0.5, fine_tune=QUICK)
    assert result.plan.removed == removed
    assert result.plan.method == "order"
    assert result.stopped_because.startswith("target memory")
    assert result.history[-1]["removed_share"] <= 1 - target
    base = result.history[0]["embedding_bytes"]
    assert result.model.embedding.embedding_bytes() / base >= target
    assert [h["step"] for h in result.history] == list(range(len(removed) + 1))


def test_scored_loop_removes_noise_fields_first_and_keeps_auc(toy_trained):
    model, data = toy_trained
    result = prune(model, data, "default", target_memory=0.5, fine_tune=QUICK)
    assert result.plan.method == "taylor2"
    assert "a" in result.plan.kept and set(result.plan.removed) == {"b", "tags"}
    assert set(result.plan.scores[0]) == {"a", "b", "tags"}  # dense is never a candidate
    assert result.plan.scores[0]["a"] > max(result.plan.scores[0]["b"], result.plan.scores[0]["tags"])
    base_auc = result.history[0]["metrics"]["test"]["y0"]["auc"]
    assert result.history[-1]["metrics"]["test"]["y0"]["auc"] >= 0.9925 * base_auc
    assert isinstance(result.model.embedding, PrunedEmbedding)
    # the caller's model is not changed
    assert model.embedding.num_fields == 3 and not isinstance(model.embedding, PrunedEmbedding)


def test_a_step_below_t_accuracy_is_undone(toy_trained):
    model, data = toy_trained
    result = prune(model, data, order=["a", "b"], target_memory=0.05, t_accuracy=1.0, fine_tune_fraction=0.0)
    assert result.stopped_because.startswith("T_accuracy")
    assert result.plan.removed == ()
    assert result.history[-1]["accepted"] is False and result.history[-1]["removed"] == ["a"]
    batch = data.test.slice(0, 100)
    assert torch.equal(result.model.predict_proba(batch), model.predict_proba(batch))


def test_random_order_and_fields_per_step(toy_trained):
    model, data = toy_trained
    result = prune(model, data, "random", target_memory=0.01, t_accuracy=0.01, fields_per_step=2,
                   fine_tune_fraction=0.0, seed=3)
    assert result.plan.method == "random"
    # 2 fields, then the last one; all three constants are 3 of 80 rows, within the 1% target
    assert [len(h["removed"]) for h in result.history] == [0, 2, 1]
    assert result.stopped_because == "no fields left to remove"
    assert result.model.embedding.kept.num_fields == 0


def test_plan_json_round_trip_and_apply(toy_trained):
    model, data = toy_trained
    result = prune(model, data, "taylor", target_memory=0.6, t_accuracy=0.5, fine_tune_fraction=0.0)
    text = json.dumps(result.plan.to_dict())
    plan = PruningPlan.from_dict(json.loads(text))
    assert plan == result.plan
    rebuilt = apply_plan(model, plan, data.valid)
    batch = data.test.slice(0, 100)
    assert torch.equal(rebuilt.predict_proba(batch), result.model.predict_proba(batch))  # no fine-tune: same
    with pytest.raises(ConfigError, match="not a pruning plan"):
        PruningPlan.from_dict({"kept": []})


def test_history_entries_have_the_report_fields(toy_trained):
    model, data = toy_trained
    result = prune(model, data, order=["b"], target_memory=0.5, t_accuracy=0.5, fine_tune=QUICK)
    entry = result.history[1]
    for key in ("step", "removed", "kept", "embedding_bytes", "removed_share", "metrics", "seconds", "accepted"):
        assert key in entry
    assert set(entry["metrics"]) == {"test", "valid"}
    assert {"auc", "logloss"} <= set(entry["metrics"]["test"]["y0"])
    assert entry["kept"] == ["dense", "a", "tags"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"target_memory": 0.0}, "target memory 0.0 must be in \\(0, 1\\)"),
    ({"target_memory": 1.0}, "target memory"),
    ({"target_memory": float("nan")}, "target memory"),
    ({"t_accuracy": 0.0}, "T_accuracy 0.0 must be in \\(0, 1\\]"),
    ({"t_accuracy": 1.01}, "T_accuracy"),
    ({"fields_per_step": 0}, "fields per step"),
    ({"keep": ("nope",)}, "'nope' is not in the model"),
])
def test_bad_settings_are_one_line_errors(toy_trained, settings, message):
    model, data = toy_trained
    with pytest.raises(ConfigError, match=message) as info:
        prune(model, data, **settings)
    assert "\n" not in str(info.value)


def test_bad_order_method_and_mismatched_data(toy_trained):
    model, data = toy_trained
    with pytest.raises(ConfigError, match="'C9' is not in the model"):
        prune(model, data, order=["b", "C9"], target_memory=0.5)
    with pytest.raises(ConfigError, match="'dense' is the bottom MLP"):
        prune(model, data, order=["dense"], target_memory=0.5)
    with pytest.raises(ConfigError, match="unknown importance method"):
        prune(model, data, "bogus", target_memory=0.5)
    with pytest.raises(ConfigError, match="does not match the model's schema"):
        prune(model, toy_data(rows=500, multi_hot=False), target_memory=0.5)
    assert PruneConfig().target_memory == 0.5
