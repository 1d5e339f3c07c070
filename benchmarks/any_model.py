"""Every stage on user-written models (DeepFM, DCN-v2 from benchmarks/user_models.py) over real data, and the
cost of the field path against sharkrec's own DLRM.

Per model x dataset x seed:

1. load the data with sharkrec's reader (``load_data``: Frappe's libFM file, MovieLens-100k's files) and turn
   each encoded batch into the user model's inputs (``Layout.inputs``: ids (B, S), bag values + offsets);
2. train the user's model in a plain loop (Adam, BCE, early stop on validation AUC);
3. wrap it (``find_fields`` + ``FieldModel.wrap``) and collect its splits with ``from_batches``;
4. ``spearman_vs_exact``: taylor2 against exact Eq. 1 (Monte-Carlo) on the same validation rows;
5. prune (Algorithm 1, ``sharkrec.prune.loop.prune``) to ``--prune-target`` of the bytes: kept fields, AUC;
6. compress to ``--target`` (0.3) of the embedding bytes (:func:`compress_model`), its test AUC and
   ``bytes_ratio`` = compressed embedding bytes / fp32 embedding bytes;
7. export + load the compressed model (:func:`export_and_check`): ``served_equals_in_memory``.

Overhead: taylor2 on a FieldModel wrapping a plain user DLRM (``PlainDLRM``) against sharkrec's native DLRM
holding the same weights, on the same rows, in this process, median of ``--repeats`` timings (target: at
most 1.2x).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/any_model.py --seeds 0 1 2 --out benchmarks/results/any_model.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn

from common import environment
from sharkrec.data.dataset import EncodedSplit, PreparedData
from sharkrec.data.loading import load_data
from sharkrec.data.user import UserData, from_batches
from sharkrec.errors import ConfigError
from sharkrec.importance.base import field_importance
from sharkrec.io import atomic_open, write_json
from sharkrec.model.dlrm import DLRM, DLRMConfig
from sharkrec.model.fieldmap import find_fields
from sharkrec.model.wrapped import FieldModel
from sharkrec.prune.loop import prune
from sharkrec.train.trainer import evaluate
from user_models import MODELS, Layout, PlainDLRM

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARKREC_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {"frappe": ("libfm", SHARED / "frappe-x1-valid" / "frappe.validation.libfm.gz"),
            "movielens": ("movielens", SHARED / "movielens-100k")}
DIM = 16


# ---------------------------------------------------------------------------- data and the user's loop
def load(dataset: str) -> tuple[PreparedData, Layout]:
    """sharkrec's own reader, and the dataset's field layout (which fields are multi-hot bags)."""
    fmt, path = DATASETS[dataset]
    data = load_data(fmt, path)
    return data, layout_of(data)


def layout_of(data: PreparedData) -> Layout:
    """The sparse fields of ``data`` as the user models take them (schema order; which are multi-hot bags)."""
    multi = tuple(data.train.column(i).offsets is not None for i in range(data.train.num_sparse))
    return Layout(tuple(data.schema.sparse_names), tuple(data.cardinalities[n] for n in data.schema.sparse_names),
                  multi)


def user_batches(split: EncodedSplit, layout: Layout, size: int, **order: Any) -> list[tuple[tuple, torch.Tensor]]:
    """``(inputs, labels)`` items, what the user's DataLoader yields."""
    return [(layout.inputs(b), b.labels[:, 0]) for b in split.batches(size, **order)]


@torch.no_grad()
def user_auc(model: nn.Module, items: list[tuple[tuple, torch.Tensor]]) -> float:
    scores = torch.cat([model(*x) for x, _ in items]).numpy()
    return float(roc_auc_score(torch.cat([y for _, y in items]).numpy(), scores))


