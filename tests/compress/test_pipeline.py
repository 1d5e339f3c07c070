"""compress(): the budget is met by the bytes held, the search trains few candidates, errors are one line."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from sharkrec.compress import DEFAULT_FINE_TUNE, CompressConfig, compress, enumerate_candidates, run_compress
from sharkrec.compress.run import fine_tune_for
from sharkrec.compress.search import build_candidate, lowest_tier_share, relative_auc_drop
from sharkrec.errors import CheckpointError, ConfigError
from sharkrec.export import load_artifact
from sharkrec.prune.embedding import PrunedEmbedding
from sharkrec.prune.plan import field_means
from sharkrec.quant import MixedPrecisionEmbedding, build_embedding
from sharkrec.train.checkpoint import ModelBundle
from tests.compress.conftest import assert_saved_and_served_agree
from tests.export.conftest import serving_batch

FAST = dataclasses.replace(DEFAULT_FINE_TUNE, epochs=1, batch_size=256)


def _order(model):
    return list(model.embedding.field_names)


@pytest.mark.parametrize("target", [0.25, 0.3, 0.5, 0.8])
def test_every_candidate_meets_the_budget_in_bytes_held(trained, target):
    model, data = trained
    base = model.embedding.embedding_bytes()
    order = _order(model)
    candidates = enumerate_candidates(model, order, {}, target)
    assert candidates
    means = field_means(model, data.valid, order)
    for candidate in candidates:
        built = build_candidate(model, data, candidate, means, {"batch_size": 256})
        held = built.embedding.embedding_bytes()
        assert held <= target * base, candidate.label
        assert held >= 0.9 * target * base or candidate.quant_budget is None, candidate.label  # budget is used
        assert set(candidate.removed) == set(getattr(built.embedding, "removed", ()))
        if candidate.quant_budget is not None:
            inner = built.embedding.kept if candidate.removed else built.embedding
            assert isinstance(inner, MixedPrecisionEmbedding)
            assert inner.memory_report().held_bytes == sum(  # the accounting is the tensors held
                t.numel() * t.element_size() for t in inner.buffers())


def test_candidates_cover_the_splits_and_stop_once_pruning_alone_suffices(trained):
    model, _data = trained
    rows = model.embedding.num_rows()
    order = sorted(rows, key=rows.get)  # smallest table first
    candidates = enumerate_candidates(model, order, {name: 1.0 for name in order}, 0.9, fp32_shares=(0.5,))
    removed_counts = [len(c.removed) for c in candidates]
    assert removed_counts == sorted(removed_counts) and removed_counts[0] == 0
    last = candidates[-1]
    assert last.quant_budget is None or len(last.removed) == len(order)
    assert all(c.quant_budget is not None for c in candidates[:-1])
    assert all(c.importance_removed == len(c.removed) for c in candidates)
    # at dim 8 an int8 row costs 17 B (payload, scale, row map) of 32, an int4 row 13 B: without
    # pruning only int4 candidates reach 0.45, and nothing reaches 0.4
    assert lowest_tier_share(8, False) == 17 / 32 and lowest_tier_share(8, True) == 13 / 32
    low = enumerate_candidates(model, [], {}, 0.45, allow_int4=True)
    assert low and all(c.use_int4 for c in low)
    assert enumerate_candidates(model, [], {}, 0.45, allow_int4=False) == []
    assert enumerate_candidates(model, [], {}, 0.4) == []


def test_untransformed_candidate_predicts_like_the_model(trained):
    model, data = trained
    (candidate,) = [c for c in enumerate_candidates(model, [], {}, 1.0)]
    assert candidate.quant_budget is None and candidate.removed == ()
    built = build_candidate(model, data, candidate, {}, {})
    batch = next(iter(data.test.batches(512)))
    torch.testing.assert_close(built.predict_proba(batch), model.predict_proba(batch))
    assert built.embedding is not model.embedding


def test_compress_meets_the_target_and_leaves_the_model_alone(trained):
    model, data = trained
    before = copy.deepcopy(model.state_dict())
    config = CompressConfig(target_memory=0.3, max_auc_drop=0.01, max_trainings=2, fine_tune=FAST)
    result = compress(model, data, config)
    report = result.report
    base = model.embedding.embedding_bytes()
    assert result.model.embedding.embedding_bytes() <= 0.3 * base
    assert report["bytes"]["fp32"] == base and report["bytes"]["share_of_fp32"] <= 0.3
    assert report["bytes"]["after_quantization"] == result.model.embedding.embedding_bytes()
    assert 1 <= report["search"]["trainings"] <= 2 <= report["search"]["grid_size"]
    trained_drops = [t["valid_auc_drop"] for t in report["search"]["trained"]]
    assert report["met_max_auc_drop"] == (min(trained_drops) <= 0.01)
    if report["met_max_auc_drop"]:  # the search stops at the first candidate that meets the bound
        assert trained_drops[-1] <= 0.01 and all(d > 0.01 for d in trained_drops[:-1])
    # the reported metrics are the returned model's
    drop = relative_auc_drop(report["metrics_before"]["valid"], report["metrics"]["valid"])
    assert math.isclose(drop, min(trained_drops), abs_tol=1e-9)
    predicted = [p["predicted_auc_drop"] for p in report["search"]["predictions"]]
    assert predicted == sorted(predicted)  # trained in predicted order
    assert set(report["seconds"]) >= {"importance", "search", "train", "total"}
    for name, value in before.items():
        assert torch.equal(value, model.state_dict()[name])


def test_a_strict_bound_trains_up_to_the_limit_and_keeps_the_best(trained):
    model, data = trained
    config = CompressConfig(target_memory=0.3, max_auc_drop=0.0, max_trainings=2, fine_tune=FAST)
    result = compress(model, data, config)
    trained_runs = result.report["search"]["trained"]
    drops = [t["valid_auc_drop"] for t in trained_runs]
    if not result.met_max_auc_drop:
        assert len(trained_runs) == 2
    assert math.isclose(relative_auc_drop(result.report["metrics_before"]["valid"],
                                          result.report["metrics"]["valid"]), min(drops), abs_tol=1e-9)


def test_run_compress_writes_a_model_artifact_and_report_that_agree(trained, tmp_path):
    model, data = trained
    bundle = ModelBundle(model=model, schema=data.schema, vocabularies=data.vocabularies, info={})
    config = CompressConfig(target_memory=0.3, max_auc_drop=0.05, max_trainings=1, fine_tune=FAST)
    result = run_compress(bundle, data, config, tmp_path / "out")
    assert_saved_and_served_agree(result, tmp_path / "out", data)
    assert result.report["artifact"]["memory"]["embedding_bytes"] > 0
    assert (tmp_path / "out" / "report.json").is_file()


@pytest.mark.parametrize(("options", "message"), [
    ({"target_memory": 0.0}, "target memory 0.0 must be in (0, 1]"),
    ({"target_memory": 1.5}, "target memory 1.5 must be in (0, 1]"),
    ({"target_memory": float("nan")}, "target memory nan"),
    ({"max_auc_drop": -0.1}, "max AUC drop -0.1 must be in [0, 1)"),
    ({"max_trainings": 0}, "max trainings 0 must be 1 or more"),
    ({"fp32_shares": (1.5,)}, "fp32 shares"),
    ({"fine_tune": dataclasses.replace(FAST, optimizer="adam")}, "sgd or adagrad"),
])
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(ConfigError) as error:
        CompressConfig(**options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_models_and_budgets_are_one_line_errors(trained):
    model, data = trained
    quantized = model.with_embedding(build_embedding("int8", model.embedding))
    with pytest.raises(ConfigError, match="compress starts from an fp32 model"):
        compress(quantized, data, CompressConfig(fine_tune=FAST))
    pruned = model.with_embedding(PrunedEmbedding.wrap(model.embedding, {"b": torch.zeros(8)}))
    with pytest.raises(ConfigError, match="compress starts from an fp32 model"):
        compress(pruned, data, CompressConfig(fine_tune=FAST))
    with pytest.raises(ConfigError, match=r"fields \['nope'\] are not in the model"):
        compress(model, data, CompressConfig(keep=("nope",), fine_tune=FAST))
    with pytest.raises(ConfigError, match=r"no way to reach 0\.05 of the embedding bytes"):
        compress(model, data, CompressConfig(target_memory=0.05, max_removed=0, fine_tune=FAST))


def test_an_interrupted_run_resumes_to_the_same_result(trained, tmp_path):
    model, data = trained
    bundle = ModelBundle(model=model, schema=data.schema, vocabularies=data.vocabularies, info={})
    config = CompressConfig(target_memory=0.3, max_auc_drop=0.0, max_trainings=2, fine_tune=FAST)

    def interrupt(stage, payload):
        if stage == "training":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_compress(bundle, data, config, tmp_path / "out", on_event=interrupt)
    assert (tmp_path / "out" / "compress_state" / "candidate_0.pt").is_file()
    assert not (tmp_path / "out" / "report.json").exists()
    with pytest.raises(CheckpointError, match="other settings"):
        run_compress(bundle, data, dataclasses.replace(config, max_trainings=3), tmp_path / "out", resume=True)
    resumed = run_compress(bundle, data, config, tmp_path / "out", resume=True)
    straight = run_compress(bundle, data, config, tmp_path / "straight")
    first = resumed.report["search"]["trained"][0]
    assert first["resumed"] and len(resumed.report["search"]["trained"]) == len(straight.report["search"]["trained"])
    assert resumed.report["metrics"] == straight.report["metrics"]
    assert resumed.report["chosen"] == straight.report["chosen"]
    assert not (tmp_path / "out" / "compress_state").exists()  # removed once the results are written
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_compress(bundle, data, config, tmp_path / "fresh", resume=True)


def test_fine_tune_settings_come_from_the_model(trained):
    model, data = trained
    saved = {"optimizer": "adagrad", "lr": 0.05, "embedding_l2": 0.01, "batch_size": 128}
    bundle = ModelBundle(model=model, schema=data.schema, vocabularies=data.vocabularies,
                         info={"train_config": saved})
    config = fine_tune_for(bundle, epochs=3)
    assert config.optimizer.value == "adagrad" and config.lr == pytest.approx(0.0005)
    assert config.embedding_l2 == 0.01 and config.batch_size == 128 and config.epochs == 3 and config.patience == 1
    adam = ModelBundle(model=model, schema=data.schema, vocabularies=data.vocabularies,
                       info={"train_config": {**saved, "optimizer": "adam", "embedding_lr": 0.1}})
    config = fine_tune_for(adam)
    assert config.optimizer.value == "adagrad" and config.lr == 0.005 and config.embedding_lr is None
    assert fine_tune_for(bundle, lr=0.2).lr == 0.2


def test_a_clustering_stage_runs_before_pruning_and_quantization(trained):
    from sharkrec.cluster import ClusteredEmbedding

    model, data = trained
    config = CompressConfig(target_memory=0.45, max_auc_drop=0.01, max_trainings=1, fine_tune=FAST,
                            cluster_rows_ratio=0.5)
    result = compress(model, data, config)
    report = result.report
    base = model.embedding.embedding_bytes()
    held = result.model.embedding.embedding_bytes()  # rows + int32 value → row maps (+ constants)
    assert held <= 0.45 * base and report["bytes"]["after_quantization"] == held
    assert report["bytes"]["after_clustering"] < base and report["cluster"]["rows_compression"] > 1.5
    inner = getattr(result.model.embedding, "kept", result.model.embedding)
    assert isinstance(inner, ClusteredEmbedding)
    if result.candidate.quant_budget is not None:
        assert isinstance(inner.inner, MixedPrecisionEmbedding)  # cluster, then quantize the cluster rows
        assert sum(inner.inner.num_rows().values()) == sum(inner.num_rows().values())
    batch = next(iter(data.test.batches(512)))
    probabilities = result.model.predict_proba(batch)
    assert torch.isfinite(probabilities).all()
    assert "cluster" in report["seconds"]
    with pytest.raises(ConfigError, match=r"cluster rows ratio 1\.5 must be in \(0, 1\]"):
        CompressConfig(cluster_rows_ratio=1.5)


def test_a_clustered_compression_writes_an_artifact_that_serves_the_same_scores(trained, tmp_path):
    model, data = trained
    bundle = ModelBundle(model=model, schema=data.schema, vocabularies=data.vocabularies, info={})
    config = CompressConfig(target_memory=0.45, max_auc_drop=0.05, max_trainings=1, fine_tune=FAST,
                            cluster_rows_ratio=0.5)
    result = run_compress(bundle, data, config, tmp_path / "out")
    served = load_artifact(tmp_path / "out" / "artifact")
    batch = next(iter(data.test.batches(512)))
    got = served.predict_proba(serving_batch(served, batch, data.vocabularies))
    torch.testing.assert_close(got, result.model.predict_proba(batch), atol=2e-3, rtol=0)
    memory = result.report["artifact"]["memory"]
    assert memory["key_slot_bytes"] > 0  # several values share a row: the key -> slot array is counted
