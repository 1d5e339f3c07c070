"""Serving throughput, side by side in one process: the fp32 model, the compressed model, int8 everywhere.

    python benchmarks/serving_qps.py --scenario large        # 26 fields x 400k rows (10.4M), dim 64, MLP 256-128
    python benchmarks/serving_qps.py --scenario preranking   # 100 fields x 60k rows, dim 32, concat, MLP 64-32
    python benchmarks/serving_qps.py --scenario real         # frappe, movielens: trained fp32 and F-Q models
    python benchmarks/serving_qps.py --scenario tiny         # smoke run (seconds)

Models (all on 1 thread, the same batches, interleaved in rounds, medians over rounds):

- ``fp32``: the trained-format DLRM (one ``F.embedding`` per field), ids = vocabulary rows;
- ``fp32-engine``: the same fp32 tables through the serving engine (layout gain alone);
- ``compressed``: tier-ordered slots read by the fused kernel (synthetic: tiers by frequency with
  ``--tiers`` fractions fp32/fp16/int8/int4 of the rows; real: the F-Quantization model);
- ``int8-fbgemm``: every row int8 through torch's quantized EmbeddingBag op
  (``quantized::embedding_bag_byte_rowwise_offsets``), one op per field;
- ``qr-10x``, ``robe-10x``, ``hybrid-10x``, ``mixed_dim-10x`` (synthetic; ``--hashed``, ``--hashed-ratio``):
  the hashed layers of :mod:`sharkrec.hashed` at 1/10 of the fp32 bytes (untrained, seed 0; hybrid's hot
  set and mixed dims' blocks from the Zipf counts), served as an artifact serves them (the rebuilt layer
  computes each row from the slot = vocabulary row). Their "bytes moved" counts one fp32 row per id, a lower
  bound (QR reads two rows, mixed dims a projection too).

Per model and batch size: lookup-stage samples/s (``embedding(sparse)``), end-to-end QPS and p50 /
p99 latency of the forward pass, the lookup share of end-to-end time, the bytes a lookup moves
(stored row bytes read + (B, F, D) float32 written) against a measured copy bandwidth, and resident
embedding bytes. Synthetic models are random (throughput does not depend on the weights); ids are
Zipf(``--zipf``) per field, hottest rows first as the vocabulary numbers them. Writes
``benchmarks/results/serving_qps_<scenario>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import environment, write_results
from sharkrec.data.batch import Batch, FieldIds
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import ConfigError
from sharkrec.export.artifact import serving_model
from sharkrec.export.engine import ServingModel
from sharkrec.hashed import hashed_model
from sharkrec.model.dlrm import DLRM, DLRMConfig
from sharkrec.quant import MixedPrecisionEmbedding, Precision

SCENARIOS: dict[str, dict[str, Any]] = {
    "large": {"fields": 26, "rows": 400_000, "dim": 64, "top_mlp": [256, 128], "interaction": "dot"},
    "preranking": {"fields": 100, "rows": 60_000, "dim": 32, "top_mlp": [64, 32], "interaction": "concat"},
    "tiny": {"fields": 4, "rows": 1000, "dim": 8, "top_mlp": [16], "interaction": "dot"},
}
#: stored bytes of one row of dim d in the fused pools (int8 / int4: a float32 scale word, then the codes)
ROW_BYTES = {"fp32": lambda d: 4 * d, "fp16": lambda d: 2 * d, "int8": lambda d: 4 + d,
             "int4": lambda d: 4 + (d + 1) // 2}


def copy_bandwidth(megabytes: int = 512) -> float:
    """Bytes/s of a large tensor copy (read + write counted), best of 5."""
    source = torch.ones(megabytes * 2**18)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best


def synthetic(spec: dict[str, Any], zipf: float) -> tuple[DLRM, Schema, dict[str, Vocabulary], np.ndarray]:
    names = [f"C{i + 1}" for i in range(spec["fields"])]
    rows, dim = spec["rows"], spec["dim"]
    config = DLRMConfig(num_dense=13, field_rows=tuple((n, rows) for n in names), embedding_dim=dim,
                        bottom_mlp=(dim,), top_mlp=tuple(spec["top_mlp"]), interaction=spec["interaction"])
    torch.manual_seed(0)
    model = DLRM(config).eval()
    probabilities = 1.0 / np.arange(1, rows + 1) ** zipf
    probabilities /= probabilities.sum()
    counts = np.maximum((probabilities * 1e9).astype(np.int64), 1)
    vocabularies = {n: Vocabulary.identity(n, counts, np.zeros(rows, np.int64)) for n in names}
    fields = [FieldSpec("label", FieldKind.LABEL), *(FieldSpec(f"I{j}", FieldKind.DENSE) for j in range(13)),
              *(FieldSpec(n, FieldKind.SPARSE) for n in names)]
    return model, Schema(tuple(fields), name="bench"), vocabularies, probabilities


def frequency_tiers(model: DLRM, fractions: list[float]) -> dict[str, torch.Tensor]:
    """Per field: the hottest rows fp32, then fp16, int8, int4 by ``fractions`` of the rows (ids are hottest first)."""
    plan = {}
    for name, rows in model.config.field_rows:
        codes = torch.full((rows,), Precision.INT4.code, dtype=torch.int8)
        start = 0
        for tier, fraction in zip((Precision.FP32, Precision.FP16, Precision.INT8), fractions[:3], strict=True):
            count = round(rows * fraction)
            codes[start:start + count] = tier.code
            start += count
        plan[name] = codes
    return plan


def synthetic_batches(model: DLRM, probabilities: np.ndarray, size: int, count: int) -> list[Batch]:
    rng = np.random.default_rng(size)
    fields = len(model.config.field_rows)
    out = []
    for _ in range(count):
        ids = rng.choice(len(probabilities), size=(fields, size), p=probabilities)
        sparse = tuple(FieldIds(torch.from_numpy(ids[f])) for f in range(fields))
        out.append(Batch(torch.randn(size, model.config.num_dense), sparse, torch.zeros(size, 1)))
    return out


def to_slots(served: ServingModel, batch: Batch, vocabularies: dict[str, Vocabulary]) -> Batch:
    """Vocabulary rows → raw keys → the artifact's slots (done upstream of serving, outside the timed loop)."""
    sparse = []
    for name, ids in zip(served.schema.sparse_names, batch.sparse, strict=True):
        if name not in served.vocabularies:  # a pruned field: never read
            sparse.append(ids)
            continue
        keys = np.asarray(vocabularies[name].keys_)
        rows = ids.values.numpy()
        unseen = keys.max() + 1 if keys.dtype.kind in "iu" else "\x00unseen"
        raw = np.where(rows == 0, unseen, keys[np.maximum(rows - 1, 0)])
        sparse.append(FieldIds(torch.from_numpy(served.vocabularies[name].slots(raw)), ids.offsets))
    return Batch(batch.dense, tuple(sparse), batch.labels)


