"""`sharkrec serve` under a native load generator (wrk): requests/s, rows/s, p50 / p99, errors, server CPU
per request, and the memory of N workers, for each HTTP stack side by side in one run.

    python benchmarks/http_load.py                                  # ~6 minutes
    python benchmarks/http_load.py --seconds 4 --rows 20000 --out /tmp/http.json   # quick

Exports a compressed synthetic model (``--fields`` x ``--rows`` rows, dim ``--dim``, tiers by
frequency as in serving_qps.py) as an artifact, then for every ``--servers`` stack and ``--workers``
count starts ``sharkrec serve --server S --workers N`` in a subprocess and drives it with ``wrk``
(Debian package ``wrk``; a Lua script POSTs JSON bodies of ``--rows-per-request`` raw rows, 64 bodies
in turn) at each ``--connections``. With one worker the server is pinned to core 0 and wrk to core 1
(``taskset``); with more workers they share both cores with wrk. ``uvicorn-h11`` (pure-Python HTTP
parser, asyncio loop) is the baseline the issue measured.

Per run: requests/s and rows/s (2xx answers only), wrk's p50 / p99 latency, ``errors`` (socket
errors, timeouts and non-2xx answers, which a valid body must never get), the server's CPU
milliseconds per request (user + system of the server and its workers, /proc), and rows per model
batch (from /metrics). Correctness before the load, with a Python client: scores over HTTP equal the
in-process scores, and every malformed body (broken JSON, unknown field, wrong type, empty rows,
oversize) gets a 4xx; then one mixed wrk run sends every ``--bad-every``-th request malformed and
counts the answers by status class. Memory: for every worker, RSS and PSS (``/proc/PID/smaps_rollup``)
and the PSS of the serving-cache mapping (``/proc/PID/smaps``), after the load.

Writes ``benchmarks/results/serving_http.json`` (a list of records: server, workers, rows_per_request,
connections, requests_per_s, rows_per_s, p50_ms, p99_ms, errors, ...), ``serving_http_run.json``
(configuration, correctness, memory) and ``serving_http.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from common import environment
from serving_qps import frequency_tiers, synthetic
from sharkrec.export import load_artifact, save_artifact
from sharkrec.export.records import RecordEncoder
from sharkrec.io import atomic_open, write_json
from sharkrec.quant import MixedPrecisionEmbedding

BAD_BODIES = {"broken JSON": '{"rows": [{"C1": 1', "unknown field": '{"rows": [{"C1": 1, "colour": "red"}]}',
              "wrong type": '{"rows": [{"C1": {"id": 1}}]}', "no rows": '{"rows": []}',
              "a boolean": '{"rows": [{"C1": true}]}', "not an object": '[1, 2]'}

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {%(bodies)s}
local bad = {%(bad)s}
local every = %(every)d
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) sent = 0; sent_bad = 0; s2 = 0; s4 = 0; other = 0 end
function request()
  sent = sent + 1
  if every > 0 and sent %% every == 0 then
    sent_bad = sent_bad + 1
    return wrk.format(nil, nil, nil, bad[(sent_bad %% #bad) + 1])
  end
  return wrk.format(nil, nil, nil, bodies[(sent %% #bodies) + 1])
end
%(response)s
function done(summary, latency, requests)
  local t = threads[1]
  io.write(string.format('JSON {"requests": %%d, "duration_us": %%d, "status_errors": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, "sent_bad": %%d, ' ..
    '"answered_2xx": %%d, "answered_4xx": %%d, "answered_other": %%d}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max,
    t:get("sent_bad"), t:get("s2"), t:get("s4"), t:get("other")))
end
"""
COUNTING = """
function response(status, headers, body)
  if status >= 200 and status < 300 then s2 = s2 + 1 elseif status >= 400 and status < 500 then s4 = s4 + 1
  else other = other + 1 end
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request_rows(rng: np.random.Generator, probabilities: np.ndarray, fields: int, count: int) -> list[dict]:
    ids = rng.choice(len(probabilities), size=(count, fields), p=probabilities)
    dense = rng.random((count, 13)).round(3)
    return [{**{f"C{f + 1}": int(ids[r, f]) for f in range(fields)}, **{f"I{j}": float(dense[r, j]) for j in range(13)}}
            for r in range(count)]


def lua_script(path: Path, bodies: list[str], bad_every: int, count: bool) -> Path:
    def strings(items: list[str]) -> str:
        return ",\n".join(f"[==[{item}]==]" for item in items)

    path.write_text(LUA % {"bodies": strings(bodies), "bad": strings(list(BAD_BODIES.values())),
                           "every": bad_every, "response": COUNTING if count else ""})
    return path


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def memory(pid: int, cache_folder: Path) -> dict[str, Any]:
    """RSS / PSS of process ``pid`` (smaps_rollup) and the RSS / PSS of its mappings of the serving cache."""
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        rollup[key] = int(value.split()[0]) * 1024
    cache = {"Rss": 0, "Pss": 0}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
            inside = len(head) >= 6 and head[5].startswith(str(cache_folder))
        elif inside and head and head[0].rstrip(":") in cache:
            cache[head[0].rstrip(":")] += int(head[1]) * 1024
    return {"pid": pid, "rss": rollup.get("Rss", 0), "pss": rollup.get("Pss", 0),
            "pss_anon": rollup.get("Pss_Anon", 0), "pss_file": rollup.get("Pss_File", 0),
            "private": rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0),
            "cache_rss": cache["Rss"], "cache_pss": cache["Pss"]}


def batch_rows(url: str) -> tuple[float, float]:
    """(rows scored, model batches) so far, from the /metrics histogram of one worker."""
    rows = batches = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("sharkrec_batch_rows_sum"):
            rows = float(line.split()[-1])
        elif line.startswith("sharkrec_batch_rows_count"):
            batches = float(line.split()[-1])
    return rows, batches


def wrk(url: str, script: Path, connections: int, seconds: float, core: str | None) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
               f"{url}/predict"]
    if core is not None:
        command = ["taskset", "-c", core, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    return json.loads(line[5:])


def correctness(url: str, served: Any, rows: list[dict], max_body: int) -> dict[str, Any]:
    """Served scores == in-process scores; every malformed body a 4xx (and the server still answers)."""
    got = np.asarray(httpx.post(f"{url}/predict", json={"rows": rows}).json()["scores"])
    want = served.predict_proba(RecordEncoder(served).encode(rows)).numpy()
    statuses = {name: httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}
                                 ).status_code for name, body in BAD_BODIES.items()}
    statuses["oversize"] = httpx.post(f"{url}/predict", content=b"x" * (max_body + 1),
                                      headers={"content-type": "application/json"}).status_code
    return {"max_abs_diff": float(np.abs(got - want).max()), "malformed_status": statuses,
            "every_malformed_4xx": all(400 <= s < 500 for s in statuses.values()),
            "alive": httpx.get(f"{url}/health").status_code == 200}


def start(artifact: Path, server: str, workers: int, port: int, cache: Path, args: argparse.Namespace
          ) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "sharkrec.cli", "serve", "--model", str(artifact), "--port", str(port),
               "--server", server, "--workers", str(workers), "--threads", "1", "--cache-dir", str(cache),
               "--max-wait-ms", str(args.max_wait_ms), "--max-body-bytes", str(args.max_body_bytes)]
    if workers == 1:
        command = ["taskset", "-c", "0", *command]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"{server} did not start: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{server} did not answer /health")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per field")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--servers", nargs="+", default=["uvicorn-h11", "uvicorn", "granian"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rows-per-request", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bad-every", type=int, default=10)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serving_http.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed; install it (Debian: apt-get install wrk)")
    torch.set_num_threads(1)
    spec = {"fields": args.fields, "rows": args.rows, "dim": args.dim, "top_mlp": [256, 128], "interaction": "dot"}
    model, schema, vocabularies, probabilities = synthetic(spec, 1.1)
    rng = np.random.default_rng(0)
    records: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    memories: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sharkrec-http-") as scratch:
        artifact, cache = Path(scratch) / "art", Path(scratch) / "cache"
        embedding = MixedPrecisionEmbedding.from_float(model.embedding, frequency_tiers(model, [0.01, 0.04, 0.75]))
        save_artifact(model.with_embedding(embedding), schema, vocabularies, artifact)
        served = load_artifact(artifact)
        table_bytes = served.embedding.embedding_bytes()
        scripts = {}
        for per_request in args.rows_per_request:
            bodies = [json.dumps({"rows": request_rows(rng, probabilities, args.fields, per_request)})
                      for _ in range(64)]
            scripts[per_request] = lua_script(Path(scratch) / f"post{per_request}.lua", bodies, 0, False)
        mixed = lua_script(Path(scratch) / "mixed.lua", [json.dumps({"rows": request_rows(
            rng, probabilities, args.fields, 1)}) for _ in range(64)], args.bad_every, True)
        check_rows = request_rows(rng, probabilities, args.fields, 64)
        for server in args.servers:
            for workers in args.workers:
                label = f"{server} x{workers}"
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                process = start(artifact, server, workers, port, cache, args)
                core = "1" if workers == 1 else None
                try:
                    checks[label] = correctness(url, served, check_rows, args.max_body_bytes)
                    wrk(url, scripts[args.rows_per_request[0]], max(args.connections), 2.0, core)  # warm-up
                    for per_request in args.rows_per_request:
                        for connections in args.connections:
                            pids = process_tree(process.pid)
                            cpu_before, (rows_before, batches_before) = cpu_seconds(pids), batch_rows(url)
                            run = wrk(url, scripts[per_request], connections, args.seconds, core)
                            cpu_after, (rows_after, batches_after) = cpu_seconds(pids), batch_rows(url)
                            seconds = run["duration_us"] / 1e6
                            errors = (run["status_errors"] + run["connect"] + run["read"] + run["write"]
                                      + run["timeout"])
                            ok = run["requests"] - run["status_errors"]
                            record = {"server": server, "workers": workers, "rows_per_request": per_request,
                                      "connections": connections, "requests_per_s": ok / seconds,
                                      "rows_per_s": ok * per_request / seconds, "p50_ms": run["p50_us"] / 1e3,
                                      "p99_ms": run["p99_us"] / 1e3, "max_ms": run["max_us"] / 1e3,
                                      "errors": errors, "requests": run["requests"],
                                      "server_cpu_ms_per_request": (cpu_after - cpu_before) * 1e3
                                      / max(run["requests"], 1),
                                      # from /metrics: with several workers each call reads a different
                                      # one, so the figure is only kept for one worker
                                      "rows_per_model_batch": (rows_after - rows_before)
                                      / max(batches_after - batches_before, 1) if workers == 1 else None}
                            records.append(record)
                            print({k: round(v, 2) if isinstance(v, float) else v for k, v in record.items()},
                                  flush=True)
                    checks[label]["mixed"] = wrk(url, mixed, max(args.connections), args.seconds / 2, core)
                    checks[label]["alive_after"] = httpx.get(f"{url}/health").status_code == 200
                    # every process of the server; the ones mapping the serving cache are the workers
                    memories[label] = [memory(p, cache) for p in process_tree(process.pid)]
                finally:
                    process.terminate()
                    process.wait(timeout=60)
    write_json(args.out, records)
    run_info = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "environment": environment(), "table_bytes": table_bytes, "correctness": checks, "memory": memories}
    write_json(args.out.with_name(args.out.stem + "_run.json"), run_info)
    with atomic_open(args.out.with_suffix(".md")) as handle:
        handle.write(markdown(records, run_info))
    print(f"wrote {args.out}")


def markdown(records: list[dict[str, Any]], info: dict[str, Any]) -> str:
    config = info["config"]
    lines = [f"`sharkrec serve` on a {config['fields']} x {config['rows']:,}-row artifact (dim {config['dim']}, "
             f"{info['table_bytes'] / 2**20:.1f} MiB of tables), wrk on localhost, {config['seconds']} s per run, "
             "one torch thread per worker. One worker: server on core 0, wrk on core 1; two workers share both "
             "cores with wrk. Generated by benchmarks/http_load.py.", "",
             "| server | workers | rows/request | connections | requests/s | rows/s | p50 ms | p99 ms | errors "
             "| server CPU ms/request | rows per model batch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['server']} | {r['workers']} | {r['rows_per_request']} | {r['connections']} | "
                     f"{r['requests_per_s']:,.0f} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['errors']} | {r['server_cpu_ms_per_request']:.3f} | "
                     + ("n/a" if r["rows_per_model_batch"] is None else f"{r['rows_per_model_batch']:.1f}") + " |")
    lines += ["", "Correctness (Python client, before the load; mixed wrk run after it):", ""]
    for label, check in info["correctness"].items():
        mixed = check.get("mixed", {})
        lines.append(f"- {label}: served vs in-process max |diff| {check['max_abs_diff']:.1e}; malformed bodies "
                     f"{check['malformed_status']} (all 4xx: {check['every_malformed_4xx']}); mixed run: "
                     f"{mixed.get('sent_bad', 0)} malformed sent, {mixed.get('answered_4xx', 0)} answered 4xx, "
                     f"{mixed.get('answered_2xx', 0)} 2xx, {mixed.get('answered_other', 0)} other; alive after: "
                     f"{check.get('alive_after')}")
    lines += ["", f"Memory after the load (tables: {info['table_bytes']:,} bytes):", "",
              "| server x workers | process | RSS MiB | PSS MiB | PSS anon MiB | PSS file MiB | cache RSS MiB "
              "| cache PSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for label, processes in info["memory"].items():
        for m in processes:
            role = "worker" if m["cache_rss"] else "supervisor"
            lines.append(f"| {label} | {role} {m['pid']} | {m['rss'] / 2**20:.1f} | {m['pss'] / 2**20:.1f} | "
                         f"{m['pss_anon'] / 2**20:.1f} | {m['pss_file'] / 2**20:.1f} | {m['cache_rss'] / 2**20:.1f} "
                         f"| {m['cache_pss'] / 2**20:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
