"""--shard with validation, early stopping and --resume (2 gloo ranks): interrupted + resumed == uninterrupted."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torchrec", reason="install the TorchRec extra: make setup-torchrec (CI does)")

from sharkrec.data.loading import load_data
from sharkrec.errors import CheckpointError
from sharkrec.train.trainer import TrainConfig
from tests.ranks import run_ranks

SPEC = "rows=4000,seed=2,num_sparse=8"
TRAIN = {"batch_size": 32, "epochs": 1, "lr": 0.05, "progress": False, "eval_every": 10, "patience": 6}


def _worker(precision: str, kind: str, out: str, max_steps: int | None, resume: bool) -> dict[str, object]:
    from sharkrec.train.sharded import predict, train_sharded
    from sharkrec.train.sharded_fq import train_sharded_fq

    data = load_data("synthetic", SPEC)
    config = TrainConfig(**TRAIN, max_steps=max_steps)
    try:
        if precision == "f-quant":
            sharded, report = train_sharded_fq(data, config, out, shard=kind, resume=resume,
                                               policy_options={"memory_budget": 0.5, "recheck_every": 10})
        else:
            sharded, report = train_sharded(data, config, out, shard=kind, resume=resume)
    except CheckpointError as error:
        return {"error": str(error)}
    return {"report": report, "test": predict(sharded.model, data.test)}


@pytest.mark.parametrize("precision", ["fp32", "f-quant"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, precision: str) -> None:
    whole = run_ranks(_worker, tmp_path / "whole", precision, "row_wise", str(tmp_path / "a"), None, False)
    part = run_ranks(_worker, tmp_path / "part", precision, "row_wise", str(tmp_path / "b"), 20, False)
    assert part[0]["report"]["training"]["steps"] == 20
    files = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert files == ["best-dense.pt", "best-rank0-of-2.pt", "best-rank1-of-2.pt", "last-dense.pt",
                     "last-rank0-of-2.pt", "last-rank1-of-2.pt"], files
    resumed = run_ranks(_worker, tmp_path / "resumed", precision, "row_wise", str(tmp_path / "b"), None, True)
    for rank in range(2):
        one, two = whole[rank]["report"]["training"], resumed[rank]["report"]["training"]
        assert one["steps"] == two["steps"] == 50 and one["best_step"] == two["best_step"]
        assert [h["valid"] for h in one["history"]] == [h["valid"] for h in two["history"]]  # the same validations
        np.testing.assert_array_equal(whole[rank]["test"], resumed[rank]["test"])
    assert len(whole[0]["report"]["training"]["history"]) == 5  # every 10 steps
    # another world size or plan: a one-line error, nothing resumed
    other = run_ranks(_worker, tmp_path / "other", precision, "row_wise", str(tmp_path / "b"), None, True, world=1)
    message = other[0]["error"]
    assert message.startswith("cannot resume: the checkpoint was written by 2 rank(s) with --shard row_wise")
    assert "this run has 1 rank(s)" in message and "--nproc_per_node=2" in message and "\n" not in message
    other = run_ranks(_worker, tmp_path / "kind", precision, "table_wise", str(tmp_path / "b"), None, True)
    assert "this run has 2 rank(s) with --shard table_wise" in other[0]["error"]
