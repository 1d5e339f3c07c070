"""Past one machine's memory: streaming preparation of a Kaggle-sized Criteo log, and training from its shards.

1. Writes a synthetic Criteo-shaped log of ``--rows`` rows (default 45,000,000, the Kaggle size) as TSV
   shards of ``--shard-rows`` rows (:func:`write_criteo_shards`, two processes); a rerun keeps the shards.
2. Baseline, side by side on the first shard (3,000,000 rows by default): today's in-memory reader
   (``prepare_data``) and the streaming prepare, each in its own process under ``/usr/bin/time -v``.
3. The streaming prepare of every shard (``prepare_stream``), in a child process whose whole process
   tree's resident memory is sampled from /proc every 0.2 s (and its maximum RSS read from
   ``/usr/bin/time -v``).
4. Training throughput on the first ``--train-rows`` train rows: the memory-mapped split (streaming
   from the shards) against the same rows in memory (:class:`EncodedSplit`), two identical models
   trained alternately in one process, ``--steps`` batches at a time for ``--rounds`` rounds, batches
   drawn from a shuffled epoch over the whole subset.

    python benchmarks/scale.py --out benchmarks/results/scale.json          # the full run (tens of minutes)
    python benchmarks/scale.py --rows 400000 --shard-rows 100000 --train-rows 200000 --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

BYTES_PER_TSV_ROW = 265  # a generated Criteo line
BYTES_PER_PREPARED_ROW = 2 * 164  # output arrays plus the work files pass 1 writes
CHILD = os.path.abspath(__file__)


def generate(rows: int, shard_rows: int, folder: Path, seed: int) -> float:
    from sharkrec.data.synthetic import SyntheticConfig

    config = SyntheticConfig(rows=rows, seed=seed, max_cardinality=1_000_000)
    count = -(-rows // shard_rows)
    started = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_write_shards, args=(config, folder, shard_rows, list(range(k, count, 2))))
               for k in range(min(2, count))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"shard writer failed with exit code {worker.exitcode}")
    return time.perf_counter() - started


def _write_shards(config: Any, folder: Path, shard_rows: int, shards: list[int]) -> None:
    from sharkrec.data.synthetic import write_criteo_shards

    write_criteo_shards(config, folder, shard_rows, shards)


def timed_child(args: list[str], sample_tree: bool = False) -> dict[str, Any]:
    """Run this script with ``args`` under ``/usr/bin/time -v``; its JSON line, max RSS and the tree's peak RSS."""
    command = ["/usr/bin/time", "-v", sys.executable, CHILD, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_tree = 0
    if sample_tree:
        while process.poll() is None:
            peak_tree = max(peak_tree, tree_rss(process.pid))
            time.sleep(0.2)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    result["max_rss_bytes"] = int(match.group(1)) * 1024 if match else None
    if sample_tree:
        result["peak_tree_rss_bytes"] = peak_tree
    return result


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def child_prepare(mode: str, data: str, out: str, chunk_mb: int) -> None:
    """One prepare in this process; prints a JSON line with rows, seconds and bad lines."""
    started = time.perf_counter()
    if mode == "memory":
        from sharkrec.data.prepare import prepare_data

        report = prepare_data("criteo", data).report
    else:
        from sharkrec.data.stream import prepare_stream

        report = prepare_stream("criteo", data, out, chunk_bytes=chunk_mb << 20)
    seconds = time.perf_counter() - started
    rows = sum(report["rows"].values())
    print(json.dumps({"rows": rows, "bad_lines": report["bad_lines"]["count"], "seconds": seconds,
                      "rows_per_s": rows / seconds, "vocabulary_rows": sum(report["vocabulary_sizes"].values())}))


def train_alternately(prepared_dir: Path, train_rows: int, steps: int, rounds: int, seed: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from sharkrec.data.dataset import EncodedSplit, SparseColumn
    from sharkrec.data.mapped import load_prepared_dir
    from sharkrec.train.run import build_model
    from sharkrec.train.trainer import TrainConfig, Trainer

    data = load_prepared_dir(prepared_dir)
    n = min(train_rows, len(data.train))
    mapped = data.train.subset(np.arange(n))
    started = time.perf_counter()
    in_memory = EncodedSplit(
        np.array(mapped._dense_map),
        [SparseColumn(np.array(mapped._sparse_map[:, f])) for f in range(mapped.num_sparse)],
        mapped.labels.numpy(),
    )
    load_seconds = time.perf_counter() - started
    config = TrainConfig(batch_size=512, seed=seed)
    trainers = {}
    iterators = {}
    for name, split in (("memory", in_memory), ("stream", mapped)):
        model = build_model(data, seed=seed, embedding_dim=16)
        model.train()
        trainers[name] = Trainer(model, config, data.schema.label_names)
        iterators[name] = split.batches(config.batch_size, shuffle=True, seed=seed, epoch=0)
    seconds = {"memory": 0.0, "stream": 0.0}
    samples = {"memory": 0, "stream": 0}
    data_seconds = {"memory": 0.0, "stream": 0.0}
    for round_index in range(rounds):
        order = ("memory", "stream") if round_index % 2 == 0 else ("stream", "memory")
        for name in order:
            tick = time.perf_counter()
            for _ in range(steps):
                fetch = time.perf_counter()
                batch = next(iterators[name])
                data_seconds[name] += time.perf_counter() - fetch
                trainers[name]._step(batch)  # the training step alone, no validation
                samples[name] += len(batch)
            seconds[name] += time.perf_counter() - tick
    torch.set_num_threads(torch.get_num_threads())
    return {
        "train_rows": n,
        "batch_size": config.batch_size,
        "steps_each": steps * rounds,
        "rounds": rounds,
        "memory_load_seconds": load_seconds,
        "samples_per_s": {name: samples[name] / seconds[name] for name in seconds},
        "data_seconds_share": {name: data_seconds[name] / seconds[name] for name in seconds},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=45_000_000)
    parser.add_argument("--shard-rows", type=int, default=3_000_000)
    parser.add_argument("--train-rows", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--chunk-mb", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sharkrec-scale"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument("--child-prepare", nargs=3, metavar=("MODE", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_prepare:
        child_prepare(*args.child_prepare, args.chunk_mb)
        return

    from common import environment, write_results

    args.work.mkdir(parents=True, exist_ok=True)
    shards = args.work / f"log-{args.rows}-{args.shard_rows}-{args.seed}"
    prepared = args.work / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)
    shutil.rmtree(args.work / "baseline-stream", ignore_errors=True)
    have = shutil.disk_usage(args.work).free + sum(p.stat().st_size for p in shards.glob("*.tsv"))
    need = args.rows * (BYTES_PER_TSV_ROW + BYTES_PER_PREPARED_ROW)
    rows = args.rows
    if need > have * 0.9:
        rows = int(have * 0.9 / (BYTES_PER_TSV_ROW + BYTES_PER_PREPARED_ROW)) // args.shard_rows * args.shard_rows
        print(f"disk: {have / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed for {args.rows:,} rows; using {rows:,}")
        shards = args.work / f"log-{rows}-{args.shard_rows}-{args.seed}"
    print(f"writing {rows:,} rows as shards of {args.shard_rows:,} into {shards} ...", flush=True)
    generate_seconds = generate(rows, args.shard_rows, shards, args.seed)
    files = sorted(shards.glob("train-*.tsv"))
    input_bytes = sum(p.stat().st_size for p in files)
    print(f"  {len(files)} shards, {input_bytes / 1e9:.2f} GB in {generate_seconds:.0f} s", flush=True)

    print(f"baseline: in-memory prepare of {files[0].name} ...", flush=True)
    baseline = timed_child(["--chunk-mb", str(args.chunk_mb), "--child-prepare", "memory", str(files[0]), "-"])
    print(f"  {baseline['rows_per_s']:,.0f} rows/s, max RSS {baseline['max_rss_bytes'] / 1e9:.2f} GB", flush=True)
    same_file = timed_child(["--chunk-mb", str(args.chunk_mb), "--child-prepare", "stream", str(files[0]),
                             str(args.work / "baseline-stream")])
    shutil.rmtree(args.work / "baseline-stream", ignore_errors=True)
    print(f"  streaming on the same file: {same_file['rows_per_s']:,.0f} rows/s, max RSS "
          f"{same_file['max_rss_bytes'] / 1e9:.2f} GB", flush=True)

    print(f"streaming prepare of all {rows:,} rows ...", flush=True)
    full = timed_child(["--chunk-mb", str(args.chunk_mb), "--child-prepare", "stream", str(shards), str(prepared)],
                       sample_tree=True)
    peak = max(full["max_rss_bytes"] or 0, full["peak_tree_rss_bytes"])
    print(f"  {full['rows_per_s']:,.0f} rows/s, peak RSS {peak / 1e9:.2f} GB", flush=True)
    output_bytes = sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file())

    print(f"training: {args.train_rows:,}-row subset, mapped vs in memory, alternating ...", flush=True)
    training = train_alternately(prepared, args.train_rows, args.steps, args.rounds, args.seed)
    speeds = training["samples_per_s"]
    print(f"  stream {speeds['stream']:,.0f} samples/s, memory {speeds['memory']:,.0f} samples/s", flush=True)

    payload = {
        "rows": full["rows"],
        "rows_requested": args.rows,
        "peak_rss_bytes": peak,
        "prepare_rows_per_s": full["rows_per_s"],
        "baseline_rows_per_s": baseline["rows_per_s"],
        "stream_train_samples_per_s": speeds["stream"],
        "memory_train_samples_per_s": speeds["memory"],
        "stream_over_memory_train": speeds["stream"] / speeds["memory"],
        "input": {"shards": len(files), "shard_rows": args.shard_rows, "bytes": input_bytes,
                  "generate_seconds": generate_seconds},
        "prepare": {**full, "chunk_mb": args.chunk_mb, "output_bytes": output_bytes},
        "baseline": {"file": files[0].name, "memory": baseline, "stream": same_file},
        "training": training,
        "environment": environment(),
        "load_average_at_end": os.getloadavg(),
    }
    write_results(args.out, payload, markdown(payload))
    print(f"wrote {args.out}")


def markdown(p: dict[str, Any]) -> str:
    base = p["baseline"]
    gb = 1e9
    return "\n".join([
        "# Streaming preparation and training at Criteo Kaggle scale",
        "",
        f"Synthetic Criteo-shaped log, {p['rows']:,} rows in {p['input']['shards']} TSV shards "
        f"({p['input']['bytes'] / gb:.1f} GB); {p['environment']['cpu_count']} CPU cores "
        f"(load average at the end {p['load_average_at_end'][0]:.1f}: the cores were shared).",
        "",
        "| step | rows | rows/s | peak RSS |",
        "|---|---:|---:|---:|",
        f"| in-memory prepare (today), {base['file']} | {base['memory']['rows']:,} | "
        f"{base['memory']['rows_per_s']:,.0f} | {base['memory']['max_rss_bytes'] / gb:.2f} GB |",
        f"| streaming prepare, same file | {base['stream']['rows']:,} | {base['stream']['rows_per_s']:,.0f} | "
        f"{base['stream']['max_rss_bytes'] / gb:.2f} GB |",
        f"| streaming prepare, whole log | {p['rows']:,} | {p['prepare_rows_per_s']:,.0f} | "
        f"{p['peak_rss_bytes'] / gb:.2f} GB (process tree) |",
        "",
        f"Training, {p['training']['train_rows']:,}-row subset, batch {p['training']['batch_size']}, "
        f"{p['training']['steps_each']} steps each, alternating in one process:",
        "",
        "| split | samples/s | data share of step time |",
        "|---|---:|---:|",
        f"| memory-mapped (streaming from the shards) | {p['stream_train_samples_per_s']:,.0f} | "
        f"{p['training']['data_seconds_share']['stream']:.1%} |",
        f"| in memory | {p['memory_train_samples_per_s']:,.0f} | {p['training']['data_seconds_share']['memory']:.1%} |",
        "",
        f"Ratio stream / memory: {p['stream_over_memory_train']:.3f}.",
        "",
    ])


if __name__ == "__main__":
    main()
