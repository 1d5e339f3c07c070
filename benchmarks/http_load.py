"""The HTTP endpoint under concurrent load on localhost: requests/s, rows/s, p50 / p99 latency, errors.

    python benchmarks/http_load.py                      # ~2 minutes
    python benchmarks/http_load.py --seconds 3 --rows 20000 --out /tmp/http.json   # quick

Exports a compressed synthetic model (``--fields`` x ``--rows``, dim ``--dim``, tiers by frequency as in
serving_qps.py) as an artifact, starts ``sharkrec serve`` on it in a subprocess, and runs an asyncio
load generator (httpx) with ``--concurrency`` clients for ``--seconds`` each, every request carrying
``--rows-per-request`` raw rows. Every ``--bad-every``-th request is malformed (broken JSON, an
unknown field, a wrong value type, in turn): those must get a 4xx and the valid ones around them
must still succeed. ``errors`` counts everything else that went wrong (5xx, a 4xx for a valid
request, a connection failure). The server's /health counters give rows per model batch, which
shows concurrent requests being batched. The generator shares the machine's cores with the server,
so each run also reports the server process's CPU time per answered request (/proc), a figure that
depends less on what else runs on the machine. Before the load, the cost of encoding one request
in-process is timed both ways: the pandas cell rules (``parse_records``) and :class:`RecordEncoder`
(what the server uses), and the served scores are checked against the pandas path.
Writes ``benchmarks/results/serving_http.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from common import environment, write_results
from serving_qps import frequency_tiers, synthetic
from sharkrec.export import load_artifact, save_artifact
from sharkrec.export.records import RecordEncoder
from sharkrec.export.rows import parse_records
from sharkrec.quant import MixedPrecisionEmbedding

BAD_BODIES = ['{"rows": [{"C1": 1', '{"rows": [{"C1": 1, "colour": "red"}]}', '{"rows": [{"C1": {"id": 1}}]}']


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request_rows(rng: np.random.Generator, probabilities: np.ndarray, fields: int, count: int) -> list[dict]:
    ids = rng.choice(len(probabilities), size=(count, fields), p=probabilities)
    dense = rng.random((count, 13)).round(3)
    return [{**{f"C{f + 1}": int(ids[r, f]) for f in range(fields)}, **{f"I{j}": float(dense[r, j]) for j in range(13)}}
            for r in range(count)]


async def load(url: str, bodies: list[str], concurrency: int, seconds: float, bad_every: int) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"ok": 0, "bad_rejected": 0, "errors": 0}
    first_error: list[str] = []
    deadline = time.perf_counter() + seconds

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        sent = worker
        while time.perf_counter() < deadline:
            sent += 1
            bad = bad_every > 0 and sent % bad_every == 0
            body = BAD_BODIES[sent % len(BAD_BODIES)] if bad else bodies[sent % len(bodies)]
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/predict", content=body,
                                           headers={"content-type": "application/json"})
                status = response.status_code
            except httpx.HTTPError as exc:
                status, response = -1, None
                first_error.append(repr(exc))
            elapsed = time.perf_counter() - start
            if bad and 400 <= status < 500:
                counts["bad_rejected"] += 1
            elif not bad and status == 200:
                counts["ok"] += 1
                latencies.append(elapsed)
            else:
                counts["errors"] += 1
                if response is not None:
                    first_error.append(f"{status}: {response.text[:200]}")

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=concurrency)) as http:
        await asyncio.gather(*(client(w, http) for w in range(concurrency)))
    wall = time.perf_counter() - started
    lat = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return {"concurrency": concurrency, "seconds": wall, **counts,
            "requests_per_s": (counts["ok"] + counts["bad_rejected"]) / wall, "ok_per_s": counts["ok"] / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "first_errors": first_error[:3]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encode_cost(served: Any, rows: list[dict], repeats: int) -> dict[str, float]:
    """Milliseconds per call to encode ``rows``: pandas cell rules vs :class:`RecordEncoder` (warm cache)."""
    encoder = RecordEncoder(served)
    out = {}
    for name, encode in (("pandas_ms", lambda: served.encode(parse_records(served, rows))),
                         ("fast_ms", lambda: encoder.encode(rows))):
        encode()
        start = time.perf_counter()
        for _ in range(repeats):
            encode()
        out[name] = (time.perf_counter() - start) / repeats * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per field")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rows-per-request", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--bad-every", type=int, default=10)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--encode-repeats", type=int, default=50, help="calls timed per encoder (in-process)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serving_http.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = {"fields": args.fields, "rows": args.rows, "dim": args.dim, "top_mlp": [256, 128], "interaction": "dot"}
    model, schema, vocabularies, probabilities = synthetic(spec, 1.1)
    rng = np.random.default_rng(0)
    runs = []
    with tempfile.TemporaryDirectory(prefix="sharkrec-http-") as scratch:
        artifact = Path(scratch) / "art"
        embedding = MixedPrecisionEmbedding.from_float(model.embedding, frequency_tiers(model, [0.01, 0.04, 0.75]))
        save_artifact(model.with_embedding(embedding), schema, vocabularies, artifact)
        served = load_artifact(artifact)
        port = free_port()
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        server = subprocess.Popen([sys.executable, "-m", "sharkrec.cli", "serve", "--model", str(artifact),
                                   "--port", str(port), "--threads", "1", "--max-wait-ms", str(args.max_wait_ms)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            else:
                raise SystemExit("the server did not start")
            check = request_rows(rng, probabilities, args.fields, 8)
            got = np.asarray(httpx.post(f"{url}/predict", json={"rows": check}).json()["scores"])
            want = served.predict_proba(served.encode(parse_records(served, check))).numpy()
            max_diff = float(np.abs(got - want).max())  # served (fast encoder) vs the pandas cell rules
            encode_ms = {}
            for per_request in args.rows_per_request:
                encode_ms[per_request] = encode_cost(
                    served, request_rows(rng, probabilities, args.fields, per_request), args.encode_repeats)
                print(f"encode {per_request} rows: {encode_ms[per_request]}", flush=True)
            for per_request in args.rows_per_request:
                bodies = [json.dumps({"rows": request_rows(rng, probabilities, args.fields, per_request)})
                          for _ in range(64)]
                for concurrency in args.concurrency:
                    before, cpu_before = httpx.get(f"{url}/health").json(), cpu_seconds(server.pid)
                    run = asyncio.run(load(url, bodies, concurrency, args.seconds, args.bad_every))
                    after, cpu_after = httpx.get(f"{url}/health").json(), cpu_seconds(server.pid)
                    answered = run["ok"] + run["bad_rejected"]
                    batches = after["batches"] - before["batches"]
                    run.update(rows_per_request=per_request, rows_per_s=run["ok_per_s"] * per_request,
                               model_batches=batches,
                               server_cpu_ms_per_request=(cpu_after - cpu_before) * 1e3 / max(answered, 1),
                               rows_per_model_batch=(after["rows"] - before["rows"]) / max(batches, 1))
                    runs.append(run)
                    print({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}, flush=True)
            alive = httpx.get(f"{url}/health").status_code == 200
        finally:
            server.terminate()
            server.wait(timeout=30)
    payload = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "environment": environment(), "load_average": list(os.getloadavg()),
               "served_vs_in_process_max_abs_diff": max_diff, "alive_after_load": alive,
               "encode_ms_per_request": encode_ms, "runs": runs}
    lines = [f"sharkrec serve on localhost, 1 model thread; load generator in the same 2-core machine; "
             f"every {args.bad_every}th request malformed (must get 4xx). Served scores vs in-process: max |diff| "
             f"{max_diff:.1e}; server alive after the load: {alive}; 1-minute load average at the end "
             f"{os.getloadavg()[0]:.1f} (other jobs share the cores).", "",
             "Encoding one request in-process (ms per call, while the server idles): "
             + "; ".join(f"{n} row(s): pandas cell rules {e['pandas_ms']:.2f}, RecordEncoder {e['fast_ms']:.3f} "
                         f"({e['pandas_ms'] / e['fast_ms']:.0f}x)" for n, e in encode_ms.items()) + ".", "",
             "| rows/request | clients | requests/s | rows/s | p50 ms | p99 ms | ok | 4xx for bad | errors "
             "| rows per model batch | server CPU ms/request |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['rows_per_request']} | {r['concurrency']} | {r['requests_per_s']:,.0f} | "
                     f"{r['rows_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['ok']} | "
                     f"{r['bad_rejected']} | {r['errors']} | {r['rows_per_model_batch']:.1f} | "
                     f"{r['server_cpu_ms_per_request']:.2f} |")
    write_results(args.out, payload, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