def bytes_moved(model: Any, batch: Batch) -> int:
    """Stored bytes of every row a lookup reads plus the (B, F, D) float32 it writes."""
    dim = model.embedding.embedding_dim
    out = batch.dense.shape[0] * len(batch.sparse) * dim * 4
    embedding = model.embedding
    packed = getattr(embedding, "_packed", None)
    if packed is not None and packed.names:
        slots = torch.stack([batch.sparse[p].values for p in embedding._packed_positions.tolist()], dim=1)
        tier = (slots.unsqueeze(2) >= packed.ends[:, :3].unsqueeze(0)).sum(2)
        per_tier = torch.tensor([ROW_BYTES[t](dim) for t in ("fp32", "fp16", "int8", "int4")])
        return out + int(per_tier[tier].sum())
    if getattr(embedding, "layer", None) is not None:  # a hashed layer: one fp32 row per id (a lower bound)
        return out + sum(ids.values.numel() for ids in batch.sparse) * 4 * dim
    if getattr(embedding, "kernel", "") == "fbgemm":  # int8 everywhere, FBGEMM rows: D codes + scale + bias
        return out + sum(ids.values.numel() for ids in batch.sparse) * (dim + 8)
    return out + sum(ids.values.numel() for ids in batch.sparse) * 4 * dim


def measure(models: dict[str, Any], inputs: dict[str, list[Batch]], size: int, rounds: int) -> dict[str, Any]:
    """Per model: median per-call seconds of the lookup and of the forward pass, and all forward latencies."""
    lookup: dict[str, list[float]] = {name: [] for name in models}
    forward: dict[str, list[float]] = {name: [] for name in models}
    latencies: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for name in names:  # warm-up
            models[name](inputs[name][0])
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
                model, batches = models[name], inputs[name]
                start = time.perf_counter()
                for batch in batches:
                    model.embedding(batch.sparse)
                lookup[name].append((time.perf_counter() - start) / len(batches))
                start = time.perf_counter()
                for batch in batches:
                    tick = time.perf_counter()
                    model(batch)
                    latencies[name].append(time.perf_counter() - tick)
                forward[name].append((time.perf_counter() - start) / len(batches))
    out = {}
    for name in names:
        lookup_s, forward_s = float(np.median(lookup[name])), float(np.median(forward[name]))
        out[name] = {"lookup_s": lookup_s, "forward_s": forward_s, "lookup_samples_per_s": size / lookup_s,
                     "qps": size / forward_s, "p50_ms": float(np.percentile(latencies[name], 50) * 1e3),
                     "p99_ms": float(np.percentile(latencies[name], 99) * 1e3), "lookup_share": lookup_s / forward_s}
    return out


