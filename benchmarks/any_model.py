"""Every stage on user-written models (DeepFM, DCN-v2) over real data, and the cost of the field path on a DLRM.

Per model x dataset x seed: train the user's model in a plain loop (Adam 2e-3, early stop on validation AUC),
wrap it (``sharkrec.wrap``), score taylor2 and exact (Spearman), compress to 0.3 of the embedding bytes
(``sharkrec.compress.pipeline.compress``), export + load the artifact and check its scores against the
in-memory model. Overhead: taylor2 on a FieldModel wrapping a plain per-field-nn.Embedding DLRM vs
sharkrec's native DLRM holding the same weights, on the same rows, median of 3 timings.

    python benchmarks/any_model.py --seeds 0 1 2 --out benchmarks/results/any_model.json
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

import sharkrec
from common import environment, write_results
from sharkrec.compress.pipeline import CompressConfig, compress
from sharkrec.data.loading import load_data
from sharkrec.data.user import UserData, from_batches
from sharkrec.export import save_user_artifact
from sharkrec.importance.base import field_importance
from sharkrec.io import atomic_open, write_json
from sharkrec.model.dlrm import DLRM, DLRMConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARKREC_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {"frappe": ("libfm", SHARED / "frappe-x1-valid" / "frappe.validation.libfm.gz"),
            "movielens": ("movielens", SHARED / "movielens-100k")}
DIM = 16


class DeepFM(nn.Module):
    """Per-field lookups (nn.Embedding for single-hot, nn.EmbeddingBag for multi-hot), FM term, deep MLP."""

    def __init__(self, rows: list[int], multi: list[bool]) -> None:
        super().__init__()
        self.multi = multi
        self.embeddings = nn.ModuleList(nn.EmbeddingBag(r, DIM, mode="sum") if m else nn.Embedding(r, DIM)
                                        for r, m in zip(rows, multi, strict=True))
        self.deep = nn.Sequential(nn.Linear(len(rows) * DIM, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, *fields: torch.Tensor) -> torch.Tensor:
        v = torch.stack(_lookups(self.embeddings, self.multi, fields), dim=1)  # (B, F, D)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return fm + self.deep(v.flatten(1)).squeeze(1)


class DCNv2(nn.Module):
    """Per-field nn.EmbeddingBag, two full-rank cross layers, a deep MLP, stacked."""

    def __init__(self, rows: list[int], multi: list[bool]) -> None:
        super().__init__()
        self.multi = [True] * len(rows)
        self.embeddings = nn.ModuleList(nn.EmbeddingBag(r, DIM, mode="sum") for r in rows)
        width = len(rows) * DIM
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(2))
        self.deep = nn.Sequential(nn.Linear(width, 128), nn.ReLU())
        self.out = nn.Linear(width + 128, 1)

    def forward(self, *fields: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat(_lookups(self.embeddings, self.multi, fields), dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)


def _lookups(modules: nn.ModuleList, multi: list[bool], fields: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    out, k = [], 0
    for module, bag in zip(modules, multi, strict=True):
        if bag:
            out.append(module(fields[k], fields[k + 1]))
            k += 2
        else:
            out.append(module(fields[k]))
            k += 1
    return out


def user_inputs(batch: Any, multi: list[bool]) -> tuple[torch.Tensor, ...]:
    """A sharkrec batch as the user model's positional inputs: per field ids, or bag values + B offsets."""
    out: list[torch.Tensor] = []
    for ids, bag in zip(batch.sparse, multi, strict=True):
        if bag:
            offsets = ids.offsets if ids.offsets is not None else torch.arange(len(ids.values) + 1)
            out += [ids.values, offsets[:-1]]
        else:
            out.append(ids.values)
    return tuple(out)


def user_batches(split: Any, multi: list[bool], size: int, **kw: Any) -> list[tuple[tuple, torch.Tensor]]:
    return [(user_inputs(b, multi), b.labels[:, 0]) for b in split.batches(size, **kw)]


