"""Tables sharded by TorchRec DMP across 2 gloo ranks: training, scores, pruning and export equal one process's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torchrec", reason="install the TorchRec extra: make setup-torchrec (CI does)")

from sharkrec.data.loading import load_data
from sharkrec.errors import ConfigError
from sharkrec.train.trainer import TrainConfig
from tests.ranks import run_ranks

SPEC = "rows=4000,seed=2,num_sparse=8"  # 8 tables of 24..1000 rows
TRAIN = {"batch_size": 32, "epochs": 1, "lr": 0.05, "progress": False}


def _data():
    return load_data("synthetic", SPEC)


def _worker(kind: str, batch_size: int, out: str | None) -> dict[str, object]:
    from sharkrec.quant.sharded import export_quantized, quantize_sharded, tiered_model
    from sharkrec.train.sharded import field_scores, predict, prune_sharded, train_sharded

    data = _data()
    sharded, report = train_sharded(data, TrainConfig(**{**TRAIN, "batch_size": batch_size}), out, shard=kind)
    scores = field_scores(sharded, data.valid, batch_size=64)
    weakest = [name for name in sorted(data.schema.sparse_names, key=lambda n: scores.scores[
        scores.field_names.index(n)])][:2]
    pruned = prune_sharded(sharded, weakest, data.valid, batch_size=64)
    out = {"report": report, "test": predict(sharded.model, data.test), "scores": scores.scores,
           "removed": weakest, "pruned_test": predict(pruned.model, data.test), "pruned_memory": pruned.memory(),
           "pruned_plan": pruned.sharding()}
    tiers = quantize_sharded(sharded, data.vocabularies, memory_budget=0.5)  # in place: rows now in their tiers
    exported = export_quantized(sharded, tiers)
    out.update(fq=tiers.report(), fq_test=predict(sharded.model, data.test))
    tiered = tiered_model(sharded, tiers)  # this rank's rows in their tiers only, no fp32 copy
    out.update(tiered_test=predict(tiered, data.test), tiered_bytes=tiered.embedding.embedding_bytes(),
               tiered_scores=field_scores(tiered, data.valid, batch_size=64).scores)
    if exported is not None:
        out.update(fq_codes=exported.embedding.tier_of_rows(), fq_export_test=predict(exported, data.test))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict[str, object]]]:
    base = tmp_path_factory.mktemp("sharded")
    out = {}
    for kind in ("table_wise", "row_wise"):
        out[kind] = run_ranks(_worker, base / kind, kind, 32, str(base / kind / "model"))
        # one process, global batch 2 x 32: the same global batches as the two ranks
        out[f"{kind}-single"] = run_ranks(_worker, base / f"{kind}-1", kind, 64, None, world=1)
    out["dir"] = [{"path": base}]
    return out


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_each_rank_holds_its_shards_only(runs, kind: str) -> None:
    rank0, rank1 = runs[kind]
    memory = rank0["report"]["memory"]
    assert memory == rank1["report"]["memory"]
    per_rank = memory["embedding_bytes_per_rank"]
    assert len(per_rank) == 2 and sum(per_rank) == memory["embedding_bytes_fp32"]  # every row held exactly once
    assert max(per_rank) <= 0.55 * memory["embedding_bytes_fp32"], per_rank
    single = runs[f"{kind}-single"][0]["report"]["memory"]
    assert single["embedding_bytes_per_rank"] == [memory["embedding_bytes_fp32"]]
    types = {(t["type"], t["kernel"]) for t in rank0["report"]["sharding"]["tables"].values()}
    assert types == {(kind, "fused")}  # fbgemm's fused kernel: the optimizer steps the shards in backward


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_sharded_training_equals_one_process(runs, kind: str) -> None:
    rank0, rank1 = runs[kind]
    single = runs[f"{kind}-single"][0]
    assert rank0["report"]["training"]["steps"] == single["report"]["training"]["steps"] > 0
    np.testing.assert_allclose(rank0["test"], rank1["test"], rtol=0, atol=0)  # every rank sees the same outputs
    np.testing.assert_allclose(rank0["test"], single["test"], rtol=0, atol=2e-5)
    from sharkrec.interop.sharding import seeded_rows
    from sharkrec.train.checkpoint import load_model

    trained = load_model(runs["dir"][0]["path"] / kind / "model" / "model.pt").model.embedding.table("C1")
    initial = seeded_rows(0, 0, 0, trained.shape[0], trained.shape[1], 0.01)
    moved = (trained - initial).abs().amax(1) > 1e-4  # rows the optimizer stepped
    assert 0.2 < float(moved.float().mean()) <= 1.0
    auc, one = rank0["report"]["metrics"]["test"]["click"]["auc"], single["report"]["metrics"]["test"]["click"]["auc"]
    assert abs(auc - one) < 1e-4 and auc > 0.6, (auc, one)


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_sharded_scores_equal_one_process_scores_of_the_exported_model(runs, kind: str) -> None:
    from sharkrec.importance import field_importance
    from sharkrec.train.checkpoint import load_model

    rank0, rank1 = runs[kind]
    np.testing.assert_array_equal(rank0["scores"], rank1["scores"])
    bundle = load_model(runs["dir"][0]["path"] / kind / "model" / "model.pt")
    single = field_importance(bundle.model, _data().valid, "taylor2", batch_size=64)
    assert np.abs(rank0["scores"] - single.scores).max() < 1e-4, (rank0["scores"], single.scores)
    assert np.abs(single.scores).max() > 1e-3  # not all ~0


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_export_gathers_the_shards_into_one_artifact_that_answers_like_the_sharded_model(runs, kind: str) -> None:
    import sharkrec
    from sharkrec.train.checkpoint import load_model
    from tests.export.conftest import serving_batch

    rank0, _ = runs[kind]
    folder = runs["dir"][0]["path"] / kind / "model"
    assert rank0["report"]["export_max_abs_diff"] == 0.0
    data = _data()
    bundle = load_model(folder / "model.pt")
    with torch.no_grad():
        saved = torch.sigmoid(torch.cat([bundle.model(b) for b in data.test.batches(8192)])).numpy()
    np.testing.assert_allclose(saved, rank0["test"], rtol=0, atol=1e-6)
    serving = sharkrec.load(folder / "artifact")
    with torch.no_grad():
        served = torch.cat([serving.predict_proba(serving_batch(serving, b, data.vocabularies))
                            for b in data.test.batches(8192)]).numpy()
    np.testing.assert_allclose(served.reshape(saved.shape), rank0["test"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_pruning_removes_tables_from_the_plan_and_equals_one_process_pruning(runs, kind: str) -> None:
    from sharkrec.prune.plan import remove_fields
    from sharkrec.train.checkpoint import load_model
    from sharkrec.train.sharded import predict

    rank0, rank1 = runs[kind]
    removed = rank0["removed"]
    assert removed == rank1["removed"] and len(removed) == 2
    assert set(rank0["pruned_plan"]) == set(_data().schema.sparse_names) - set(removed)
    before = rank0["report"]["memory"]["embedding_bytes_per_rank"]
    after = rank0["pruned_memory"]["embedding_bytes_per_rank"]
    assert sum(after) < sum(before) and rank0["pruned_memory"]["constant_bytes"] == 2 * 16 * 4
    data = _data()
    bundle = load_model(runs["dir"][0]["path"] / kind / "model" / "model.pt")
    single = remove_fields(bundle.model, removed, data.valid, 64)
    np.testing.assert_allclose(rank0["pruned_test"], predict(single, data.test), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_f_quantization_tiers_per_shard_with_a_global_budget_equal_one_process(runs, kind: str) -> None:
    from sharkrec.quant.embedding import MixedPrecisionEmbedding
    from sharkrec.quant.priority import FQuantPolicy, tier_counts_for_budget, tiers_by_rank
    from sharkrec.train.checkpoint import load_model
    from sharkrec.train.sharded import predict

    rank0, rank1 = runs[kind]
    data = _data()
    model = load_model(runs["dir"][0]["path"] / kind / "model" / "model.pt").model  # fp32, before F-Q
    tables = model.embedding
    rows = tables.num_rows()
    priorities = [torch.from_numpy(2.0 * data.vocabularies[f].positive_counts_
                                   + (data.vocabularies[f].counts_ - data.vocabularies[f].positive_counts_)).float()
                  for f in tables.field_names]
    counts = tier_counts_for_budget(sum(rows.values()), tables.embedding_dim, FQuantPolicy(memory_budget=0.5))
    plan = dict(zip(tables.field_names, tiers_by_rank(priorities, counts), strict=True))
    single = model.with_embedding(MixedPrecisionEmbedding.from_float(tables, plan, stochastic_int=False))
    for field, codes in plan.items():  # every row in the tier one process gives it
        assert torch.equal(rank0["fq_codes"][field], codes), field
    assert len({int(c) for codes in plan.values() for c in codes}) == 3  # fp32, fp16 and int8 rows
    expected = predict(single, data.test)
    np.testing.assert_allclose(rank0["fq_test"], expected, rtol=0, atol=1e-5)  # the sharded forward
    np.testing.assert_allclose(rank1["fq_test"], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(rank0["fq_export_test"], expected, rtol=0, atol=1e-5)  # the gathered artifact model
    np.testing.assert_allclose(rank0["tiered_test"], expected, rtol=0, atol=1e-5)  # lookups from the tiers
    np.testing.assert_allclose(rank1["tiered_test"], expected, rtol=0, atol=1e-5)
    report = rank0["fq"]
    assert [rank0["tiered_bytes"], rank1["tiered_bytes"]] == report["bytes_per_rank"]
    from sharkrec.importance import field_importance

    scores = field_importance(single, data.valid, "taylor2", batch_size=64).scores
    assert np.abs(rank0["tiered_scores"] - scores).max() < 1e-4, (rank0["tiered_scores"], scores)
    assert report == rank1["fq"] and report["tier_counts"] == counts
    assert report["share_of_fp32"] <= 0.52, report  # the global budget (plus per-shard map headers)
    assert max(report["bytes_per_rank"]) <= 0.55 * 0.52 * report["fp32_bytes"] / 0.5, report


def test_a_plan_over_the_rank_cap_is_one_line_error_before_training(tmp_path) -> None:
    from sharkrec.train.sharded import train_sharded

    data = _data()
    with pytest.raises(ConfigError, match=r"^--shard table_wise does not fit: rank 0 would hold \d+ table bytes "
                                          r"\(the largest table included\), over the per-rank cap of 1000; "):
        train_sharded(data, TrainConfig(**TRAIN), tmp_path / "out", shard="table_wise", rank_memory=1000)
    assert not (tmp_path / "out" / "model.pt").exists() and not (tmp_path / "out" / "report.json").exists()
    with pytest.raises(ConfigError, match="unknown --shard 'diagonal'; use one of table_wise, row_wise, auto"):
        train_sharded(data, TrainConfig(**TRAIN), None, shard="diagonal")


def _auto_worker() -> dict[str, object]:
    from sharkrec.train.sharded import train_sharded

    _, report = train_sharded(_data(), TrainConfig(**TRAIN), None, shard="auto")
    return report


def test_auto_plan_shards_every_table_without_replicas(tmp_path) -> None:
    rank0, rank1 = run_ranks(_auto_worker, tmp_path)
    memory = rank0["memory"]
    assert memory == rank1["memory"]
    assert sum(memory["embedding_bytes_per_rank"]) == memory["embedding_bytes_fp32"]  # no table held twice
    kinds = {t["type"] for t in rank0["sharding"]["tables"].values()}
    assert "data_parallel" not in kinds and kinds <= {"table_wise", "row_wise", "column_wise", "table_row_wise",
                                                      "table_column_wise"}
    assert rank0["export_max_abs_diff"] == 0.0 and rank0["metrics"]["test"]["click"]["auc"] > 0.6


def test_cli_shard_errors_are_one_line_and_write_nothing(tmp_path) -> None:
    from tests.test_cli import assert_one_line_error, run_cli

    out = tmp_path / "o"
    result = run_cli("train", "--format", "synthetic", "--data", SPEC, "--out", str(out), "--shard", "table_wise",
                     "--rank-memory", "1000", "--quiet")
    assert_one_line_error(result, "--shard table_wise does not fit: rank 0 would hold", "per-rank cap of 1000")
    result = run_cli("train", "--format", "synthetic", "--data", SPEC, "--out", str(out), "--shard", "row_wise",
                     "--precision", "int8")
    assert_one_line_error(result, "--shard trains fp32 or f-quant tables; --precision int8 is not supported")
    result = run_cli("train", "--format", "synthetic", "--data", SPEC, "--out", str(out), "--shard", "auto",
                     "--precision", "f-quant", "--memory-budget", "0.5")
    assert_one_line_error(result, "--shard auto with --precision f-quant is not supported; use --shard table_wise")
    result = run_cli("train", "--format", "synthetic", "--data", SPEC, "--out", str(out), "--shard", "columns")
    assert_one_line_error(result, "unknown --shard 'columns'; use one of table_wise, row_wise, auto")
    assert not (out / "model.pt").exists() and not (out / "report.json").exists()


def test_replicated_tables_report_every_rank_holding_them() -> None:
    from sharkrec.train.run import build_model, memory_summary

    model = build_model(_data())
    summary = memory_summary(model)
    assert summary["embedding_bytes_per_rank"] == [summary["embedding_bytes"]] == [model.embedding.embedding_bytes()]


@pytest.mark.slow  # two torchrun processes import torch + torchrec and generate data: ~25 s on 2 shared cores
@pytest.mark.parametrize("precision", ["fp32", "f-quant"])
def test_cli_train_shard_under_torchrun_writes_once_with_per_rank_bytes(tmp_path, precision: str) -> None:
    """The real entry point: ``torchrun --nproc_per_node=2 -m sharkrec.cli train --shard row_wise``."""
    import json
    import os
    import subprocess
    import sys

    from sharkrec.train.checkpoint import load_model
    from sharkrec.train.sharded import predict

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "sharkrec.cli", "train", "--format", "synthetic", "--data", SPEC, "--out", str(tmp_path / "run"),
               "--shard", "row_wise", "--batch-size", "64", "--epochs", "1", "--threads", "1", "--quiet",
               "--precision", precision, *(["--memory-budget", "0.5"] if precision == "f-quant" else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # only rank 0 prints (and writes)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    memory = report["memory"]
    assert report["distributed"]["world_size"] == 2 and len(memory["embedding_bytes_per_rank"]) == 2
    assert max(memory["embedding_bytes_per_rank"]) <= 0.55 * memory["embedding_bytes"]
    assert memory["embedding_bytes"] <= (0.5 if precision == "f-quant" else 1.0) * memory["embedding_bytes_fp32"]
    data = _data()
    model = load_model(tmp_path / "run" / "model.pt").model
    auc = report["metrics"]["test"]["click"]["auc"]
    from sharkrec.train.metrics import task_metrics

    again = task_metrics(data.test.labels.numpy(), predict(model, data.test), data.schema.label_names)
    assert abs(again["click"]["auc"] - auc) < 1e-9 and report["export_max_abs_diff"] == 0.0


def _importance_worker(model_path: str, out: str, kind: str) -> dict[str, object]:
    from sharkrec import distributed
    from sharkrec.importance.run import run_importance
    from sharkrec.train.checkpoint import load_model

    distributed.init_from_env()
    return run_importance(load_model(model_path), _data(), "taylor2", out, batch_size=64, shard=kind)


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_importance_with_shard_scores_a_saved_model_with_its_tables_sharded(runs, tmp_path, kind: str) -> None:
    """``sharkrec importance --shard``: the saved fp32 model sharded across 2 ranks scores like one process."""
    import json

    from sharkrec.importance import field_importance
    from sharkrec.train.checkpoint import load_model

    path = runs["dir"][0]["path"] / kind / "model" / "model.pt"
    rank0, rank1 = run_ranks(_importance_worker, tmp_path / "ranks", str(path), str(tmp_path / "out"), kind)
    assert rank0["scores"] == rank1["scores"]
    single = field_importance(load_model(path).model, _data().valid, "taylor2", batch_size=64)
    scores = np.array([rank0["scores"][name] for name in single.field_names])
    assert np.abs(scores - single.scores).max() < 1e-4 and np.abs(single.scores).max() > 1e-3
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    per_rank = written["sharding"]["memory"]["embedding_bytes_per_rank"]
    assert len(per_rank) == 2 and max(per_rank) <= 0.55 * written["sharding"]["memory"]["embedding_bytes_fp32"]
    assert {t["type"] for t in written["sharding"]["tables"].values()} == {kind}
