"""The TorchRec family through the remaining stages: F-Q in a plain loop, Saec, compress; its export is refused in
one line (artifacts serve tensor inputs; a KeyedJaggedTensor is not flattened yet) and writes nothing."""

from __future__ import annotations

import pytest

pytest.importorskip("torchrec")

import torch
import torch.nn.functional as F

from sharkrec.cluster import cluster_model
from sharkrec.compress.pipeline import CompressConfig, compress
from sharkrec.data.user import UserData
from sharkrec.errors import ConfigError
from sharkrec.export import save_user_artifact
from sharkrec.interop.torchrec import from_torchrec_batches
from sharkrec.model.fieldmap import find_fields
from sharkrec.model.wrapped import FieldModel
from sharkrec.quant import FQuantPolicy, quantize
from tests.interop.test_user_torchrec import _auc, _state, trained  # noqa: F401


def test_dlrm_dcn_through_fq_saec_compress_and_export(trained, tmp_path) -> None:  # noqa: F811
    model, data = trained
    before = _state(model)
    b = data["train"][0]
    example = (b.dense_features, b.sparse_features)
    wrapped = FieldModel.wrap(model, find_fields(model, example))
    splits = {name: from_torchrec_batches(wrapped, batches) for name, batches in data.items()}
    user = UserData(wrapped, splits["train"], splits["valid"], splits["test"])
    with torch.no_grad():
        base = _auc(torch.cat([wrapped(x.dense_features, x.sparse_features) for x in data["test"]]), data["test"])

    qmodel = quantize(model, policy=FQuantPolicy(memory_budget=0.6, recheck_every=2), example=example)
    dense_opt = torch.optim.Adam(qmodel.dense_parameters(), lr=1e-3)
    rows_opt = qmodel.embedding.make_sparse_optimizer("adagrad", 0.01)
    qmodel.train()
    for x in data["train"]:
        qmodel.observe(x.labels)
        loss = F.binary_cross_entropy_with_logits(qmodel(x.dense_features, x.sparse_features)[:, 0], x.labels.float())
        dense_opt.zero_grad()
        rows_opt.zero_grad()
        loss.backward()
        dense_opt.step()
        rows_opt.step()
    qmodel.eval()
    assert qmodel.embedding.embedding_bytes() <= 0.6 * wrapped.embedding.embedding_bytes() + 64
    with torch.no_grad():
        q_auc = _auc(torch.cat([qmodel(x.dense_features, x.sparse_features) for x in data["test"]]), data["test"])
    assert q_auc > base - 0.03

    clustered, _ = cluster_model(wrapped, user, rows_ratio=0.5)
    assert sum(clustered.embedding.num_rows().values()) <= 0.55 * sum(wrapped.embedding.num_rows().values())

    result = compress(wrapped, user, CompressConfig(target_memory=0.3, max_trainings=2))
    assert result.model.embedding.embedding_bytes() <= 0.3 * wrapped.embedding.embedding_bytes() + 1e-9

    with pytest.raises(ConfigError, match="an artifact serves inputs that are tensors"):
        save_user_artifact(result.model, example, tmp_path / "art")
    assert not (tmp_path / "art").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
