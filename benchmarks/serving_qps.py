"""Serving throughput: fp32 model vs. the compressed artifact vs. int8 everywhere, side by side in one process.

    python benchmarks/serving_qps.py --fields 26 --rows 400000 --dim 64 --out benchmarks/results/serving_qps.json
    python benchmarks/serving_qps.py --tiny          # smoke run (seconds)

Models are random (no training: throughput does not depend on the weights). Ids are Zipf(1.1)
over each field's rows, which the vocabulary numbers hottest-first. The compressed model's tiers
follow frequency with ``--tier-fractions`` (fp32, fp16, int8) of the rows. For each model and
batch size: lookup-stage throughput (samples/s of ``embedding(sparse)``), end-to-end QPS and
p50 / p99 latency of ``predict_proba``, and resident embedding bytes. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.vocab import Vocabulary
from sharkrec.export import load_artifact, save_artifact
from sharkrec.model.dlrm import DLRM, DLRMConfig
from sharkrec.quant import MixedPrecisionEmbedding, Precision


def build(args: argparse.Namespace) -> tuple[DLRM, Schema, dict[str, Vocabulary], np.ndarray]:
    names = [f"C{i + 1}" for i in range(args.fields)]
    config = DLRMConfig(num_dense=args.dense, field_rows=tuple((n, args.rows) for n in names), embedding_dim=args.dim,
                        bottom_mlp=(args.dim,), top_mlp=tuple(args.top_mlp))
    torch.manual_seed(0)
    model = DLRM(config).eval()
    probabilities = 1.0 / np.arange(1, args.rows + 1) ** args.zipf
    probabilities /= probabilities.sum()
    counts = np.maximum((probabilities * 1e7).astype(np.int64), 1)
    vocabularies = {n: Vocabulary.identity(n, counts, np.zeros(args.rows, np.int64)) for n in names}
    fields = [FieldSpec("label", FieldKind.LABEL), *(FieldSpec(f"I{j}", FieldKind.DENSE) for j in range(args.dense)),
              *(FieldSpec(n, FieldKind.SPARSE) for n in names)]
    return model, Schema(tuple(fields), name="bench"), vocabularies, probabilities


def tier_plan(model: DLRM, fractions: tuple[float, float, float]) -> dict[str, torch.Tensor]:
    rows = model.config.field_rows[0][1]
    n32, n16 = int(rows * fractions[0]), int(rows * fractions[1])
    codes = torch.full((rows,), Precision.INT8.code, dtype=torch.int8)
    codes[:n32] = Precision.FP32.code
    codes[n32:n32 + n16] = Precision.FP16.code
    return {name: codes for name in model.embedding.field_names}


def batches(args: argparse.Namespace, probabilities: np.ndarray, size: int, count: int) -> list[Batch]:
    rng = np.random.default_rng(size)
    out = []
    for _ in range(count):
        ids = rng.choice(len(probabilities), size=(args.fields, size), p=probabilities)
        sparse = tuple(FieldIds(torch.from_numpy(ids[f])) for f in range(args.fields))
        out.append(Batch(torch.randn(size, args.dense), sparse, torch.zeros(size, 1)))
    return out


def to_slots(served: Any, batch: Batch) -> Batch:
    """Row ids → raw keys (identity: row r is key r, row 0 unknown) → slots, outside the timed loop."""
    sparse = []
    for name, ids in zip(served.schema.sparse_names, batch.sparse, strict=True):
        raw = np.where(ids.values.numpy() == 0, -1, ids.values.numpy())
        sparse.append(FieldIds(torch.from_numpy(served.vocabularies[name].slots(raw))))
    return Batch(batch.dense, tuple(sparse), batch.labels)


def measure(fn: Any, inputs: list[Any], repeats: int) -> dict[str, float]:
    with torch.inference_mode():
        fn(inputs[0])  # warm-up
        times = []
        for _ in range(repeats):
            for item in inputs:
                start = time.perf_counter()
                fn(item)
                times.append(time.perf_counter() - start)
    seconds = np.asarray(times)
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3),
            "mean_s": float(seconds.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--rows", type=int, default=400_000, help="rows per field")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dense", type=int, default=13)
    parser.add_argument("--top-mlp", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--tier-fractions", type=float, nargs=3, default=[0.05, 0.15, 0.80])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512, 4096])
    parser.add_argument("--batches", type=int, default=8, help="distinct batches per size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="smoke run: 4 fields x 1000 rows, dim 8")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving_qps.json"))
    args = parser.parse_args()
    if args.tiny:
        args.fields, args.rows, args.dim, args.dense, args.top_mlp = 4, 1000, 8, 2, [16]
        args.batch_sizes, args.batches, args.repeats = [1, 64], 2, 1
    torch.set_num_threads(args.threads)
    model, schema, vocabularies, probabilities = build(args)
    fractions = tuple(args.tier_fractions)
    models: dict[str, Any] = {"fp32": model}
    with tempfile.TemporaryDirectory() as scratch:
        for name, plan in (("compressed", tier_plan(model, fractions)), ("int8", Precision.INT8)):
            embedding = MixedPrecisionEmbedding.from_float(model.embedding, plan)
            save_artifact(model.with_embedding(embedding), schema, vocabularies, Path(scratch) / name)
            models[name] = load_artifact(Path(scratch) / name)
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "machine": {"cpu": platform.processor(), "cores": os.cpu_count()}, "models": {}}
    for name, served in models.items():
        embedding = served.embedding
        entry: dict[str, Any] = {"embedding_bytes": int(embedding.embedding_bytes()), "batch": {}}
        for size in args.batch_sizes:
            raw = batches(args, probabilities, size, args.batches)
            inputs = raw if name == "fp32" else [to_slots(served, b) for b in raw]
            lookup = measure(lambda b, e=embedding: e(b.sparse), inputs, args.repeats)
            end_to_end = measure(lambda b, m=served: m(b), inputs, args.repeats)
            entry["batch"][str(size)] = {
                "lookup_samples_per_s": size / lookup["mean_s"], "qps": size / end_to_end["mean_s"],
                "p50_ms": end_to_end["p50_ms"], "p99_ms": end_to_end["p99_ms"],
                "lookup_share": lookup["mean_s"] / end_to_end["mean_s"],
            }
        results["models"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for name, entry in results["models"].items():
        for size, row in entry["batch"].items():
            print(f"{name:10s} batch {size:>5s}  lookup {row['lookup_samples_per_s']:12.0f}/s  qps {row['qps']:12.0f}  "
                  f"p99 {row['p99_ms']:.3f} ms  bytes {entry['embedding_bytes']}")


if __name__ == "__main__":
    main()
