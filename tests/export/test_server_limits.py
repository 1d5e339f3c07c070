"""Backpressure and body limits of the HTTP server: a full request queue answers 503 with Retry-After (not a
wait without bound), a body over the limit answers 413 before it is parsed, and both are counted."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, httpx) is not installed")

import httpx
from fastapi.testclient import TestClient

from sharkrec.export.server import create_app

ROW = {"user": "u1", "city": "paris", "tags": ["t1"], "age": 31}


def test_full_queue_answers_503_with_retry_after(artifact_path):
    app = create_app(artifact_path, max_wait_ms=0, max_queue=2)
    batcher = app.state.batcher
    release = threading.Event()
    score = batcher._score

    def held(batch):  # the model thread is busy until released: requests pile up in the queue
        release.wait(10)
        return score(batch)

    batcher._score = held

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post("/predict", json={"rows": [ROW]}))
            while batcher.queue_depth() or batcher._worker is None:  # the worker took the first request
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            queued = [asyncio.create_task(client.post("/predict", json={"rows": [ROW]})) for _ in range(2)]
            while batcher.queue_depth() < 2:
                await asyncio.sleep(0.01)
            over = await client.post("/predict", json={"rows": [ROW]})
            v2 = await client.post("/v2/models/shop-ctr/infer", json={"inputs": [
                {"name": "user", "shape": [1], "datatype": "BYTES", "data": ["u1"]}]})
            release.set()
            done = await asyncio.gather(first, *queued)
            metrics = await client.get("/metrics")
            health = await client.get("/health")
            return [over, v2, *done, metrics, health]

    over, v2, *done, metrics, health = asyncio.run(run())
    assert over.status_code == 503 and over.headers["retry-after"] == "1"
    assert "2 requests are waiting for the model (the limit is 2)" in over.json()["error"]
    assert v2.status_code == 503 and "error" in v2.json()
    assert [r.status_code for r in done] == [200, 200, 200]  # the queued requests were answered
    assert 'sharkrec_http_requests_total{endpoint="/predict",status="503"} 1' in metrics.text
    assert health.json()["refused"] == 2


def test_oversize_body_answers_413_unread(artifact_path):
    with TestClient(create_app(artifact_path, max_body_bytes=2000)) as client:
        small = client.post("/predict", json={"rows": [ROW] * 5})
        assert small.status_code == 200, small.text
        big = client.post("/predict", json={"rows": [ROW] * 100})
        assert big.status_code == 413 and "over 2000 bytes" in big.json()["error"]

        def chunks():  # no Content-Length: the body is counted as it arrives
            yield b'{"rows": ['
            for _ in range(100):
                yield b'{"user": "u1", "city": "paris", "tags": ["t1"], "age": 31},'
            yield b'{"user": "u1"}]}'

        chunked = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        text = client.get("/metrics").text
        assert 'sharkrec_http_requests_total{endpoint="/predict",status="413"} 2' in text


def test_limits_must_be_positive(artifact_path):
    from sharkrec.errors import ConfigError

    with pytest.raises(ConfigError, match="max_queue and max_body_bytes must be >= 1"):
        create_app(artifact_path, max_queue=0)
