"""Training and F-Permutation scoring throughput with 1 and 2 torchrun processes (gloo, CPU).

The driver starts ``torchrun --standalone --nproc_per_node=N`` on this same file for N = 1 and 2,
one after the other, and tables the figures side by side. Each worker: synthetic Criteo-shaped data
(26 sparse fields, 13 dense), DLRM dim 16, one torch thread per process, per-process batch 512
(global batch N x 512), sparse Adam; then taylor2 scoring of the validation split (batch 1024).

    python benchmarks/distributed_throughput.py --out benchmarks/results/distributed_throughput.json

N single-threaded processes on C free cores speed up by at most min(N, C), less the per-step gradient
all-reduce. Here: 2 cores shared with other jobs, so the core count bounds the speed-up of 2 processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import torch

from common import environment, write_results


def worker(rows: int, steps: int, out: str) -> None:
    """One torchrun rank: time ``steps`` training steps and one taylor2 pass; rank 0 writes JSON."""
    from sharkrec import distributed
    from sharkrec.data.synthetic import SyntheticConfig, generate
    from sharkrec.importance import field_importance
    from sharkrec.train.run import build_model
    from sharkrec.train.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    distributed.init_from_env()
    world = distributed.world_size()
    data = generate(SyntheticConfig(rows=rows, seed=0, max_cardinality=200_000)).data
    model = build_model(data, seed=0, embedding_dim=16)
    valid = data.valid.subset(range(512))

    def train(max_steps: int) -> float:
        config = TrainConfig(batch_size=512, epochs=100, max_steps=max_steps, eval_every=10**9, patience=0,
                             progress=False)
        distributed.barrier()
        started = time.perf_counter()
        Trainer(model, config, data.schema.label_names).fit(data.train, valid)
        distributed.barrier()
        return time.perf_counter() - started

    train(10)  # warm-up: allocator, optimizer state, DDP buckets
    train_seconds = train(steps)
    distributed.barrier()
    started = time.perf_counter()
    scores = field_importance(model, data.valid, "taylor2", batch_size=1024)
    distributed.barrier()
    score_seconds = time.perf_counter() - started
    if distributed.is_main():
        result = {
            "processes": world,
            "steps_per_process": steps,
            "global_batch": 512 * world,
            "train_samples": steps * 512 * world,
            "train_seconds": train_seconds,
            "train_samples_per_second": steps * 512 * world / train_seconds,
            "scored_samples": scores.samples,
            "score_seconds": score_seconds,
            "score_samples_per_second": scores.samples / score_seconds,
            "top_fields": list(scores.ranking()[:5]),
        }
        Path(out).write_text(json.dumps(result), encoding="utf-8")


def run(processes: int, rows: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   __file__, "--worker", "--rows", str(rows), "--steps", str(steps), "--result", str(out)]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        result = json.loads(out.read_text(encoding="utf-8"))
        result["wall_seconds"] = time.perf_counter() - started
        return result


def markdown(payload: dict) -> str:
    rows = payload["results"]
    base = rows[0]
    lines = [
        "# Distributed throughput (torchrun, gloo, CPU)",
        "",
        f"{payload['note']}",
        "",
        "| processes | global batch | train samples/s | train speed-up | taylor2 samples/s | scoring speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['processes']} | {r['global_batch']} | {r['train_samples_per_second']:,.0f} | "
            f"{r['train_samples_per_second'] / base['train_samples_per_second']:.2f}x | "
            f"{r['score_samples_per_second']:,.0f} | "
            f"{r['score_samples_per_second'] / base['score_samples_per_second']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/distributed_throughput.json")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rows, args.steps, args.result)
        return
    load_before = os.getloadavg()[0]
    results = [run(int(n), args.rows, args.steps) for n in args.processes.split(",")]
    cores = os.cpu_count()
    load = max(load_before, os.getloadavg()[0])
    payload = {
        "benchmark": "distributed_throughput",
        "environment": environment(),
        "rows": args.rows,
        "results": results,
        "load_average": load,
        "note": (f"{cores} CPU cores on this machine, shared with other jobs while measured (1-minute load average "
                 f"up to {load:.1f}); one torch thread per process. The core count is the limit: N processes cannot "
                 "exceed the cores they share, and the gradient all-reduce (gloo, same host) costs each step."),
    }
    write_results(args.out, payload, markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