def run_models(models: dict[str, Any], make_batches: Any, sizes: list[int], rounds: int, bandwidth: float,
               reference: str = "fp32") -> dict[str, Any]:
    results: dict[str, Any] = {"models": {}, "batch": {}}
    for name, model in models.items():
        embedding = model.embedding
        results["models"][name] = {"embedding_bytes": int(embedding.embedding_bytes()),
                                   "backend": getattr(embedding, "backend", "pytorch fp32")}
    base = results["models"][reference]["embedding_bytes"]
    for entry in results["models"].values():
        entry["bytes_vs_fp32"] = entry["embedding_bytes"] / base
    for size in sizes:
        count = max(4, min(64, 16384 // size))
        _, inputs = make_batches(size, count)
        timed = measure(models, inputs, size, rounds)
        for name, row in timed.items():
            moved = float(np.mean([bytes_moved(models[name], b) for b in inputs[name]]))
            row["bytes_moved"] = moved
            row["bytes_limit_s"] = moved / bandwidth
            row["fraction_of_bandwidth_limit"] = row["bytes_limit_s"] / row["lookup_s"]
            row["lookup_vs_fp32"] = timed[reference]["lookup_s"] / row["lookup_s"]
            row["qps_vs_fp32"] = row["qps"] / timed[reference]["qps"]
        results["batch"][str(size)] = timed
        print(f"batch {size}: " + "  ".join(f"{n} lookup x{r['lookup_vs_fp32']:.2f} qps x{r['qps_vs_fp32']:.2f} "
                                             f"share {r['lookup_share']:.2f}" for n, r in timed.items()), flush=True)
    return results


def synthetic_scenario(args: argparse.Namespace) -> dict[str, Any]:
    spec = dict(SCENARIOS[args.scenario])
    if args.rows:
        spec["rows"] = args.rows
    model, schema, vocabularies, probabilities = synthetic(spec, args.zipf)
    models: dict[str, Any] = {"fp32": model}
    if not args.skip_fp32_engine:
        models["fp32-engine"] = serving_model(model, schema, vocabularies)
        gc.collect()
    compressed = MixedPrecisionEmbedding.from_float(model.embedding, frequency_tiers(model, args.tiers))
    models["compressed"] = serving_model(model.with_embedding(compressed), schema, vocabularies)
    del compressed
    gc.collect()
    int8 = MixedPrecisionEmbedding.from_float(model.embedding, Precision.INT8)
    models["int8-fbgemm"] = serving_model(model.with_embedding(int8), schema, vocabularies, kernel="fbgemm")
    del int8
    gc.collect()
    counts = {n: torch.from_numpy(np.asarray(v.counts_, dtype=np.float64)) for n, v in vocabularies.items()}
    skipped = {}
    for kind in args.hashed:
        try:
            small = hashed_model(model, kind, model.embedding.embedding_bytes() // args.hashed_ratio,
                                 frequencies=counts)
        except ConfigError as exc:  # the budget is below the kind's floor at this scale
            skipped[kind] = str(exc)
            print(f"{kind}: skipped ({exc})", flush=True)
            continue
        models[f"{kind}-{args.hashed_ratio}x"] = serving_model(small.eval(), schema, vocabularies)
        del small
        gc.collect()

    def make_batches(size: int, count: int) -> tuple[list[Batch], dict[str, list[Batch]]]:
        raw = synthetic_batches(model, probabilities, size, count)
        return raw, {name: raw if name == "fp32" else [to_slots(m, b, vocabularies) for b in raw]
                     for name, m in models.items()}

    bandwidth = copy_bandwidth()
    results = run_models(models, make_batches, args.batch_sizes, args.rounds, bandwidth)
    results.update(spec=spec, rows_total=spec["fields"] * spec["rows"], tiers=args.tiers, zipf=args.zipf,
                   copy_bandwidth_gb_s=bandwidth / 1e9, hashed_ratio=args.hashed_ratio, hashed_skipped=skipped)
    return {args.scenario: results}


def real_scenario(args: argparse.Namespace) -> dict[str, Any]:
    """Frappe and MovieLens: an fp32 and an F-Quantization (int4 allowed, 30% budget) model, trained here."""
    from sharkrec.data.loading import load_data
    from sharkrec.train.metrics import roc_auc
    from sharkrec.train.run import train_model
    from sharkrec.train.trainer import TrainConfig

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    datasets = {"frappe": ("libfm", shared / "frappe-x1-valid" / "frappe.validation.libfm.gz"),
                "movielens": ("movielens", shared / "movielens-100k")}
    out = {}
    for name, (fmt, path) in datasets.items():
        data = load_data(fmt, path)
        config = TrainConfig(optimizer="adagrad", lr=0.05, embedding_l2=1e-2, epochs=30, patience=3,
                             stop_metric="logloss", eval_every=max(1, data.train.num_batches(512) // 2), seed=0,
                             progress=False)
        fp32, fp32_report = train_model(data, config, model_options={"embedding_dim": 16})
        fq, fq_report = train_model(data, config, model_options={"embedding_dim": 16}, precision="f-quant",
                            precision_options={"memory_budget": 0.3, "use_int4": True, "beta": 0.01,
                                               "recheck_every": 50})
        fp32.eval(), fq.eval()
        models: dict[str, Any] = {"fp32": fp32, "fp32-engine": serving_model(fp32, data.schema, data.vocabularies),
                                  "compressed": serving_model(fq, data.schema, data.vocabularies)}
        int8 = MixedPrecisionEmbedding.from_float(fp32.embedding, Precision.INT8)
        models["int8-fbgemm"] = serving_model(fp32.with_embedding(int8), data.schema, data.vocabularies,
                                              kernel="fbgemm")
        test = list(data.test.batches(4096))
        with torch.inference_mode():
            served = torch.cat([models["compressed"].predict_proba(to_slots(models["compressed"], b,
                                                                            data.vocabularies)) for b in test])
            in_memory = torch.cat([fq.predict_proba(b) for b in test])
        labels = torch.cat([b.labels for b in test]).numpy()[:, 0]
        auc = {label: next(iter(report["metrics"]["test"].values()))["auc"] for label, report in
               (("fp32", fp32_report), ("compressed", fq_report))}
        auc["compressed-served"] = roc_auc(labels, served.numpy()[:, 0])

        def make_batches(size: int, count: int, data: Any = data, models: dict[str, Any] = models
                         ) -> tuple[list[Batch], dict[str, list[Batch]]]:
            raw = [b for _, b in zip(range(count), data.test.batches(size, shuffle=True, seed=size), strict=False)]
            raw = [b for b in raw if b.dense.shape[0] == size] or raw
            return raw, {n: raw if n == "fp32" else [to_slots(m, b, data.vocabularies) for b in raw]
                         for n, m in models.items()}

        results = run_models(models, make_batches, args.batch_sizes, args.rounds, copy_bandwidth(256))
        results.update(test_auc=auc, served_vs_in_memory_max_abs_diff=float((served - in_memory).abs().max()),
                       rows_total=sum(r for _, r in fp32.config.field_rows))
        out[name] = results
        print(name, {k: round(v, 4) for k, v in auc.items()}, "served - in-memory max |diff|",
              results["served_vs_in_memory_max_abs_diff"], flush=True)
    return out


def markdown(payload: dict[str, Any]) -> str:
    lines = [f"Load average at start {payload['load_average'][0]:.2f}; 1 thread; medians over "
             f"{payload['config']['rounds']} interleaved rounds. lookup / qps columns: x the fp32 model.", "",
             "| model set | batch | model | bytes / fp32 | lookup samples/s | lookup x | QPS | QPS x | p50 ms | p99 ms "
             "| lookup share | of bytes-moved limit |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario, results in payload["results"].items():
        for size, timed in results["batch"].items():
            for name, row in timed.items():
                lines.append(f"| {scenario} | {size} | {name} | {results['models'][name]['bytes_vs_fp32']:.3f} | "
                             f"{row['lookup_samples_per_s']:,.0f} | {row['lookup_vs_fp32']:.2f} | {row['qps']:,.0f} | "
                             f"{row['qps_vs_fp32']:.2f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                             f"{row['lookup_share']:.2f} | {row['fraction_of_bandwidth_limit']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "real"], default="large")
    parser.add_argument("--rows", type=int, default=0, help="rows per field (overrides the scenario)")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--tiers", type=float, nargs=3, default=[0.01, 0.04, 0.75],
                        help="fractions of rows in fp32, fp16, int8 (the rest int4), hottest first")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512, 4096])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-fp32-engine", action="store_true", help="save memory on huge models")
    parser.add_argument("--hashed", nargs="*", default=["qr", "robe", "hybrid", "mixed_dim"],
                        help="hashed layers to serve next to fp32 (synthetic scenarios; none: --hashed)")
    parser.add_argument("--hashed-ratio", type=int, default=10, help="fp32 bytes / hashed layer bytes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.scenario == "tiny":
        args.batch_sizes, args.rounds = [1, 64], 2
    torch.set_num_threads(1)
    load = os.getloadavg()
    started = time.perf_counter()
    results = real_scenario(args) if args.scenario == "real" else synthetic_scenario(args)
    payload = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "environment": environment(), "load_average": list(load), "load_average_end": list(os.getloadavg()),
               "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "seconds": time.perf_counter() - started, "results": results}
    out = args.out or Path(__file__).parent / "results" / f"serving_qps_{args.scenario}.json"
    write_results(out, payload, markdown(payload))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