def train_user_model(model: nn.Module, data: PreparedData, layout: Layout, seed: int, args: argparse.Namespace
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """A plain loop: Adam on BCE, shuffled batches, the epoch with the best validation AUC kept (patience)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    valid = user_batches(data.valid, layout, 4096)
    started = time.perf_counter()
    best, best_epoch, best_state, curve = -1.0, -1, None, []
    for epoch in range(args.epochs):
        model.train()
        for x, y in user_batches(data.train, layout, args.batch_size, shuffle=True, seed=seed, epoch=epoch):
            loss = F.binary_cross_entropy_with_logits(model(*x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        auc = user_auc(model, valid)
        curve.append(auc)
        if auc > best:
            best, best_epoch, best_state = auc, epoch, {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= args.patience:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    return model.eval(), {"valid_auc": best, "best_epoch": best_epoch, "valid_auc_by_epoch": curve,
                          "train_seconds": time.perf_counter() - started}


def wrap_user_model(model: nn.Module, layout: Layout, train: EncodedSplit, valid: EncodedSplit,
                    test: EncodedSplit) -> tuple[FieldModel, UserData, tuple]:
    """The field map (fields renamed to the schema's names), the FieldModel, the user's splits, the example."""
    example = layout.inputs(train.batch(torch.arange(8)))
    fmap = find_fields(model, example)
    fmap = fmap.rename({f.name: f.name.removeprefix("embeddings.") for f in fmap.fields})
    wrapped = FieldModel.wrap(model, fmap)
    splits = [from_batches(wrapped, user_batches(s, layout, 4096)) for s in (train, valid, test)]
    return wrapped, UserData(wrapped, *splits), example


def test_auc(model: Any, split: EncodedSplit) -> float:
    return float(evaluate(model, split, ("label",))["label"]["auc"])


# ---------------------------------------------------------------------------- the stages
def importance_figures(wrapped: FieldModel, user: UserData, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    taylor2 = field_importance(wrapped, user.valid, "taylor2", max_samples=args.max_samples, seed=seed)
    exact = field_importance(wrapped, user.valid, "exact", max_samples=args.exact_samples, draws=args.exact_draws,
                             seed=seed + 1000)
    return {"spearman_vs_exact": float(spearmanr(taylor2.scores, exact.scores).statistic),
            "taylor2_ranking": list(taylor2.ranking()), "exact_ranking": list(exact.ranking()),
            "taylor2_scores": taylor2.as_dict(), "exact_scores": exact.as_dict(),
            "taylor2_seconds": taylor2.seconds, "exact_seconds": exact.seconds}


def prune_figures(wrapped: FieldModel, user: UserData, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    tick = time.perf_counter()
    result = prune(wrapped, user, target_memory=args.prune_target, seed=seed)
    base = wrapped.embedding.embedding_bytes()
    return {"removed": list(result.plan.removed), "stopped_because": result.stopped_because,
            "test_auc": test_auc(result.model, user.test),
            "bytes_ratio": result.model.embedding.embedding_bytes() / base,
            "seconds": time.perf_counter() - tick}


def compress_model(wrapped: FieldModel, user: UserData, target: float, seed: int) -> tuple[Any | None, dict[str, Any]]:
    """``sharkrec.compress.pipeline.compress`` on the FieldModel + UserData, or ``(None, {"gap": why})`` where
    this checkout's compress does not take a user model yet."""
    try:
        from sharkrec.compress.pipeline import CompressConfig, compress
    except ImportError as error:
        return None, {"gap": f"sharkrec.compress.pipeline.compress is missing: {error}"}
    tick = time.perf_counter()
    try:
        result = compress(wrapped, user, CompressConfig(target_memory=target, seed=seed))
    except ConfigError as error:
        if "cannot compress" not in str(error):
            raise
        return None, {"gap": f"compress rejects a FieldModel: {error}"}
    return result.model, {"removed_fields": list(result.candidate.removed), "chosen": result.candidate.label,
                          "met_max_auc_drop": result.met_max_auc_drop,
                          "trainings": result.report["search"]["trainings"],
                          "compress_seconds": time.perf_counter() - tick}


def export_and_check(model: FieldModel, example: tuple, batch_inputs: tuple, user: UserData,
                     atol: float = 1e-4) -> dict[str, Any]:
    """Save the user-model artifact, load it without the model's class, compare its scores with the in-memory
    model's on ``batch_inputs``; ``served_equals_in_memory`` None where this checkout has no user artifact."""
    try:
        import sharkrec
        from sharkrec.export import save_user_artifact
    except ImportError as error:
        return {"served_equals_in_memory": None, "gap": f"sharkrec.export.save_user_artifact is missing: {error}"}
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        save_user_artifact(model, example, Path(folder) / "artifact", vocabularies=user.vocabularies)
        served = sharkrec.load(Path(folder) / "artifact")
        with torch.no_grad():
            difference = float((served(*batch_inputs) - model(*batch_inputs)).abs().max())
    return {"served_equals_in_memory": difference <= atol, "max_served_difference": difference,
            "export_seconds": time.perf_counter() - tick}


def run_one(name: str, dataset: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    data, layout = load(dataset)
    torch.manual_seed(seed)
    model, training = train_user_model(MODELS[name](layout, DIM), data, layout, seed, args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped, user, example = wrap_user_model(model, layout, data.train, data.valid, data.test)
    record: dict[str, Any] = {"model": name, "dataset": dataset, "seed": seed, "fields": list(wrapped.field_names),
                              "embedding_bytes_fp32": int(wrapped.embedding.embedding_bytes()), **training}
    record.update(importance_figures(wrapped, user, seed, args))
    record["test_auc_base"] = test_auc(wrapped, user.test)
    record["test_auc_user_loop"] = user_auc(model, user_batches(data.test, layout, 4096))
    if args.prune_target:
        record["prune"] = prune_figures(wrapped, user, seed, args)
    compressed, info = compress_model(wrapped, user, args.target, seed)
    record.update(info)
    gaps = [info["gap"]] if "gap" in info else []
    if compressed is None:
        record.update(test_auc_compressed=None, bytes_ratio=None, served_equals_in_memory=None)
    else:
        record["test_auc_compressed"] = test_auc(compressed, user.test)
        record["bytes_ratio"] = compressed.embedding.embedding_bytes() / record["embedding_bytes_fp32"]
        rows = torch.arange(min(2048, len(data.test)))
        served = export_and_check(compressed, example, layout.inputs(data.test.batch(rows)), user)
        gaps += [served.pop("gap")] if "gap" in served else []
        record.update(served)
    record["user_model_unchanged"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    record["gaps"] = gaps
    record["seconds"] = time.perf_counter() - started
    return record


# ---------------------------------------------------------------------------- the field path's cost
def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """taylor2 seconds: FieldModel over a plain user DLRM vs sharkrec's DLRM, same weights, same rows."""
    data, layout = load("frappe")
    torch.manual_seed(0)
    config = DLRMConfig(num_dense=0, field_rows=tuple((n, data.cardinalities[n]) for n in layout.names),
                        embedding_dim=DIM)
    native = DLRM(config).eval()
    plain = PlainDLRM(layout, DIM, top=config.top_mlp).copy_from(native).eval()
    rows = min(args.overhead_samples, len(data.train))
    split = data.train.subset(np.arange(rows))
    wrapped, user, _ = wrap_user_model(plain, layout, split, split, split)
    batch = split.batch(torch.arange(512))
    with torch.no_grad():
        same_logits = float((wrapped(*layout.inputs(batch)) - native(batch)[:, 0]).abs().max())
    times: dict[str, list[float]] = {"native": [], "field_model": []}
    scores: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits both alike
        for key, (model, scored) in (("native", (native, split)), ("field_model", (wrapped, user.train))):
            tick = time.perf_counter()
            scores[key] = field_importance(model, scored, "taylor2", batch_size=4096).scores
            times[key].append(time.perf_counter() - tick)
    native_s, field_s = statistics.median(times["native"]), statistics.median(times["field_model"])
    return {"method": "taylor2", "dataset": "frappe", "samples": rows, "repeats": args.repeats,
            "threads": torch.get_num_threads(), "native_seconds": native_s, "field_model_seconds": field_s,
            "ratio": field_s / native_s, "ratio_at_most_1.2": field_s / native_s <= 1.2,
            "seconds_all": times, "max_logit_difference": same_logits,
            "max_score_difference": float(np.abs(scores["native"] - scores["field_model"]).max())}


# ---------------------------------------------------------------------------- report
def _cell(records: list[dict[str, Any]], key: str, digits: int = 4) -> str:
    values = [r[key] for r in records if r.get(key) is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    records = payload["records"]
    lines = ["# User-written models through every stage (mean ± std over seeds)", "",
             "| model | dataset | seeds | Spearman taylor2 vs exact | test AUC base | test AUC pruned (bytes) | "
             f"test AUC compressed | bytes ratio (target {payload['settings']['target']}) | served = in-memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["model"], r["dataset"]), []).append(r)
    for (name, dataset), rs in groups.items():
        pruned = [r["prune"] for r in rs if "prune" in r]
        prune_cell = (f"{np.mean([p['test_auc'] for p in pruned]):.4f} "
                      f"({np.mean([p['bytes_ratio'] for p in pruned]):.2f})") if pruned else "—"
        served = [r["served_equals_in_memory"] for r in rs]
        served_cell = "—" if any(s is None for s in served) else str(all(served))
        lines.append(f"| {name} | {dataset} | {len(rs)} | {_cell(rs, 'spearman_vs_exact', 3)} | "
                     f"{_cell(rs, 'test_auc_base')} | {prune_cell} | {_cell(rs, 'test_auc_compressed')} | "
                     f"{_cell(rs, 'bytes_ratio', 3)} | {served_cell} |")
    o = payload.get("overhead")
    if o:
        lines += ["", f"Field-path overhead: taylor2 on {o['samples']} Frappe rows, a user DLRM wrapped by FieldModel "
                      f"{o['field_model_seconds']:.3f} s vs sharkrec's DLRM {o['native_seconds']:.3f} s (same weights, "
                      f"median of {o['repeats']}) = **{o['ratio']:.2f}x** (target ≤ 1.2x); logits differ by at most "
                      f"{o['max_logit_difference']:.1e}, scores by {o['max_score_difference']:.1e}."]
    gaps = sorted({g for r in records for g in r.get("gaps", [])})
    if gaps:
        lines += ["", "Gaps: " + "; ".join(gaps)]
    lines += ["", "Generated by benchmarks/any_model.py from benchmarks/results/any_model.json.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.3, help="compressed share of the embedding bytes")
    parser.add_argument("--prune-target", type=float, default=0.5, help="Algorithm 1's target memory (0: skip)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--max-samples", type=int, default=5000, help="validation rows taylor2 scores")
    parser.add_argument("--exact-samples", type=int, default=5000, help="validation rows exact scores")
    parser.add_argument("--exact-draws", type=int, default=32)
    parser.add_argument("--overhead-samples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "any_model.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    records = []
    for dataset in args.datasets:
        for name in args.models:
            for seed in args.seeds:
                record = run_one(name, dataset, seed, args)
                print({k: record.get(k) for k in ("model", "dataset", "seed", "spearman_vs_exact", "test_auc_base",
                                                  "test_auc_compressed", "bytes_ratio", "served_equals_in_memory",
                                                  "seconds")}, flush=True)
                records.append(record)
    payload: dict[str, Any] = {"benchmark": "any_model", "environment": environment(), "settings": vars(args),
                               "records": records}
    if not args.no_overhead:
        payload["overhead"] = overhead(args)
        print({k: v for k, v in payload["overhead"].items() if k != "seconds_all"}, flush=True)
    payload["seconds"] = time.perf_counter() - started
    write_outputs(Path(args.out), payload)
    print(markdown(payload))


def write_outputs(out: Path, payload: dict[str, Any]) -> None:
    """``out``: the list of records; ``<stem>_run.json``: environment, settings, overhead; ``.md``: the table."""
    write_json(out, payload["records"])
    write_json(out.with_name(out.stem + "_run.json"), {k: v for k, v in payload.items() if k != "records"})
    with atomic_open(out.with_suffix(".md")) as handle:
        handle.write(markdown(payload))


if __name__ == "__main__":
    main()
