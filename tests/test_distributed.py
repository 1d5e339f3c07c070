"""torchrun-style data parallelism with 2 gloo processes on CPU: scores, training and F-Quantization tiers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sharkrec import distributed
from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.importance import taylor_family
from sharkrec.quant.embedding import MixedPrecisionEmbedding
from sharkrec.quant.priority import FQuantPolicy
from sharkrec.train.run import build_model, train_model
from sharkrec.train.trainer import TrainConfig, Trainer
from tests.ranks import run_ranks
from tests.toy import toy_data

TRAIN = {"batch_size": 64, "epochs": 2, "lr": 0.02, "progress": False, "patience": 0}


# ------------------------------------------------------------------ pure helpers (one process)
def test_shard_bounds_cover_items_in_order_at_block_multiples() -> None:
    for total, parts, block in [(10, 2, 1), (10, 3, 4), (7, 2, 3), (4096, 2, 512), (3, 2, 8)]:
        bounds = [distributed.shard_bounds(total, parts, r, block) for r in range(parts)]
        assert bounds[0][0] == 0 and bounds[-1][1] == total
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        assert all(start % block == 0 for start, _ in bounds)


def test_single_process_helpers_are_no_ops() -> None:
    data = toy_data(rows=500)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard_for_training(data.train) is data.train
    assert distributed.shard_batches(data.valid, 8) is data.valid
    rows, values = distributed.sum_rows(torch.tensor([3, 1, 3]), torch.tensor([1.0, 2.0, 4.0]))
    assert rows.tolist() == [1, 3] and values.tolist() == [2.0, 5.0]
    assert distributed.summary() == {"world_size": 1, "backend": None}


def test_torchrun_environment_without_master_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT not set; start sharkrec with torchrun"):
        distributed.init_from_env()


# ------------------------------------------------------------------ 2 processes (gloo)
def _trained_model(rows: int = 3000):
    data = toy_data(rows=rows)
    model, _ = train_model(data, TrainConfig(**{**TRAIN, "epochs": 1}))
    return data, model


def _scores_worker(model_path: str, batch_size: int) -> dict[str, np.ndarray]:
    data = toy_data(rows=3000)
    model = torch.load(model_path, weights_only=False)
    family = taylor_family(model, data.valid, batch_size=batch_size, seed=3)
    return {name: np.stack([r.scores, r.std]) for name, r in family.items()} | {
        "raw": family["taylor2"].raw, "samples": np.array([family["taylor2"].samples])}


def test_f_permutation_scores_equal_single_process(tmp_path) -> None:
    data, model = _trained_model()
    torch.save(model, tmp_path / "model.pt")
    single = taylor_family(model, data.valid, batch_size=64, seed=3)  # 300 samples: 5 batches, 3 + 2 per rank
    ranks = run_ranks(_scores_worker, tmp_path / "out", str(tmp_path / "model.pt"), 64)
    for result in ranks:
        assert int(result["samples"][0]) == len(data.valid)
        np.testing.assert_allclose(result["raw"], single["taylor2"].raw, rtol=0, atol=1e-7)
        for name, one in single.items():
            assert np.abs(result[name][0] - one.scores).max() < 1e-5, name  # scores
            assert np.abs(result[name][1] - one.std).max() < 1e-5, name  # std of the same per-batch means
    assert single["taylor2"].ranking()[0] == "a"  # the informative field, so the scores are not all ~0


def _training_worker(precision: str) -> dict[str, object]:
    data = toy_data(rows=6000)
    options = {"memory_budget": 0.5, "recheck_every": 10} if precision == "f-quant" else None
    config = TrainConfig(**{**TRAIN, "optimizer": "adagrad" if precision == "f-quant" else "adam"})
    model, report = train_model(data, config, precision=precision, precision_options=options)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return {"auc": report["metrics"]["test"]["y0"]["auc"], "steps": report["training"]["steps"],
            "world": report["distributed"]["world_size"], "state": state}


@pytest.mark.parametrize("precision", ["fp32", "f-quant"])
def test_training_reaches_the_single_process_auc_band(tmp_path, precision: str) -> None:
    data = toy_data(rows=6000)
    options = {"memory_budget": 0.5, "recheck_every": 10} if precision == "f-quant" else None
    config = TrainConfig(**{**TRAIN, "optimizer": "adagrad" if precision == "f-quant" else "adam"})
    _, single = train_model(data, config, precision=precision, precision_options=options)
    rank0, rank1 = run_ranks(_training_worker, tmp_path, precision)
    assert rank0["world"] == 2
    per_rank_batches = -(-(len(data.train) // 2) // 64)  # each rank: half the samples, batches of 64
    assert rank0["steps"] == rank1["steps"] == per_rank_batches * TRAIN["epochs"]
    # every rank holds bit-identical weights (dense via DDP, tables via gathered sparse rows)
    assert rank0["state"].keys() == rank1["state"].keys()
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    single_auc = single["metrics"]["test"]["y0"]["auc"]
    assert single_auc > 0.8
    assert abs(rank0["auc"] - single_auc) < 0.02, (rank0["auc"], single_auc)


def _tiers_worker(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    layer = _fquant_layer()
    rank = distributed.rank()
    for ids, labels in batches[rank::2]:  # rank r observes its own half of every global batch
        layer.observe_batch([FieldIds(ids[:, 0]), FieldIds(ids[:, 1])], labels)
    layer.retier()
    return {**layer.tier_of_rows(), "priority": torch.cat(layer.priorities())}


def _fquant_layer() -> MixedPrecisionEmbedding:
    policy = FQuantPolicy(memory_budget=0.7, recheck_every=1000)
    return MixedPrecisionEmbedding({"u": 200, "i": 100}, 8, policy=policy, initial="fp32")


def test_f_quantization_tiers_identical_on_all_ranks(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    halves = []  # 10 global batches of 2 x 32 samples, skewed ids
    for _ in range(20):
        ids = torch.stack([(torch.rand(32, generator=generator) ** 3 * 200).long(),
                           (torch.rand(32, generator=generator) ** 2 * 100).long()], dim=1)
        halves.append((ids, (torch.rand(32, 1, generator=generator) < 0.3).float()))
    rank0, rank1 = run_ranks(_tiers_worker, tmp_path, halves)
    # one process seeing each global batch (both halves together) in one step
    single = _fquant_layer()
    for step in range(10):
        ids = torch.cat([halves[2 * step][0], halves[2 * step + 1][0]])
        labels = torch.cat([halves[2 * step][1], halves[2 * step + 1][1]])
        single.observe_batch([FieldIds(ids[:, 0]), FieldIds(ids[:, 1])], labels)
    single.retier()
    expected = {**single.tier_of_rows(), "priority": torch.cat(single.priorities())}
    for key in ("u", "i"):
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], expected[key]), key
    assert len(set(rank0["u"].tolist())) == 3  # fp32, fp16 and int8 rows all present
    torch.testing.assert_close(rank0["priority"], expected["priority"], rtol=1e-6, atol=1e-7)


def _too_small_worker() -> str:
    data = toy_data(rows=500)
    try:
        distributed.shard_batches(data.valid, 4096, "scored split")
    except DataError as error:
        return str(error)
    return "no error"


def test_fewer_batches_than_processes_is_a_clear_error(tmp_path) -> None:
    messages = run_ranks(_too_small_worker, tmp_path)
    assert messages[0] == ("the scored split has 1 batch(es) of 4096, fewer than the 2 processes; "
                           "use a smaller --batch-size or fewer processes")


def test_trainer_without_torchrun_has_no_parallel_wrapper() -> None:
    data = toy_data(rows=300)
    trainer = Trainer(build_model(data), TrainConfig(progress=False), data.schema.label_names)
    assert trainer.parallel is None


@pytest.mark.slow  # two torchrun processes import torch and generate data: ~30 s on 2 shared cores
def test_cli_importance_under_torchrun_writes_once_and_matches_one_process(tmp_path) -> None:
    """The real entry point: ``torchrun --nproc_per_node=2 -m sharkrec.cli importance``."""
    import json
    import os
    import subprocess
    import sys

    from sharkrec.data.loading import load_data
    from sharkrec.importance.run import run_importance
    from sharkrec.train.checkpoint import load_model

    spec = "rows=3000,seed=2"
    train_model(load_data("synthetic", spec), TrainConfig(**{**TRAIN, "epochs": 1}), tmp_path / "model")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "sharkrec.cli", "importance", "--model", str(tmp_path / "model" / "model.pt"), "--format",
               "synthetic", "--data", spec, "--out", str(tmp_path / "scores"), "--batch-size", "64", "--threads", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # only rank 0 prints (and writes)
    report = json.loads((tmp_path / "scores" / "report.json").read_text())
    bundle = load_model(tmp_path / "model" / "model.pt")
    single = run_importance(bundle, load_data("synthetic", spec, vocabularies=bundle.vocabularies), batch_size=64)
    assert report["samples"] == single["samples"] == 300
    for name, score in single["scores"].items():
        assert abs(report["scores"][name] - score) < 1e-5, name


def test_resume_with_another_process_count_is_a_clear_error(tmp_path) -> None:
    from sharkrec.errors import CheckpointError

    data = toy_data(rows=600)
    config = TrainConfig(**{**TRAIN, "epochs": 1})
    train_model(data, config, tmp_path)
    state_path = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(state_path, weights_only=False)
    assert state["progress"]["world_size"] == 1
    state["progress"]["world_size"] = 2  # as if written by torchrun --nproc_per_node=2
    torch.save(state, state_path)
    with pytest.raises(CheckpointError, match=r"the run used 2 process\(es\), this one 1; resume with torchrun "
                                              r"--nproc_per_node=2"):
        train_model(data, config, tmp_path, resume=True)


def _compress_worker(model_path: str, out: str) -> dict[str, object]:
    from sharkrec.compress import DEFAULT_FINE_TUNE, CompressConfig, run_compress
    from sharkrec.train.checkpoint import ModelBundle

    data = toy_data(rows=3000)
    model = torch.load(model_path, weights_only=False)
    bundle = ModelBundle(model=model, schema=data.schema, vocabularies=data.vocabularies, info={})
    fine_tune = DEFAULT_FINE_TUNE.__class__(**{**DEFAULT_FINE_TUNE.to_dict(), "epochs": 1, "batch_size": 64})
    config = CompressConfig(target_memory=0.5, max_auc_drop=0.0, max_trainings=2, fine_tune=fine_tune, batch_size=64)
    result = run_compress(bundle, data, config, out)
    return {"report": {k: result.report[k] for k in ("chosen", "metrics", "search", "bytes", "distributed")},
            "state": {k: v.clone() for k, v in result.model.state_dict().items()}}


def test_compress_under_two_processes_agrees_on_every_rank_and_writes_once(tmp_path) -> None:
    import json

    _, model = _trained_model()
    torch.save(model, tmp_path / "model.pt")
    out = tmp_path / "compressed"
    rank0, rank1 = run_ranks(_compress_worker, tmp_path / "ranks", str(tmp_path / "model.pt"), str(out))
    assert rank0["report"]["distributed"]["world_size"] == 2
    for key in ("chosen", "metrics", "bytes"):
        assert rank0["report"][key] == rank1["report"][key], key
    assert [t["valid_auc_drop"] for t in rank0["report"]["search"]["trained"]] == \
        [t["valid_auc_drop"] for t in rank1["report"]["search"]["trained"]]
    for key, value in rank0["state"].items():  # the same compressed model on both ranks
        assert torch.equal(value, rank1["state"][key]), key
    written = json.loads((out / "report.json").read_text())
    assert written["chosen"] == rank0["report"]["chosen"] and written["bytes"]["share_of_fp32"] <= 0.5
    assert (out / "artifact" / "manifest.json").is_file() and not (out / "compress_state").exists()