def auc_of(model: Any, split: Any) -> float:
    scores = torch.cat([model.predict_proba(b)[:, 0] for b in split.batches(4096)]).numpy()
    return float(roc_auc_score(split.labels[:, 0].numpy(), scores))


def init_small(model: nn.Module) -> nn.Module:
    """Rows drawn from N(0, 0.01²), as CTR code usually does (the default N(0, 1) blows up the FM term)."""
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(module.weight, 0.0, 0.01)
    return model


def train_user_model(model: nn.Module, data: Any, multi: list[bool], seed: int, epochs: int = 20,
                     patience: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    init_small(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    valid = user_batches(data.valid, multi, 4096)
    best, best_state, since = -1.0, None, 0
    for epoch in range(epochs):
        model.train()
        for x, y in user_batches(data.train, multi, 512, shuffle=True, seed=seed, epoch=epoch):
            loss = F.binary_cross_entropy_with_logits(model(*x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            scores = torch.cat([torch.sigmoid(model(*x)) for x, _ in valid]).numpy()
        auc = roc_auc_score(torch.cat([y for _, y in valid]).numpy(), scores)
        if auc > best:
            best, best_state, since = auc, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            since += 1
            if since >= patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    return model.eval()


def run_one(name: str, dataset: str, seed: int) -> dict[str, Any]:
    fmt, path = DATASETS[dataset]
    data = load_data(fmt, path)
    multi = [ids.offsets is not None for ids in data.train.batch(torch.arange(2)).sparse]
    rows = list(data.cardinalities.values())
    torch.manual_seed(seed)
    model = train_user_model((DeepFM if name == "deepfm" else DCNv2)(rows, multi), data, multi, seed)
    started = time.perf_counter()
    example = user_inputs(data.train.batch(torch.arange(8)), multi)
    wrapped = sharkrec.wrap(model, example=example)
    splits = [from_batches(wrapped, user_batches(getattr(data, s), multi, 4096)) for s in ("train", "valid", "test")]
    user = UserData(wrapped, *splits)
    taylor2 = field_importance(wrapped, user.valid, "taylor2", max_samples=20000)
    exact = field_importance(wrapped, user.valid, "exact", max_samples=5000, draws=32)
    spearman = float(spearmanr(taylor2.scores, exact.scores).statistic)
    base = auc_of(wrapped, user.test)
    result = compress(wrapped, user, CompressConfig(target_memory=0.3, seed=seed))
    compressed = auc_of(result.model, user.test)
    ratio = result.model.embedding.embedding_bytes() / wrapped.embedding.embedding_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        save_user_artifact(result.model, example, Path(tmp) / "art", vocabularies=user.vocabularies)
        served = sharkrec.load(Path(tmp) / "art")
        batch = user.test.batch(torch.arange(min(2048, len(user.test))))
        same = bool(torch.allclose(served(*batch.inputs), result.model(*batch.inputs), atol=1e-4))
    return {"model": name, "dataset": dataset, "seed": seed, "spearman_vs_exact": spearman,
            "test_auc_base": base, "test_auc_compressed": compressed,
            "relative_auc_drop": 1.0 - compressed / base, "bytes_ratio": ratio, "served_equals_in_memory": same,
            "removed_fields": list(result.candidate.removed), "seconds": time.perf_counter() - started}


class UserDLRM(nn.Module):
    """A DLRM as a user writes it: one nn.Embedding per field, the dot interaction, a head (no dense)."""

    def __init__(self, native: DLRM) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(r, native.embedding_dim) for r in native.field_rows().values())
        with torch.no_grad():
            for module, name in zip(self.embeddings, native.sparse_names, strict=True):
                module.weight.copy_(native.embedding.table(name))
        self.head = native.head
        self.register_buffer("pairs", native.pair_index.clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = torch.stack([e(ids[:, i]) for i, e in enumerate(self.embeddings)], dim=1)  # (B, F, D)
        dots = torch.bmm(v, v.transpose(1, 2)).flatten(1).index_select(1, self.pairs)
        return self.head(dots)


def overhead(repeats: int = 3) -> dict[str, Any]:
    fmt, path = DATASETS["frappe"]
    data = load_data(fmt, path)
    native = DLRM(DLRMConfig(num_dense=0, field_rows=tuple(data.cardinalities.items()), embedding_dim=DIM)).eval()
    user_model = UserDLRM(native).eval()
    ids = lambda b: (torch.stack([f.values for f in b.sparse], dim=1),)  # noqa: E731
    wrapped = sharkrec.wrap(user_model, example=ids(data.valid.batch(torch.arange(8))))
    user_valid = from_batches(wrapped, [(ids(b), b.labels[:, 0]) for b in data.valid.batches(4096)])
    times: dict[str, list[float]] = {"native": [], "field_model": []}
    results = {}
    for _ in range(repeats):
        for key, (model, split) in {"native": (native, data.valid), "field_model": (wrapped, user_valid)}.items():
            tick = time.perf_counter()
            results[key] = field_importance(model, split, "taylor2", batch_size=4096)
            times[key].append(time.perf_counter() - tick)
    native_s, wrapped_s = statistics.median(times["native"]), statistics.median(times["field_model"])
    return {"samples": len(data.valid), "native_seconds": native_s, "field_model_seconds": wrapped_s,
            "ratio": wrapped_s / native_s,
            "max_score_difference": float(np.abs(results["native"].scores - results["field_model"].scores).max())}


def markdown(payload: dict[str, Any]) -> str:
    lines = ["| model | dataset | seeds | Spearman taylor2 vs exact | test AUC base | test AUC at 0.3 bytes | "
             "relative drop | bytes ratio | served = in-memory |", "|---|---|---|---|---|---|---|---|---|"]
    records = payload["records"]
    for name in ("deepfm", "dcn-v2"):
        for dataset in DATASETS:
            rs = [r for r in records if r["model"] == name and r["dataset"] == dataset]
            if not rs:
                continue

            def ms(key: str, rs: list = rs) -> str:
                values = [r[key] for r in rs]
                return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

            lines.append(f"| {name} | {dataset} | {len(rs)} | {ms('spearman_vs_exact')} | {ms('test_auc_base')} | "
                         f"{ms('test_auc_compressed')} | "
                         f"{100 * np.mean([r['relative_auc_drop'] for r in rs]):+.3f} % | "
                         f"{np.mean([r['bytes_ratio'] for r in rs]):.3f} | "
                         f"{all(r['served_equals_in_memory'] for r in rs)} |")
    o = payload.get("overhead")
    if o:
        lines.append("")
        lines.append(f"Field-path overhead (taylor2 on {o['samples']} Frappe rows, DLRM): FieldModel "
                     f"{o['field_model_seconds']:.2f} s vs native {o['native_seconds']:.2f} s = {o['ratio']:.2f}x; "
                     f"scores differ by at most {o['max_score_difference']:.1e}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["deepfm", "dcn-v2"])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "any_model.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = []
    for dataset in args.datasets:
        for name in args.models:
            for seed in args.seeds:
                record = run_one(name, dataset, seed)
                print({k: v for k, v in record.items() if k != "removed_fields"}, flush=True)
                records.append(record)
    payload = {"environment": environment(), "records": records, "overhead": overhead()}
    print(payload["overhead"], flush=True)
    out = Path(args.out)
    write_json(out, records)  # the list of records; the overhead and environment beside it
    write_results(out.with_name(out.stem + "_overhead.json"), {"environment": payload["environment"],
                                                              "overhead": payload["overhead"]}, "")
    with atomic_open(out.with_suffix(".md")) as handle:
        handle.write(markdown(payload))


if __name__ == "__main__":
    main()
