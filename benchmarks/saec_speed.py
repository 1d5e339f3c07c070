"""Saec's fast clustering against full k-means on one field with ≥ 1M Zipf-distributed values.

No model is trained: the field's rows are synthetic with cluster structure, so the error comparison
means something. ``--true-clusters`` centres are drawn from N(0, I_D); every value picks a centre at
random and its row is that centre plus N(0, noise² I_D). Value frequencies follow a Zipf law
(occurrences of the r-th hottest value ∝ r^-s, scaled to ``--occurrences``). Both methods cluster
the same rows into ``--clusters`` clusters with the same seeded initialisation rule, ``max_iter`` and
``tol``, side by side in one process, on one thread:

* full: frequency-weighted k-means (Lloyd) on all values;
* fast (Saec): the same k-means on the head covering each of ``--head-shares`` of the occurrences,
  then one nearest-centroid pass over the tail (full k-means runs once per field and seed).

Reported: seconds, iterations, head size, and the frequency-weighted within-cluster error
Σ w‖x − row‖² (each method's rows are the weighted means of their members) — the fast/full ratios.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/saec_speed.py --out benchmarks/results/saec_speed.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch

from common import environment, write_results
from sharkrec.cluster.kmeans import kmeans, weighted_error


def field(values: int, dim: int, true_clusters: int, noise: float, exponent: float, occurrences: float,
          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (V, D) with cluster structure and Zipf weights (V,), hottest value first."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(true_clusters, dim, generator=generator)
    owner = torch.randint(0, true_clusters, (values,), generator=generator)
    rows = centres[owner] + noise * torch.randn(values, dim, generator=generator)
    ranks = torch.arange(1, values + 1, dtype=torch.float64)
    weights = ranks.pow(-exponent)
    weights = torch.ceil(weights / weights.sum() * occurrences)  # whole occurrences, every value seen once
    return rows, weights


def cluster(rows: torch.Tensor, weights: torch.Tensor, share: float, seed: int, args: argparse.Namespace
            ) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), time.process_time()
    result = kmeans(rows, weights, args.clusters, head_share=share, max_iter=args.max_iter, tol=args.tol, seed=seed)
    wall = time.perf_counter() - started
    seconds = time.process_time() - cpu_started  # CPU seconds: the machine is shared, wall time swings 2-4x
    error = weighted_error(rows, weights, result.assignment, result.rows)
    print(f"  head share {share}: {seconds:.1f} CPU s ({wall:.1f} s wall), {result.iterations} iterations, "
          f"head {result.head_size:,}, "
          f"weighted error {error:.4e}", flush=True)
    return {"head_share": share, "seconds": seconds, "wall_seconds": wall, "iterations": result.iterations,
            "head_size": result.head_size,
            "weighted_error": error, "clusters_used": int(torch.unique(result.assignment).numel())}


def run(args: argparse.Namespace, exponent: float, seed: int) -> dict[str, Any]:
    """Full k-means once, then the fast clustering at every head share, on the same field."""
    rows, weights = field(args.values, args.dim, args.true_clusters, args.noise, exponent, args.occurrences, seed)
    print(f"Zipf s={exponent}, seed {seed}", flush=True)
    fast = [cluster(rows, weights, share, seed, args) for share in args.head_shares]
    full = cluster(rows, weights, 1.0, seed, args)
    for entry in fast:
        entry["speedup"] = full["seconds"] / entry["seconds"]
        entry["speedup_wall"] = full["wall_seconds"] / entry["wall_seconds"]
        entry["error_ratio"] = entry["weighted_error"] / full["weighted_error"]
    return {"zipf_exponent": exponent, "seed": seed, "occurrences": float(weights.sum()), "full": full, "fast": fast}


def summary(runs: list[dict[str, Any]], shares: list[float]) -> dict[str, Any]:
    out = {}
    for k, share in enumerate(shares):
        speedups = [r["fast"][k]["speedup"] for r in runs]
        ratios = [r["fast"][k]["error_ratio"] for r in runs]
        out[str(share)] = {"speedup_mean": float(np.mean(speedups)), "speedup_min": float(np.min(speedups)),
                           "error_ratio_mean": float(np.mean(ratios)), "error_ratio_max": float(np.max(ratios)),
                           "head_size_mean": float(np.mean([r["fast"][k]["head_size"] for r in runs]))}
    return out


def markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    lines = [f"# Saec fast clustering vs full k-means: {s['values']:,} values, D = {s['dim']}, "
             f"{s['clusters']:,} clusters", "",
             "| Zipf s | seed | head share | head values | fast CPU s | full CPU s | speed-up (CPU) | "
             "fast / full iterations | "
             "weighted error fast / full |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in payload["runs"]:
        for f in r["fast"]:
            lines.append(f"| {r['zipf_exponent']} | {r['seed']} | {f['head_share']} | {f['head_size']:,} | "
                         f"{f['seconds']:.1f} | {r['full']['seconds']:.1f} | {f['speedup']:.1f}x | "
                         f"{f['iterations']} / {r['full']['iterations']} | {f['error_ratio']:.4f} |")
    lines += ["", "| head share | mean speed-up | mean error ratio | worst error ratio |", "|---:|---:|---:|---:|"]
    for share, row in payload["summary"].items():
        lines.append(f"| {share} | {row['speedup_mean']:.1f}x | {row['error_ratio_mean']:.4f} | "
                     f"{row['error_ratio_max']:.4f} |")
    lines += ["", f"Rows: {s['true_clusters']:,} true centres ~ N(0, I), row = centre + N(0, {s['noise']}² I); "
              f"frequencies Zipf(s), {s['occurrences']:.0e} occurrences (every value at least once). Fast = weighted "
              "k-means on the head covering the head share of occurrences + one nearest-centroid pass for the "
              f"tail; full = weighted k-means on all values; both weighted k-means++ start, max_iter "
              f"{s['max_iter']}, tol {s['tol']}, one thread, side by side in one process on a shared 2-core "
              "machine; times are the process's CPU seconds (wall time, in the JSON, swings with "
              "the other jobs). Error = Σ w‖x − row‖² with each method's weighted-mean rows. Generated by "
              "benchmarks/saec_speed.py.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--clusters", type=int, default=1024)
    parser.add_argument("--true-clusters", type=int, default=1024)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--exponents", nargs="+", type=float, default=[1.2])
    parser.add_argument("--occurrences", type=float, default=1e8)
    parser.add_argument("--head-shares", nargs="+", type=float, default=[0.9, 0.95])
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/saec_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs: list[dict[str, Any]] = []
    for exponent in args.exponents:
        for seed in args.seeds:
            runs.append(run(args, exponent, seed))
            payload = {"benchmark": "saec_speed", "environment": environment(), "settings": vars(args), "runs": runs,
                       "summary": summary(runs, args.head_shares)}
            write_results(Path(args.out), payload, markdown(payload))  # after every run: partial results
    print(payload["summary"])


if __name__ == "__main__":
    main()
