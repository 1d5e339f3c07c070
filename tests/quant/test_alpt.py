"""ALPT baseline: learned int8 step sizes, training, byte accounting and save/load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError
from sharkrec.model.embedding import FloatEmbedding, replace_storage
from sharkrec.quant import ALPTEmbedding, Precision, build_embedding
from sharkrec.train.checkpoint import load_model
from sharkrec.train.optim import OptimizerKind
from sharkrec.train.run import build_model, train_model
from sharkrec.train.trainer import TrainConfig, predict
from tests.toy import toy_data


def base_embedding(dim: int = 8) -> FloatEmbedding:
    return FloatEmbedding({"a": 30, "tags": 10}, dim, init_std=1.0, generator=torch.Generator().manual_seed(0))


def test_starts_as_int8_with_max_abs_steps_and_counts_them() -> None:
    base = base_embedding()
    alpt = build_embedding("alpt", base, None, step_lr=0.05)
    assert isinstance(alpt, ALPTEmbedding) and alpt.step_lr == 0.05
    table = base.table("a").detach()
    assert torch.allclose(alpt.step_sizes(0), table.abs().amax(1) / 127)
    assert (alpt.read_rows(0, torch.arange(30)) - table).abs().amax() <= table.abs().amax() / 127 + 1e-6
    optimizer = alpt.make_sparse_optimizer("adagrad", 0.1)
    report = alpt.memory_report()
    assert report.tiers["int8"] == {"rows": 40, "payload_bytes": 40 * 8, "scale_bytes": 40 * 4}
    assert report.optimizer_state_bytes == optimizer.state_bytes() == 2 * 40 * 4  # weight + step accumulators
    buffers = sum(b.numel() * b.element_size() for b in alpt.buffers())
    assert report.embedding_bytes == buffers


def test_step_size_gradient_follows_the_lsq_estimator() -> None:
    """Updates below the grid spacing shrink the step; entries pushed past ±127·s grow it."""
    base = FloatEmbedding({"a": 2}, 4, init_std=1.0, generator=torch.Generator().manual_seed(1))
    alpt = ALPTEmbedding.from_float(base, step_lr=0.1, stochastic_int=False)
    optimizer = alpt.make_sparse_optimizer("sgd", 1e-4)
    before = alpt.step_sizes(0).clone()
    ids = [FieldIds(torch.tensor([0, 1]))]
    target = torch.tensor([[1.0], [-1.0]])
    for _ in range(3):  # row 0: tiny updates (loss pulls it slightly); row 1: pushed far beyond its range
        optimizer.zero_grad()
        vectors = alpt(ids)[:, 0]  # (2, D)
        loss = (vectors[0] * target[0]).sum() * 1e-3 + (vectors[1] * 1e3).sum()
        loss.backward()
        optimizer.step()
    after = alpt.step_sizes(0)
    assert after[0] < before[0] and after[1] > before[1]


def test_trains_learns_steps_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = toy_data(3000)
    model = build_model(data, 0)
    assert isinstance(model.embedding, FloatEmbedding)
    embedding = build_embedding("alpt", model.embedding, data, step_lr=0.1)
    assert isinstance(embedding, ALPTEmbedding)
    initial = [embedding.step_sizes(i).clone() for i in range(embedding.num_fields)]
    config = TrainConfig(optimizer=OptimizerKind.ADAGRAD, lr=0.05, epochs=4, batch_size=128, progress=False,
                         eval_every=5)
    trained, report = train_model(data, config, tmp_path, model=model.with_embedding(embedding))
    auc = next(iter(report["metrics"]["test"].values()))["auc"]
    assert auc > 0.75
    learned = trained.embedding
    assert isinstance(learned, ALPTEmbedding)
    changed = torch.cat([(learned.step_sizes(i) - initial[i]).abs() / initial[i].clamp_min(1e-12)
                         for i in range(learned.num_fields)])
    assert float(changed.max()) > 0.05 and int((changed > 1e-3).sum()) > 10
    assert report["memory"]["embedding_bytes"] < 0.5 * report["memory"]["embedding_bytes_fp32"]
    bundle = load_model(tmp_path / "model.pt")
    assert isinstance(bundle.model.embedding, ALPTEmbedding) and bundle.model.embedding.step_lr == 0.1
    assert (predict(bundle.model, data.test) == predict(trained, data.test)).all()
    for i in range(learned.num_fields):
        assert torch.equal(bundle.model.embedding.step_sizes(i), learned.step_sizes(i))
    # a fresh process that never imported sharkrec.quant can load it too
    code = ("from sharkrec.train.checkpoint import load_model; "
            f"print(type(load_model({str(tmp_path / 'model.pt')!r}).model.embedding).__name__)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "ALPTEmbedding"


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="step_lr"):
        build_embedding("alpt", base_embedding(), None, step_lr=-1.0)
    with pytest.raises(ConfigError, match="int8"):
        ALPTEmbedding.from_float(base_embedding(), Precision.FP16)


def test_alpt_refuses_torchrun_data_parallel_through_the_layer_protocol() -> None:
    from sharkrec.prune.embedding import PrunedEmbedding
    from sharkrec.train.parallel import DataParallel

    data = toy_data(rows=300)
    model = build_model(data, seed=0)
    alpt = build_embedding("alpt", model.embedding, None)
    base = model.embedding
    pruned = PrunedEmbedding.wrap(base, {base.field_names[0]: torch.zeros(base.embedding_dim)})
    under = replace_storage(pruned, build_embedding("alpt", pruned.inner_layer(), None))  # ALPT under pruning
    for embedding in (alpt, under):
        with pytest.raises(ConfigError, match="the alpt embedding trains in one process only: ALPT's learned step"):
            DataParallel(model.with_embedding(embedding))
