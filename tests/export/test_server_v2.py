"""The Open Inference Protocol (KServe v2) routes and ``/metrics``: v2 scores equal ``/predict``'s, bad tensors
get 400/404 with ``{"error": ...}``, and the Prometheus text parses and counts."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, httpx) is not installed")

from fastapi.testclient import TestClient

from sharkrec.export import load_artifact, save_artifact
from sharkrec.export.server import create_app

ROWS = [
    {"user": "u1", "city": "paris", "tags": ["t1", "t3"], "age": 31},
    {"user": "u0", "city": "lima", "tags": [], "age": None},
    {"user": "never-seen", "city": "oslo", "tags": "t2|t5", "age": 44.5},
]


def columns(rows: list[dict], datatypes: dict[str, str]) -> list[dict]:
    """The v2 input tensors of ``rows`` (every field of ``datatypes``; a field a row lacks is null)."""
    return [{"name": name, "shape": [len(rows)], "datatype": datatype, "data": [row.get(name) for row in rows]}
            for name, datatype in datatypes.items()]


CSV_TYPES = {"user": "BYTES", "city": "BYTES", "tags": "BYTES", "age": "FP32"}


@pytest.fixture(scope="module")
def client(artifact_path):
    with TestClient(create_app(artifact_path, max_wait_ms=5, max_request_rows=50)) as test_client:
        yield test_client


def infer(client, body, name="shop-ctr"):
    return client.post(f"/v2/models/{name}/infer", json=body)


def test_infer_scores_equal_predict(client):
    response = infer(client, {"id": "req-7", "inputs": columns(ROWS, CSV_TYPES)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "shop-ctr" and body["id"] == "req-7"
    (output,) = body["outputs"]
    assert output["name"] == "click" and output["datatype"] == "FP32" and output["shape"] == [3]
    want = np.asarray(client.post("/predict", json={"rows": ROWS}).json()["scores"])[:, 0]
    np.testing.assert_allclose(output["data"], want, atol=1e-7)
    assert len(set(output["data"])) == 3  # three different rows, three different scores


def test_left_out_input_is_missing_in_every_row(client):
    sent = columns(ROWS, {"user": "BYTES", "age": "FP32"})
    data = infer(client, {"inputs": sent}).json()["outputs"][0]["data"]
    want = client.post("/predict", json={"rows": [{"user": r["user"], "age": r["age"]} for r in ROWS]}).json()
    np.testing.assert_allclose(data, np.asarray(want["scores"])[:, 0], atol=1e-7)


def test_health_metadata_and_ready(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/shop-ctr/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "sharkrec"
    meta = client.get("/v2/models/shop-ctr").json()
    assert meta["name"] == "shop-ctr" and meta["platform"] == "sharkrec"
    assert meta["inputs"] == [{"name": n, "datatype": t, "shape": [-1]} for n, t in CSV_TYPES.items()]
    assert meta["outputs"] == [{"name": "click", "datatype": "FP32", "shape": [-1]}]


def test_int_keys_are_int64_and_every_task_is_an_output(toy_model, tmp_path):
    model, data = toy_model
    save_artifact(model, data.schema, data.vocabularies, tmp_path / "toy")
    served = load_artifact(tmp_path / "toy")
    with TestClient(create_app(served, name="toy")) as toy:
        meta = toy.get("/v2/models/toy").json()
        fields = list(data.schema.sparse_names) + list(data.schema.dense_names)
        assert [i["name"] for i in meta["inputs"]] == fields
        assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
            **dict.fromkeys(data.schema.sparse_names, "INT64"), **dict.fromkeys(data.schema.dense_names, "FP32")}
        assert [o["name"] for o in meta["outputs"]] == list(served.task_names) and len(served.task_names) == 2
        rng = np.random.default_rng(0)
        rows = [{**{n: int(rng.integers(0, 5)) for n in data.schema.sparse_names},
                 **{n: float(rng.normal()) for n in data.schema.dense_names}} for _ in range(4)]
        types = {i["name"]: i["datatype"] for i in meta["inputs"]}
        response = infer(toy, {"inputs": columns(rows, types)}, name="toy")
        assert response.status_code == 200, response.text
        got = np.stack([o["data"] for o in response.json()["outputs"]], axis=1)
        want = np.asarray(toy.post("/predict", json={"rows": rows}).json()["scores"])
        np.testing.assert_allclose(got, want, atol=1e-7)
        assert infer(toy, {"inputs": columns(rows, types), "outputs": [{"name": served.task_names[1]}]},
                     name="toy").json()["outputs"][0]["name"] == served.task_names[1]


def _tensor(**change):
    return {"name": "user", "shape": [2], "datatype": "BYTES", "data": ["u1", "u2"], **change}


@pytest.mark.parametrize(("inputs", "words"), [
    ([_tensor(datatype="FP32")], "datatype 'FP32'"),  # a string field sent as numbers
    ([{"name": "age", "shape": [1], "datatype": "BYTES", "data": ["31"]}], "send FP32"),
    ([_tensor(data=[1, 2])], "not a BYTES element"),  # the data is not of the declared datatype
    ([_tensor(shape=[3])], "shape [3] but 2 values"),
    ([_tensor(shape=[2, 2])], "shape [2, 2]"),
    ([_tensor(name="colour")], "'colour' is not an input"),
    ([_tensor(), {"name": "age", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}], "same number of rows"),
    ([_tensor(), _tensor()], "given twice"),
    ([], "non-empty 'inputs'"),
    ([_tensor(shape=[0], data=[])], "between 1 and 50"),
])
def test_bad_tensors_get_400_with_an_error(client, inputs, words):
    response = infer(client, {"inputs": inputs})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]
    assert infer(client, {"inputs": columns(ROWS, CSV_TYPES)}).status_code == 200  # still serving


def test_other_bad_requests(client):
    response = client.post("/v2/models/shop-ctr/infer", content=b'{"inputs": [', headers={
        "content-type": "application/json"})
    assert response.status_code == 400 and "not JSON" in response.json()["error"]
    response = infer(client, {"inputs": columns(ROWS, CSV_TYPES), "outputs": [{"name": "buy"}]})
    assert response.status_code == 400 and "'buy' is not an output" in response.json()["error"]
    tags = [{"name": "tags", "shape": [1], "datatype": "BYTES", "data": [["t1", "t2"]]}]
    assert infer(client, {"inputs": tags}).status_code == 200  # multi-hot: a list per row is one value
    city = [{"name": "city", "shape": [1], "datatype": "BYTES", "data": [["paris", "oslo"]]}]
    assert infer(client, {"inputs": city}).status_code == 400  # a list for a single-value field


@pytest.mark.parametrize("route", ["/v2/models/nope", "/v2/models/nope/ready"])
def test_unknown_model_is_404(client, route):
    response = client.get(route)
    assert response.status_code == 404 and "'nope' is not served" in response.json()["error"]


def test_unknown_model_infer_is_404(client):
    response = infer(client, {"inputs": columns(ROWS, CSV_TYPES)}, name="nope")
    assert response.status_code == 404 and set(response.json()) == {"error"}


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def scrape(client) -> dict[tuple[str, str], float]:
    """``(name, labels) → value`` of every sample in ``/metrics``; fails on a line that does not parse."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \S+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        samples[(match[1], match[2] or "")] = float(match[3])
    return samples


