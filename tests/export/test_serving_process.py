"""`sharkrec serve` as the process a user runs: SIGTERM answers the request in flight before exit, N workers
map one serving cache, the access log is JSON lines, a missing serve extra is one line, and the scores of
``/v2/.../infer``, ``/predict`` and ``sharkrec predict`` are the same numbers."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

import httpx
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from sharkrec import serving
from sharkrec.cli import app as cli_app
from sharkrec.errors import ConfigError
from sharkrec.export.server import create_app
from tests.export.conftest import write_csv

ROW = {"user": "u1", "city": "paris", "tags": ["t1", "t3"], "age": 31}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(artifact: Path, cache: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "sharkrec.cli", "serve", "--model", str(artifact), "--port",
                                str(port), "--cache-dir", str(cache), *extra], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a first build of the lookup kernel included
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the workers too, so their end of the stderr pipe closes
    raise AssertionError(f"the server did not answer /health within 300 s: {process.stderr.read().decode()[-3000:]}")


def test_sigterm_answers_the_request_in_flight_then_exits(artifact_path, tmp_path):
    process, url = start_server(artifact_path, tmp_path / "cache")
    try:
        want = httpx.post(f"{url}/predict", json={"rows": [ROW]}).json()["scores"]
        body = json.dumps({"rows": [ROW]}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            sock.sendall(head + body[:10])  # the request has begun: half its body is still to come
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert process.poll() is None  # still running: it waits for the request in flight
            sock.sendall(body[10:])
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        status_line, rest = answer.split(b"\r\n", 1)
        assert b" 200 " in status_line
        assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["scores"] == want
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")  # no longer listening
    finally:
        if process.poll() is None:
            process.kill()


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the workers' memory maps from /proc")
def test_two_workers_map_one_serving_cache(artifact_path, tmp_path):
    cache = tmp_path / "cache"
    process, url = start_server(artifact_path, cache, "--workers", "2")
    try:
        want = TestClient(create_app(artifact_path)).post("/predict", json={"rows": [ROW]}).json()["scores"]
        for _ in range(8):
            assert httpx.post(f"{url}/predict", json={"rows": [ROW]}).json()["scores"] == want
        (cache_file,) = [p for p in cache.iterdir() if p.suffix == ".safetensors"]
        deadline = time.monotonic() + 60
        mapping = []
        while time.monotonic() < deadline:
            mapping = [pid for pid in _children(process.pid)
                       if str(cache_file) in Path(f"/proc/{pid}/maps").read_text()]
            if len(mapping) == 2:
                break
            time.sleep(0.5)
        assert len(mapping) == 2  # both workers read the tables from the one cache file
        assert str(cache_file) not in Path(f"/proc/{process.pid}/maps").read_text()  # the supervisor holds none
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_access_log_is_one_json_line_per_request(artifact_path, capsys):
    with TestClient(create_app(artifact_path, access_log=True)) as client:
        capsys.readouterr()
        assert client.post("/predict", json={"rows": [ROW]}).status_code == 200
        assert client.post("/predict", content=b"{").status_code == 422
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [(r["method"], r["endpoint"], r["status"]) for r in lines] == [("POST", "/predict", 200),
                                                                          ("POST", "/predict", 422)]
    assert lines[0]["ms"] > 0 and lines[0]["request_bytes"] > 0 and lines[0]["pid"] == os.getpid()


def test_a_missing_serve_extra_is_one_line(monkeypatch, artifact_path):
    real = serving.importlib.util.find_spec
    monkeypatch.setattr(serving.importlib.util, "find_spec", lambda name: None if name == "uvloop" else real(name))
    with pytest.raises(ConfigError) as error:
        serving.serve(artifact_path)
    message = str(error.value)
    assert "uvloop" in message and "pip install 'sharkrec[serve]'" in message and "\n" not in message
    with pytest.raises(ConfigError, match="unknown server 'tornado'"):
        serving.serve(artifact_path, server="tornado")


def test_v2_predict_and_sharkrec_predict_give_the_same_scores(artifact_path, tmp_path):
    source = write_csv(tmp_path / "score.csv", 40, seed=5, label=False)
    out = tmp_path / "scores.tsv"
    result = CliRunner().invoke(cli_app, ["predict", "--model", str(artifact_path), "--input", str(source),
                                          "--output", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader)
        cli_scores = np.asarray([[float(v) for v in line[1:]] for line in reader])
    assert header[1:] == ["click"]
    with source.open() as handle:
        raw = list(csv.DictReader(handle))
    rows = [{"user": r["user"], "city": r["city"], "tags": r["tags"], "age": r["age"]} for r in raw]
    with TestClient(create_app(artifact_path)) as client:
        predicted = np.asarray(client.post("/predict", json={"rows": rows}).json()["scores"])
        inputs = [{"name": name, "datatype": "BYTES", "shape": [len(rows)], "data": [r[name] for r in rows]}
                  for name in ("user", "city", "tags")]
        inputs.append({"name": "age", "datatype": "FP32", "shape": [len(rows)],
                       "data": [float(r["age"]) if r["age"] else None for r in rows]})  # "" is missing
        answer = client.post("/v2/models/shop-ctr/infer", json={"inputs": inputs})
        assert answer.status_code == 200, answer.text
        v2 = np.asarray(answer.json()["outputs"][0]["data"])
    assert predicted.shape == cli_scores.shape == (40, 1)
    np.testing.assert_allclose(predicted, cli_scores, rtol=0, atol=1e-6)  # the TSV holds 6 decimals or more
    np.testing.assert_allclose(v2, predicted[:, 0], rtol=0, atol=1e-7)  # FP32 over the wire
    assert len(np.unique(predicted)) > 5
