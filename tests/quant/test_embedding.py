"""MixedPrecisionEmbedding: lookups, updates, migration, byte accounting, training and save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FloatEmbedding
from sharkrec.quant import MixedPrecisionEmbedding, Precision, build_embedding
from sharkrec.train.checkpoint import load_model, save_model
from sharkrec.train.optim import OptimizerKind
from sharkrec.train.run import build_model, train_model
from sharkrec.train.trainer import TrainConfig, predict
from tests.toy import toy_data


def float_embedding(seed: int = 0, rows: int = 40, dim: int = 8) -> FloatEmbedding:
    generator = torch.Generator().manual_seed(seed)
    return FloatEmbedding({"a": rows, "tags": rows // 2}, dim, init_std=1.0, generator=generator)


def mixed_plan(base: FloatEmbedding) -> dict[str, torch.Tensor]:
    return {name: torch.arange(rows) % 4 for name, rows in base.num_rows().items()}  # all four tiers


def batch() -> list[FieldIds]:
    return [FieldIds(torch.tensor([0, 1, 2, 3, 3, 39])),
            FieldIds(torch.tensor([0, 1, 1, 5, 7, 19, 2]), torch.tensor([0, 3, 3, 4, 5, 6, 7]))]


def test_forward_matches_dequantized_float_tables() -> None:
    mixed = MixedPrecisionEmbedding.from_float(float_embedding(), mixed_plan(float_embedding()))
    expected = mixed.to_float()(batch())
    assert torch.allclose(mixed(batch()), expected, atol=1e-6)
    assert expected[1, 1].abs().sum() == 0  # empty bag pools to zeros
    counts = {t: v["rows"] for t, v in mixed.memory_report().tiers.items()}
    assert counts == {"fp32": 15, "fp16": 15, "int8": 15, "int4": 15}


def test_each_tier_stays_within_its_error() -> None:
    base = float_embedding()
    mixed = MixedPrecisionEmbedding.from_float(base, mixed_plan(base))
    for i, name in enumerate(base.field_names):
        table = base.table(name).detach()
        values = mixed.read_rows(i, torch.arange(table.shape[0]))
        tiers = mixed.tier_of_rows()[name].long()
        scale = table.abs().amax(1)
        bounds = {0: 0 * scale, 1: 2.0 ** -11 * scale, 2: scale / 127, 3: scale / 7}  # stochastic: 1 step
        for code, bound in bounds.items():
            rows = tiers == code
            error = (values[rows] - table[rows]).abs().amax(1)
            assert bool((error <= bound[rows] + 1e-6).all()), Precision.from_code(code)


def test_migration_reencodes_moved_rows_and_keeps_the_rest() -> None:
    base = float_embedding()
    mixed = MixedPrecisionEmbedding.from_float(base, Precision.FP32, stochastic_int=False)
    before = mixed.read_rows(0, torch.arange(40))
    codes = torch.tensor([0, 1, 2, 3] * 10, dtype=torch.int8)
    assert mixed.set_tiers(0, codes) == 30
    after = mixed.read_rows(0, torch.arange(40))
    scale = before.abs().amax(1)
    for code, bound in {0: 0 * scale, 1: 2.0 ** -11 * scale, 2: scale / 254, 3: scale / 14}.items():
        rows = codes == code
        assert bool(((after[rows] - before[rows]).abs().amax(1) <= bound[rows] + 1e-7).all())
    # moving int8 rows up to fp32 keeps their values exactly; rows that stay keep their bytes
    int8_rows = mixed.read_rows(0, torch.tensor([2, 6]))
    assert mixed.set_tiers(0, torch.where(codes == 2, 0, codes).to(torch.int8)) == 10
    assert torch.equal(mixed.read_rows(0, torch.tensor([2, 6])), int8_rows)
    assert torch.equal(mixed.read_rows(0, torch.arange(40))[codes == 3], after[codes == 3])


@pytest.mark.parametrize("kind", ["sgd", "adagrad"])
def test_fp32_tier_updates_like_float_embedding(kind: str) -> None:
    base = float_embedding()
    reference = float_embedding()
    mixed = MixedPrecisionEmbedding.from_float(base, Precision.FP32)
    optimizer = mixed.make_sparse_optimizer(kind, 0.1)
    from sharkrec.train.optim import RowWiseAdagrad

    ref_optimizer = RowWiseAdagrad(reference.sparse_parameters(), lr=0.1) if kind == "adagrad" else \
        torch.optim.SGD(reference.sparse_parameters(), lr=0.1)
    for _ in range(3):
        for module, opt in ((mixed, optimizer), (reference, ref_optimizer)):
            opt.zero_grad()
            (module(batch()) ** 2).sum().backward()
            opt.step()
    assert torch.allclose(mixed.to_float().table("a"), reference.table("a").detach(), atol=1e-6)
    assert torch.allclose(mixed.to_float().table("tags"), reference.table("tags").detach(), atol=1e-6)
    # the gradient lives on the touched rows only
    mixed(batch())
    assert [leaf.shape[0] for _, _, leaf in mixed._touched] == [5, 6]


def test_memory_report_equals_held_tensor_bytes() -> None:
    base = float_embedding()
    mixed = build_embedding("f-quant", base, None, memory_budget=0.6, recheck_every=2)
    assert isinstance(mixed, MixedPrecisionEmbedding)
    optimizer = mixed.make_sparse_optimizer("adagrad", 0.1)
    report = mixed.memory_report()
    buffers = sum(b.numel() * b.element_size() for b in mixed.buffers())
    state = sum(v.numel() * v.element_size() for v in optimizer.state[optimizer._anchor].values())
    assert report.held_bytes == buffers + state
    assert report.embedding_bytes + report.priority_bytes == buffers
    assert report.optimizer_state_bytes == state == 60 * 4
    assert report.embedding_bytes <= 0.6 * report.fp32_bytes
    assert report.table1_header_bytes == 60 * 7
    assert mixed.embedding_bytes() == report.embedding_bytes


def test_priorities_drive_tiers_during_observation() -> None:
    base = float_embedding()
    mixed = build_embedding("f-quant", base, None, t8=0.5, t16=2.0, beta=0.5, recheck_every=2)
    assert isinstance(mixed, MixedPrecisionEmbedding)
    hot = [FieldIds(torch.tensor([7] * 8)), FieldIds(torch.tensor([3] * 8), torch.arange(9))]
    labels = torch.ones(8, 1)
    for _ in range(2):
        mixed.observe_batch(hot, labels)
    tiers = mixed.tier_of_rows()
    assert int(tiers["a"][7]) == Precision.FP32.code and int(tiers["tags"][3]) == Precision.FP32.code
    assert int(tiers["a"][0]) == Precision.INT8.code and mixed.rows_moved == 2


def test_trains_with_trainer_and_round_trips_through_a_model_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = toy_data(3000)
    model = build_model(data, 0)
    assert isinstance(model.embedding, FloatEmbedding)
    embedding = build_embedding("f-quant", model.embedding, data, memory_budget=0.5, recheck_every=5, beta=0.5)
    config = TrainConfig(optimizer=OptimizerKind.ADAGRAD, lr=0.05, epochs=4, batch_size=128, progress=False,
                         eval_every=5)
    trained, report = train_model(data, config, tmp_path, model=model.with_embedding(embedding))
    auc = next(iter(report["metrics"]["test"].values()))["auc"]
    assert auc > 0.75
    assert report["memory"]["embedding_bytes"] <= 0.5 * report["memory"]["embedding_bytes_fp32"]
    assert isinstance(trained.embedding, MixedPrecisionEmbedding) and trained.embedding.rows_moved > 0
    bundle = load_model(tmp_path / "model.pt")
    assert isinstance(bundle.model.embedding, MixedPrecisionEmbedding)
    expected = predict(trained, data.test)
    assert (predict(bundle.model, data.test) == expected).all()
    save_model(tmp_path / "again.pt", bundle.model, data.schema, data.vocabularies)
    assert (predict(load_model(tmp_path / "again.pt").model, data.test) == expected).all()


def test_uniform_baselines_hold_their_bytes() -> None:
    base = float_embedding(dim=16)
    fp16 = build_embedding("fp16", base)
    int8 = build_embedding("int8", base)
    assert build_embedding("fp32", base) is base
    assert fp16.embedding_bytes() == 60 * (32 + 5)
    assert int8.embedding_bytes() == 60 * (16 + 4 + 5)
    assert build_embedding("int4", base).embedding_bytes() == 60 * (8 + 4 + 5)
    mpe = build_embedding("mpe", base, None, cache_fraction=0.25)
    assert isinstance(mpe, MixedPrecisionEmbedding) and mpe.memory_report().tiers["fp32"]["rows"] == 15


def test_random_tiers_match_f_quant_bytes() -> None:
    base = float_embedding(dim=16)
    fquant = build_embedding("f-quant", base, None, memory_budget=0.3, use_int4=True)
    control = build_embedding("random", base, None, memory_budget=0.3, use_int4=True, seed=3)
    assert isinstance(fquant, MixedPrecisionEmbedding) and isinstance(control, MixedPrecisionEmbedding)
    assert control.embedding_bytes() == fquant.embedding_bytes() <= 0.3 * control.memory_report().fp32_bytes
    assert control.policy is None
    draws = [build_embedding("random", base, None, memory_budget=0.5, seed=s) for s in (0, 1)]
    plans = [d.tier_of_rows()["a"] for d in draws if isinstance(d, MixedPrecisionEmbedding)]
    assert len(plans) == 2 and not torch.equal(plans[0], plans[1])
    with pytest.raises(ConfigError, match="memory_budget or tier_fractions"):
        build_embedding("random", base, None, t8=1.0, t16=2.0)


def test_bad_input_errors() -> None:
    base = float_embedding()
    mixed = MixedPrecisionEmbedding.from_float(base, Precision.INT8)
    with pytest.raises(ConfigError, match="sgd or adagrad"):
        mixed.make_sparse_optimizer("adam", 0.01)
    with pytest.raises(ConfigError, match="unknown precision"):
        build_embedding("int3", base)
    with pytest.raises(ConfigError, match="alpt takes step_lr"):
        build_embedding("alpt", base, None, beta=0.1)
    with pytest.raises(ConfigError, match="tier codes for field 'tags'"):
        MixedPrecisionEmbedding.from_float(base, {"a": torch.zeros(40)})
    with pytest.raises(ConfigError, match="t8"):
        build_embedding("f-quant", base, None, t8=5.0, t16=1.0)
    with pytest.raises(DataError, match=r"field 'a' has ids outside 0\.\.39"):
        mixed([FieldIds(torch.tensor([40])), FieldIds(torch.tensor([0]))])
    with pytest.raises(ConfigError, match="memory budget"):
        build_embedding("f-quant", base, None, memory_budget=2.0)


def test_flat_priority_update_matches_per_field_eq7() -> None:
    """observe_batch's one-unique-for-all-fields update equals Eq. 7 applied field by field."""
    from sharkrec.quant.priority import batch_row_weights, lazy_update

    base = float_embedding()
    mixed = build_embedding("f-quant", base, None, memory_budget=0.6, beta=0.3, recheck_every=3)
    assert isinstance(mixed, MixedPrecisionEmbedding)
    generator = torch.Generator().manual_seed(0)
    reference = [torch.zeros(40), torch.zeros(20)]
    stamps = [torch.zeros(40, dtype=torch.int32), torch.zeros(20, dtype=torch.int32)]
    for step in range(1, 8):
        lengths = torch.randint(0, 4, (6,), generator=generator)
        sparse = [FieldIds(torch.randint(0, 40, (6,), generator=generator)),
                  FieldIds(torch.randint(0, 20, (int(lengths.sum()),), generator=generator),
                           torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]))]
        labels = torch.randint(0, 2, (6, 1), generator=generator).float()
        mixed.observe_batch(sparse, labels)
        for i, ids in enumerate(sparse):
            rows, weights = batch_row_weights(ids, labels[:, 0] > 0.5, 2.0)
            lazy_update(reference[i], stamps[i], rows, weights, step, 0.7, 0.3)
        cached = mixed(sparse)  # reuses the unique rows observe_batch found
        assert torch.equal(cached, mixed(sparse))
    step_now = torch.tensor(7)
    for got, want, stamp in zip(mixed.priorities(), reference, stamps, strict=True):
        assert torch.allclose(got, (want.double() * 0.7 ** (step_now - stamp).double()).float(), atol=1e-6)
