"""The TorchRec family through the remaining stages: F-Q in a plain loop, Saec, compress, export; the artifact
serves KJT inputs (in process, as JSON over HTTP, and from a process that never imported torchrec)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torchrec")

import torch
import torchrec

from sharkrec.cluster import cluster_model
from sharkrec.compress.pipeline import CompressConfig, compress
from sharkrec.data.user import UserData
from sharkrec.errors import DataError
from sharkrec.export import load_artifact, save_user_artifact
from sharkrec.interop.torchrec import from_torchrec_batches
from sharkrec.model.fieldmap import find_fields
from sharkrec.model.wrapped import FieldModel
from sharkrec.quant import FQuantPolicy, quantize
from tests.interop.test_user_torchrec import _auc, _state, trained  # noqa: F401
from tests.user_models import train_fquant


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
    train_fquant(qmodel, [((x.dense_features, x.sparse_features), x.labels) for x in data["train"]], 1e-3, 0.01)
    assert qmodel.embedding.embedding_bytes() <= 0.6 * wrapped.embedding.embedding_bytes() + 64
    with torch.no_grad():
        q_auc = _auc(torch.cat([qmodel(x.dense_features, x.sparse_features) for x in data["test"]]), data["test"])
    assert q_auc > base - 0.03

    clustered, _ = cluster_model(wrapped, user, rows_ratio=0.5)
    assert sum(clustered.embedding.num_rows().values()) <= 0.55 * sum(wrapped.embedding.num_rows().values())

    result = compress(wrapped, user, CompressConfig(target_memory=0.3, max_trainings=2))
    assert result.model.embedding.embedding_bytes() <= 0.3 * wrapped.embedding.embedding_bytes() + 1e-9

    # export: served scores equal the compressed model's, for KJTs built by lengths or by offsets
    manifest = save_user_artifact(result.model, example, tmp_path / "art")
    assert [e["kind"] for e in manifest["lookups"]] == ["torchrec-ebc"]
    served = load_artifact(tmp_path / "art")
    x = data["test"][0]
    with torch.no_grad():
        want = result.model(x.dense_features, x.sparse_features)
    torch.testing.assert_close(served(x.dense_features, x.sparse_features), want, rtol=0, atol=1e-5)
    kjt = x.sparse_features
    by_offsets = torchrec.KeyedJaggedTensor(keys=kjt.keys(), values=kjt.values(), offsets=kjt.offsets())
    torch.testing.assert_close(served(x.dense_features, by_offsets), want, rtol=0, atol=1e-5)
    request = [x.dense_features[:5].tolist(), _kjt_json(kjt, 5)]
    torch.testing.assert_close(served(*served.parse_inputs(request)), want[:5], rtol=0, atol=1e-5)
    with pytest.raises(DataError, match=r"input inputs\[1\]\.weights was absent when the model was exported"):
        served.parse_inputs([request[0], {**request[1], "weights": [1.0] * len(request[1]["values"])}])
    with pytest.raises(DataError, match=r"input inputs\[1\]\.lengths is missing"):
        served.parse_inputs([request[0], {"values": request[1]["values"]}])

    # a fresh process that has not imported torchrec loads and serves it (the lookup kind imports it)
    code = ("import json, sys, torch, sharkrec; m = sharkrec.load(sys.argv[1]); "
            "print(json.dumps(m(*m.parse_inputs(json.loads(sys.argv[2]))).tolist()))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "art"), json.dumps(request)],
                         capture_output=True, text=True, check=True)
    torch.testing.assert_close(torch.tensor(json.loads(out.stdout.strip().splitlines()[-1])), want[:5],
                               rtol=0, atol=1e-5)

    pytest.importorskip("fastapi", reason="the serve extra (fastapi, httpx) is not installed")
    from fastapi.testclient import TestClient

    from sharkrec.export.server import create_app

    with TestClient(create_app(tmp_path / "art")) as client:
        response = client.post("/predict", json={"inputs": request})
        assert response.status_code == 200, response.text
        torch.testing.assert_close(torch.tensor(response.json()["output"]), want[:5], rtol=0, atol=1e-5)
        bad = client.post("/predict", json={"inputs": [request[0], {"values": [1], "lengths": [1]}]})
        assert bad.status_code == 400, bad.text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _kjt_json(kjt, rows: int) -> dict:
    """The first ``rows`` samples of ``kjt`` as the JSON object an HTTP client sends."""
    values, lengths = [], []
    for key in list(kjt.keys()):
        jagged = kjt[key]
        lengths += jagged.lengths()[:rows].tolist()
        values += jagged.values()[:int(jagged.lengths()[:rows].sum())].tolist()
    return {"values": values, "lengths": lengths}
