"""F-Quantization during training on tables sharded across 2 gloo ranks equals the 1-process run (same global
batches): tier codes identical, outputs close, each rank holding about half the tiered bytes, the budget global."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torchrec", reason="install the TorchRec extra: make setup-torchrec (CI does)")

from sharkrec.data.loading import load_data
from sharkrec.train.trainer import TrainConfig
from tests.ranks import run_ranks

SPEC = "rows=4000,seed=2,num_sparse=8"  # 8 tables of 24..1000 rows
TRAIN = {"epochs": 1, "lr": 0.05, "progress": False}
POLICY = {"memory_budget": 0.5, "recheck_every": 10}  # re-tier 5 times in the 50 steps of the epoch


def _data():
    return load_data("synthetic", SPEC)


def _worker(kind: str, batch_size: int, out: str | None) -> dict[str, object]:
    from sharkrec.train.sharded import predict
    from sharkrec.train.sharded_fq import export_fq, train_sharded_fq

    data = _data()
    sharded, report = train_sharded_fq(data, TrainConfig(**TRAIN, batch_size=batch_size), out, shard=kind,
                                       policy_options=POLICY)
    result = {"report": report, "test": predict(sharded.model, data.test)}
    exported = export_fq(sharded)
    if exported is not None:
        result["codes"] = exported.embedding.tier_of_rows()
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict[str, object]]]:
    base = tmp_path_factory.mktemp("sharded_fq")
    out = {"single": run_ranks(_worker, base / "single", "table_wise", 64, None, world=1)}
    for kind in ("table_wise", "row_wise"):
        out[kind] = run_ranks(_worker, base / kind, kind, 32, str(base / kind / "model"))
    out["dir"] = [{"path": base}]
    return out


def _replayed_codes(steps: int) -> dict[str, torch.Tensor]:
    """Tier codes of one process's MixedPrecisionEmbedding (sharkrec.quant.build) observing the first ``steps``
    global batches."""
    from sharkrec.interop.sharding import seeded_rows
    from sharkrec.model.embedding import FloatEmbedding
    from sharkrec.quant.build import build_embedding
    from sharkrec.train.sharded import global_batches

    data = _data()
    rows = {f: data.cardinalities[f] for f in data.schema.sparse_names}
    floats = FloatEmbedding.from_tables({f: seeded_rows(0, i, 0, r, 16, 0.01) for i, (f, r) in enumerate(rows.items())})
    store = build_embedding("f-quant", floats, data, batch_size=64, **POLICY)
    for index in global_batches(data.train, 64, 0, 0)[:steps]:
        batch = data.train.batch(index)
        store.observe_batch(batch.sparse, batch.labels)
    return store.tier_of_rows()


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_sharded_fq_training_equals_one_process(runs, kind: str) -> None:
    rank0, rank1 = runs[kind]
    single = runs["single"][0]
    assert rank0["report"]["training"]["steps"] == single["report"]["training"]["steps"] == 50
    np.testing.assert_array_equal(rank0["test"], rank1["test"])
    # table_wise: 2e-6 measured (DDP's float order) on most machines, but on an AMD EPYC one score of 400 differed
    # by 2.2e-5 (at 5f2daa1 too): the same float-order differences can flip one stochastic int8 rounding, as they
    # flip a few in row_wise (8e-4 measured; after 3 steps the difference is 6e-8). Table-wise: all but 1% of the
    # scores within 1e-5, every one within row_wise's bound.
    diff = np.abs(rank0["test"] - single["test"])
    if kind == "table_wise":
        assert float((diff > 1e-5).mean()) <= 0.01, float((diff > 1e-5).mean())
    assert float(diff.max()) <= 3e-3, float(diff.max())
    auc, one = rank0["report"]["metrics"]["test"]["click"]["auc"], single["report"]["metrics"]["test"]["click"]["auc"]
    assert abs(auc - one) < 1e-3 and auc > 0.65, (auc, one)
    best = rank0["report"]["training"]["best_step"]  # the kept weights: the best validation's
    assert best == single["report"]["training"]["best_step"] and 0 < best <= 50
    replayed = _replayed_codes(best)
    for field, codes in single["codes"].items():  # every row in the tier the one-process store gives it
        assert torch.equal(rank0["codes"][field], codes), field
        assert torch.equal(codes, replayed[field]), field
    assert len({int(c) for codes in replayed.values() for c in codes}) == 3  # fp32, fp16 and int8 rows
    assert rank0["report"]["memory"]["rows_moved"] == single["report"]["memory"]["rows_moved"] > 0


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_each_rank_holds_about_half_the_tiered_bytes_under_one_global_budget(runs, kind: str) -> None:
    rank0, rank1 = runs[kind]
    memory, one = rank0["report"]["memory"], runs["single"][0]["report"]["memory"]
    assert memory == rank1["report"]["memory"]
    per_rank = memory["embedding_bytes_per_rank"]
    assert len(per_rank) == 2 and sum(per_rank) == one["embedding_bytes"]  # every row held once, in its tier
    assert max(per_rank) <= 0.55 * one["embedding_bytes"], per_rank
    assert memory["share_of_fp32"] <= 0.5 and memory["tier_counts"] == one["tier_counts"]
    tier_rows = np.array(memory["tier_rows_per_rank"]).sum(0)[:3].tolist()
    assert tier_rows == memory["tier_counts"]  # the global counts, split over the ranks


@pytest.mark.parametrize("kind", ["table_wise", "row_wise"])
def test_export_gathers_the_tiers_into_one_model_that_answers_like_the_sharded_one(runs, kind: str) -> None:
    from sharkrec.train.checkpoint import load_model
    from sharkrec.train.sharded import predict

    rank0, _ = runs[kind]
    assert rank0["report"]["export_max_abs_diff"] == 0.0
    bundle = load_model(runs["dir"][0]["path"] / kind / "model" / "model.pt")
    assert bundle.model.embedding.kind == "mixed"
    for field, codes in rank0["codes"].items():
        assert torch.equal(bundle.model.embedding.tier_of_rows()[field], codes)
    data = _data()
    np.testing.assert_allclose(predict(bundle.model, data.test), rank0["test"], rtol=0, atol=1e-6)
    import sharkrec
    from tests.export.conftest import serving_batch

    serving = sharkrec.load(runs["dir"][0]["path"] / kind / "model" / "artifact")  # what serving reads
    with torch.no_grad():
        served = torch.cat([serving.predict_proba(serving_batch(serving, b, data.vocabularies))
                            for b in data.test.batches(8192)]).numpy()
    np.testing.assert_allclose(served.reshape(rank0["test"].shape), rank0["test"], rtol=0, atol=1e-5)


def test_rounding_draws_are_keyed_by_row_not_by_a_generator() -> None:
    from sharkrec.train.sharded_fq import row_uniforms

    rows = torch.arange(0, 20000, 3)
    draws = row_uniforms(0, 7, 0, rows, 16)
    assert draws.shape == (rows.numel(), 16) and float(draws.min()) >= 0 and float(draws.max()) < 1
    assert abs(float(draws.mean()) - 0.5) < 0.01 and abs(float(draws.var()) - 1 / 12) < 0.005
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(row_uniforms(0, 7, 0, rows[5:9], 16), draws[5:9])  # a row's draws, wherever it is held
    assert not torch.equal(row_uniforms(0, 8, 0, rows, 16), draws)  # a new step, new draws
    assert not torch.equal(row_uniforms(0, 7, 1, rows, 16), draws)  # a tier move draws apart from a write


def _one_table_worker() -> dict[str, object]:
    from sharkrec.train.sharded import predict
    from sharkrec.train.sharded_fq import train_sharded_fq

    data = load_data("synthetic", "rows=1000,seed=3,num_sparse=1")
    sharded, report = train_sharded_fq(data, TrainConfig(**TRAIN, batch_size=32), None, shard="table_wise",
                                       policy_options=POLICY)
    return {"report": report, "test": predict(sharded.model, data.test)}


def test_a_rank_without_rows_takes_part_in_every_collective(tmp_path) -> None:
    rank0, rank1 = run_ranks(_one_table_worker, tmp_path)
    memory = rank0["report"]["memory"]
    assert memory["embedding_bytes_per_rank"][1] == 0 < memory["embedding_bytes_per_rank"][0]  # one table, rank 0
    assert memory["share_of_fp32"] <= 0.5 and sum(memory["tier_rows_per_rank"][1]) == 0
    np.testing.assert_array_equal(rank0["test"], rank1["test"])
    assert rank0["report"]["metrics"]["test"]["click"]["auc"] > 0.5
