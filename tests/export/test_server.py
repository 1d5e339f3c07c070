"""The HTTP app: good requests score like the model, bad requests get 422/400 and never stop the server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, httpx) is not installed")

from fastapi.testclient import TestClient

from sharkrec.errors import DataError
from sharkrec.export import load_artifact, save_artifact
from sharkrec.export.rows import parse_records
from sharkrec.export.server import create_app

ROWS = [
    {"user": "u1", "city": "paris", "tags": ["t1", "t3"], "age": 31},
    {"user": "u0", "city": "lima", "tags": [], "age": None},
    {"user": "never-seen", "city": "oslo", "tags": "t2|t5", "age": "44"},
    {"user": 7, "city": None},
]


@pytest.fixture(scope="module")
def served(csv_model, tmp_path_factory):
    model, data = csv_model
    path = tmp_path_factory.mktemp("art") / "art"
    save_artifact(model, data.schema, data.vocabularies, path)
    return load_artifact(path)


@pytest.fixture
def client(served):
    with TestClient(create_app(served, max_wait_ms=5)) as test_client:
        yield test_client


def test_good_request_scores_like_the_model(client, served):
    response = client.post("/predict", json={"rows": ROWS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tasks"] == ["click"]
    want = served.predict_proba(served.encode(parse_records(served, ROWS))).numpy()
    np.testing.assert_allclose(np.asarray(body["scores"]), want, atol=1e-6)
    encoder = client.app.state.batcher.encoder
    assert encoder.fast_calls >= 1 and encoder.fallback_calls == 0  # JSON rows take the pandas-free path


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.json()["lookup"] in ("c++", "pytorch") and response.json()["embedding_bytes"] > 0


@pytest.mark.parametrize(("payload", "status", "words"), [
    ('{"rows": [{"user": "u1"', 422, "JSON"),  # malformed JSON
    ('{"rows": []}', 422, "rows"),  # no rows
    ('{"records": [{"user": "u1"}]}', 422, "rows"),  # wrong envelope
    ('{"rows": [{"user": {"id": 1}}]}', 422, "rows.0.user"),  # wrong type
    ('{"rows": [{"user": true}]}', 422, "rows.0.user"),  # booleans are not ids
    ('{"rows": [{"user": "u1", "colour": "red"}]}', 400, "'colour'"),  # unknown field
    ('{"rows": [{"user": "u1", "age": "old"}]}', 400, "'age'"),  # dense value not a number
    ('{"rows": [{"user": ["u1", "u2"]}]}', 400, "takes one value"),  # list for a single-value field
])
def test_bad_requests_get_clear_errors_and_the_server_keeps_answering(client, payload, status, words):
    response = client.post("/predict", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error and "\n" not in error
    assert client.post("/predict", json={"rows": ROWS[:1]}).status_code == 200


def test_concurrent_requests_are_batched(served):
    app = create_app(served, max_wait_ms=50, max_batch_rows=1000)
    batcher = app.state.batcher

    async def many() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.predict([row]) for row in ROWS * 5))

    results = asyncio.run(many())
    want = served.predict_proba(served.encode(parse_records(served, ROWS * 5))).numpy()
    np.testing.assert_allclose(np.concatenate(results), want, atol=1e-6)
    assert batcher.rows == 20 and batcher.batches < 20  # gathered, not one batch per request


def test_a_bad_request_batched_with_good_ones_fails_alone(served):
    """The merged batch does not parse: each request is parsed alone; only the bad one gets the error."""
    batcher = create_app(served, max_wait_ms=50, max_batch_rows=1000).state.batcher
    bad = [{**ROWS[0], "age": "old"}]

    async def mixed() -> list[object]:
        requests = [[ROWS[0]], bad, ROWS[1:3]]
        return await asyncio.gather(*(batcher.predict(r) for r in requests), return_exceptions=True)

    good_first, error, good_last = asyncio.run(mixed())
    assert isinstance(error, DataError) and "row 0" in str(error) and "'age'" in str(error)
    want = served.predict_proba(served.encode(parse_records(served, ROWS[:3]))).numpy()
    np.testing.assert_allclose(np.concatenate([good_first, good_last]), want, atol=1e-6)
    assert batcher.batches == 1 and batcher.rows == 3


def test_too_many_rows(served):
    with TestClient(create_app(served, max_request_rows=2)) as test_client:
        response = test_client.post("/predict", json={"rows": ROWS})
        assert response.status_code == 400 and "at most 2" in response.json()["error"]