def test_metrics_parse_and_count(client, artifact_path):
    before = scrape(client)
    key = ("sharkrec_http_requests_total", '{endpoint="/v2/models/{model_name}/infer",status="200"}')
    bad_key = ("sharkrec_http_requests_total", '{endpoint="/v2/models/{model_name}/infer",status="400"}')
    for _ in range(3):
        assert infer(client, {"inputs": columns(ROWS, CSV_TYPES)}).status_code == 200
    assert infer(client, {"inputs": [_tensor(shape=[5])]}).status_code == 400
    after = scrape(client)
    assert after[key] - before.get(key, 0) == 3 and after[bad_key] - before.get(bad_key, 0) == 1

    infer_latency = '{endpoint="/v2/models/{model_name}/infer",le="'
    buckets = sorted(((float(labels.split('le="')[1][:-2]), value) for (name, labels), value in after.items()
                      if name == "sharkrec_http_request_duration_seconds_bucket" and labels.startswith(infer_latency)))
    counts = [value for _, value in buckets]
    assert buckets[-1][0] == math.inf and counts == sorted(counts)  # cumulative
    count = after[("sharkrec_http_request_duration_seconds_count", '{endpoint="/v2/models/{model_name}/infer"}')]
    assert counts[-1] == count >= 4

    rows_count = after[("sharkrec_batch_rows_count", "")]
    assert rows_count >= 3 and after[("sharkrec_batch_rows_sum", "")] >= 9  # 3 requests of 3 rows at least
    assert after[("sharkrec_queue_depth", "")] == 0
    assert 0 < after[("sharkrec_model_load_seconds", "")] < 600
    digest = (artifact_path / "manifest.sha256").read_text().split()[0]
    info = [labels for (name, labels), value in after.items() if name == "sharkrec_artifact_info" and value == 1]
    assert len(info) == 1 and f'digest="{digest}"' in info[0]
