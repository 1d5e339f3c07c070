"""Tables sharded across 2 torchrun ranks (TorchRec DMP, gloo, CPU) next to the same run in 1 process.

For ``table_wise`` and ``row_wise`` the driver starts ``torchrun --standalone --nproc_per_node=2`` on this
file (per-rank batch B), then ``--nproc_per_node=1`` (batch 2B: the same global batches, see
``sharkrec.train.sharded``), on the same synthetic Criteo-shaped data and seed. Each run trains one epoch,
scores the validation split with taylor2 on the sharded model, reports the table bytes each rank holds
(bytes of its local shard tensors) and its peak RSS, then F-Quantizes the sharded tables with a global 0.5
budget (``sharkrec.quant.sharded``: tiers decided per shard) and reports each rank's bytes in tiers and the
F-Q model's test AUC, through the DMP shards (decoded rows) and through ``tiered_model`` (each rank looks up
its rows from their tiers only). Then it trains an F-Q model *with* sharded tables (``train_sharded_fq``: Eq. 7
priorities per shard, tiers re-decided under the global 0.5 budget every 100 steps, each rank's rows trained in
their tiers) and reports each rank's bytes in tiers and the test AUC. The driver then scores the 2-rank run's exported
model in this one process (``field_importance``) and compares, and trains sharkrec's ordinary 1-process
model (``train_model``, fp32 tables, batch 2B, same seed) and its ordinary 1-process F-Q training
(``--precision f-quant --memory-budget 0.5``) as AUC references.

    python benchmarks/sharded.py --out benchmarks/results/sharded.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch

from common import environment, write_results


def spec(rows: int) -> str:
    return f"rows={rows},seed=0"


def worker(kind: str, rows: int, batch_size: int, out: str) -> None:
    """One torchrun rank: train with sharded tables, score taylor2; rank 0 writes ``worker.json``."""
    from sharkrec import distributed
    from sharkrec.data.loading import load_data
    from sharkrec.quant.sharded import quantize_sharded, tiered_model
    from sharkrec.train.metrics import task_metrics
    from sharkrec.train.sharded import field_scores, predict, train_sharded
    from sharkrec.train.trainer import TrainConfig

    torch.set_num_threads(1)
    distributed.init_from_env()
    data = load_data("synthetic", spec(rows))
    config = TrainConfig(batch_size=batch_size, epochs=1, lr=0.05, seed=0, progress=False)
    sharded, report = train_sharded(data, config, Path(out) / "model", shard=kind)
    distributed.barrier()
    started = time.perf_counter()
    scores = field_scores(sharded, data.valid, batch_size=1024)
    score_seconds = time.perf_counter() - started
    tiers = quantize_sharded(sharded, data.vocabularies, memory_budget=0.5)  # F-Q in place, global 0.5 budget
    label = data.schema.label_names[0]
    fq_auc = task_metrics(data.test.labels.numpy(), predict(sharded.model, data.test), data.schema.label_names)
    tiered = tiered_model(sharded, tiers)  # lookups from each rank's rows in their tiers (no fp32 copy)
    tiered_auc = task_metrics(data.test.labels.numpy(), predict(tiered, data.test), data.schema.label_names)
    tiered_bytes = [int(t) for t in distributed.all_gather_varsize(
        torch.tensor([tiered.embedding.embedding_bytes()], dtype=torch.int64))]
    from sharkrec.train.sharded_fq import train_sharded_fq

    del sharded, tiered
    fq_sharded, fq_report = train_sharded_fq(data, config, None, shard=kind, policy_options={"memory_budget": 0.5})
    del fq_sharded
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024], dtype=torch.int64)
    rss_per_rank = [int(t) for t in distributed.all_gather_varsize(rss)]
    if distributed.is_main():
        result = {
            "kind": kind, "processes": distributed.world_size(), "batch_per_rank": batch_size,
            "memory": report["memory"], "metrics": report["metrics"], "training": report["training"],
            "export_max_abs_diff": report.get("export_max_abs_diff"),
            "scores": dict(zip(scores.field_names, scores.scores.tolist(), strict=True)),
            "score_seconds": score_seconds, "peak_rss_bytes_per_rank": rss_per_rank,
            "sharding": report["sharding"]["tables"],
            "fq": {**tiers.report(), "test_auc": fq_auc[label]["auc"], "tiered_test_auc": tiered_auc[label]["auc"],
                   "tiered_bytes_per_rank": tiered_bytes},
            "fq_training": {"memory": fq_report["memory"], "metrics": fq_report["metrics"],
                            "training": fq_report["training"],
                            "export_max_abs_diff": fq_report.get("export_max_abs_diff")},
        }
        (Path(out) / "worker.json").write_text(json.dumps(result), encoding="utf-8")


def run(kind: str, processes: int, rows: int, batch_size: int, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               __file__, "--worker", kind, "--rows", str(rows), "--batch-size", str(batch_size),
               "--result", str(folder)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads((folder / "worker.json").read_text(encoding="utf-8"))
    result["wall_seconds"] = time.perf_counter() - started
    return result


def one_process_scores(model_path: Path, rows: int) -> dict[str, float]:
    """taylor2 of the gathered 2-rank model in this one process (sharkrec's ordinary scorer)."""
    from sharkrec.data.loading import load_data
    from sharkrec.importance import field_importance
    from sharkrec.train.checkpoint import load_model

    bundle = load_model(model_path)
    data = load_data("synthetic", spec(rows))
    result = field_importance(bundle.model, data.valid, "taylor2", batch_size=1024)
    return dict(zip(result.field_names, result.scores.tolist(), strict=True))


def plain_auc(rows: int, batch_size: int, precision: str = "fp32") -> float:
    """sharkrec's ordinary 1-process training (``precision`` fp32: FloatEmbedding, sparse row-wise Adagrad; f-quant:
    budget 0.5), same data and seed."""
    from sharkrec.data.loading import load_data
    from sharkrec.train.run import train_model
    from sharkrec.train.trainer import TrainConfig

    data = load_data("synthetic", spec(rows))
    config = TrainConfig(batch_size=batch_size, epochs=1, lr=0.05, seed=0, progress=False)
    options = {"memory_budget": 0.5} if precision == "f-quant" else None
    _, report = train_model(data, config, precision=precision, precision_options=options)
    return float(report["metrics"]["test"][data.schema.label_names[0]]["auc"])


def markdown(payload: dict) -> str:
    lines = [
        "# Sharded tables: 2 torchrun ranks vs 1 process (TorchRec DMP, gloo, CPU)",
        "",
        f"synthetic `{payload['spec']}`, one epoch, per-rank batch {payload['batch_size']} (1 process: "
        f"{2 * payload['batch_size']}); plain sharkrec 1-process test AUC {payload['plain_test_auc']:.4f}",
        "",
        "| shard | table bytes | rank 0 holds | rank 1 holds | max share | test AUC (2 ranks) | test AUC (1 process) "
        "| taylor2 max diff: 1-process scorer on the export | taylor2 max diff: 1-process run | export max diff "
        "| train samples/s (2 ranks / 1 process) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in payload["results"]:
        two, one = row["two_ranks"], row["one_process"]
        held = two["memory"]["embedding_bytes_per_rank"]
        lines.append(
            f"| {row['kind']} | {two['memory']['embedding_bytes_fp32']:,} | {held[0]:,} | {held[1]:,} | "
            f"{max(two['memory']['share_per_rank']):.3f} | {row['test_auc_two_ranks']:.4f} | "
            f"{row['test_auc_one_process']:.4f} | {row['max_score_diff']:.1e} | "
            f"{row['max_score_diff_vs_one_process_run']:.1e} | {two['export_max_abs_diff']:.1e} | "
            f"{two['training']['samples_per_second']:,.0f} / {one['training']['samples_per_second']:,.0f} |"
        )
    lines += [
        "",
        "F-Quantization of the trained sharded tables, global budget 0.5 (tiers decided per shard, round to nearest):",
        "",
        "| shard | rows fp32 / fp16 / int8 | rank 0 bytes | rank 1 bytes | share of fp32 (all ranks) "
        "| F-Q test AUC (2 ranks, DMP decoded rows / lookups from the tiers) | F-Q test AUC (1 process) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in payload["results"]:
        fq, fq_one = row["two_ranks"]["fq"], row["one_process"]["fq"]
        lines.append(
            f"| {row['kind']} | {' / '.join(f'{c:,}' for c in fq['tier_counts'])} | {fq['bytes_per_rank'][0]:,} | "
            f"{fq['bytes_per_rank'][1]:,} | {fq['share_of_fp32']:.3f} | {fq['test_auc']:.4f} / "
            f"{fq['tiered_test_auc']:.4f} | "
            f"{fq_one['test_auc']:.4f} |"
        )
    lines += [
        "",
        f"F-Quantization *during training* on the sharded tables (`--precision f-quant --memory-budget 0.5`, re-tiered "
        f"every 100 steps); plain sharkrec 1-process F-Q test AUC {payload['plain_fq_test_auc']:.4f}:",
        "",
        "| shard | tier rows fp32 / fp16 / int8 | rank 0 bytes | rank 1 bytes | max rank share of 1-process F-Q bytes "
        "| share of fp32 | rows moved | test AUC (2 ranks) | test AUC (1 process) | export max diff "
        "| train samples/s (2 ranks / 1 process) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in payload["results"]:
        two, one = row["two_ranks"]["fq_training"], row["one_process"]["fq_training"]
        held, label = two["memory"]["embedding_bytes_per_rank"], next(iter(two["metrics"]["test"]))
        lines.append(
            f"| {row['kind']} | {' / '.join(f'{c:,}' for c in two['memory']['tier_counts'])} | {held[0]:,} | "
            f"{held[1]:,} | {max(held) / one['memory']['embedding_bytes']:.3f} | {two['memory']['share_of_fp32']:.3f} "
            f"| {two['memory']['rows_moved']:,} | {two['metrics']['test'][label]['auc']:.4f} | "
            f"{one['metrics']['test'][label]['auc']:.4f} | {two['export_max_abs_diff']:.1e} | "
            f"{two['training']['samples_per_second']:,.0f} / {one['training']['samples_per_second']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/sharded.json")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--kinds", default="table_wise,row_wise")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rows, args.batch_size, args.result)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            two = run(kind, 2, args.rows, args.batch_size, Path(tmp) / f"{kind}-2")
            one = run(kind, 1, args.rows, 2 * args.batch_size, Path(tmp) / f"{kind}-1")
            single = one_process_scores(Path(tmp) / f"{kind}-2" / "model" / "model.pt", args.rows)
            label = next(iter(two["metrics"]["test"]))
            results.append({
                "kind": kind, "two_ranks": two, "one_process": one, "one_process_scores_of_export": single,
                "max_score_diff": max(abs(two["scores"][k] - v) for k, v in single.items()),
                "max_score_diff_vs_one_process_run": max(abs(two["scores"][k] - v) for k, v in one["scores"].items()),
                "test_auc_two_ranks": two["metrics"]["test"][label]["auc"],
                "test_auc_one_process": one["metrics"]["test"][label]["auc"],
                "max_share_per_rank": max(two["memory"]["share_per_rank"]),
            })
    payload = {
        "benchmark": "sharded", "environment": environment(), "spec": spec(args.rows), "batch_size": args.batch_size,
        "plain_test_auc": plain_auc(args.rows, 2 * args.batch_size),
        "plain_fq_test_auc": plain_auc(args.rows, 2 * args.batch_size, "f-quant"), "results": results,
        "load_average": os.getloadavg()[0],
    }
    assert all(np.isfinite(r["max_score_diff"]) for r in results)
    write_results(args.out, payload, markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
