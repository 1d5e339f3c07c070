"""Cluster a model end to end: fit Saec, swap in the clustered rows, fine-tune, report honest bytes.

:func:`cluster_model` is the library entry point (also the ``compress`` pipeline's cluster stage);
:func:`run_cluster` adds the files behind ``sharkrec cluster``: ``model.pt`` and ``report.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sharkrec.cluster.embedding import ClusteredEmbedding
from sharkrec.cluster.saec import Saec, SaecConfig, quantize_clusters
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import ConfigError
from sharkrec.io import write_json
from sharkrec.model.dlrm import DLRM
from sharkrec.model.embedding import FieldEmbedding, find_layer, layers
from sharkrec.model.protocol import check_field_path
from sharkrec.train.checkpoint import MODEL_FILE, ModelBundle, save_model
from sharkrec.train.run import memory_summary, split_metrics
from sharkrec.train.trainer import TrainConfig, Trainer

REPORT_FILE = "report.json"


def cluster_model(model: DLRM, data: PreparedData, *, rows_ratio: float | None = None,
                  target_bytes: int | None = None, method: str = "saec", metric: str = "euclidean",
                  head_share: float = 0.95, fields: tuple[str, ...] | None = None, seed: int = 0,
                  fine_tune: TrainConfig | None = None, quantize: str | None = None,
                  quantize_options: dict[str, Any] | None = None, evaluate: bool = True, progress: bool = False,
                  ) -> tuple[DLRM, dict[str, Any]]:
    """Cluster ``model``'s fp32 tables to one global budget; returns (new model, report).

    ``model`` is sharkrec's DLRM or a user's :class:`~sharkrec.model.wrapped.FieldModel` (``data`` its
    UserData). ``fine_tune`` (optional; pass :data:`sharkrec.train.fine_tune.DEFAULT_FINE_TUNE` or
    :func:`~sharkrec.train.fine_tune.fine_tune_config` of the model's training settings) trains the clustered
    model on ``data.train`` after mapping (the shared rows and the dense network). ``quantize`` then stores
    the cluster rows in that precision (``int8``, ``fp16``, ``f-quant``, ... with ``quantize_options``).
    The report holds the metrics before and after, the clustering time, per-field clusters and weighted
    errors, and the bytes counted two ways: ``memory.bytes_map_folded_into_vocabulary`` (rows only: the vocabulary that
    maps raw values to rows exists anyway and stores the cluster row instead) and
    ``memory.bytes_map_as_index`` (rows plus an int32 index per vocabulary row).
    """
    check_field_path(model, "cluster")
    started = time.perf_counter()
    config = SaecConfig(rows_ratio=rows_ratio, target_bytes=target_bytes, method=method, metric=metric,  # type: ignore[arg-type]
                        head_share=head_share, fields=fields, seed=seed)
    before_rows = sum(model.embedding.num_rows().values())
    before_bytes = int(model.embedding.embedding_bytes())
    report: dict[str, Any] = {"command": "cluster"}
    if evaluate:
        report["base_metrics"] = split_metrics(model, data)
    saec = Saec(config, progress=progress).fit(model, data)
    clustered = saec.transform(model)
    if evaluate:
        report["metrics_before_fine_tune"] = split_metrics(clustered, data)
    if fine_tune is not None:
        result = Trainer(clustered, fine_tune, data.schema.label_names).fit(data.train, data.valid)
        clustered.eval()
        report["fine_tune"] = {"config": fine_tune.to_dict(), "steps": result.steps, "seconds": result.seconds}
    if quantize is not None:
        clustered = saec_quantized(clustered, quantize, quantize_options or {})
    if evaluate:
        report["metrics"] = split_metrics(clustered, data)
    report["memory"] = cluster_memory(clustered, before_rows, before_bytes)
    report["clustering"] = saec.report()
    report["quantize"] = None if quantize is None else {"precision": quantize, **(quantize_options or {})}
    report["seconds"] = time.perf_counter() - started
    return clustered, report


def saec_quantized(model: DLRM, precision: str, options: dict[str, Any]) -> DLRM:
    """``model`` with its (fine-tuned) fp32 cluster rows stored in ``precision``; a pruned model stays pruned."""
    embedding = model.embedding
    clustered = clustered_part(embedding)
    if clustered is None:
        raise ConfigError("only a clustered model's rows can be quantized here; cluster it first")
    quantized: FieldEmbedding = quantize_clusters(clustered, precision, **options)
    stack = layers(embedding)
    above = stack[:stack.index(clustered)]  # the wrappers over the clustered layer (pruning), copied around it
    for wrapper in reversed(above):
        quantized = wrapper.with_inner(quantized)
    return model.with_embedding(quantized)


def clustered_part(embedding: FieldEmbedding) -> ClusteredEmbedding | None:
    """The :class:`ClusteredEmbedding` of a layer stack (itself, or under pruning), or ``None``."""
    found = find_layer(embedding, "clustered")
    return found if isinstance(found, ClusteredEmbedding) else None  # narrows the type for callers


def cluster_memory(model: DLRM, before_rows: int, before_bytes: int) -> dict[str, Any]:
    """``memory_summary`` plus the clustered layer's bytes both ways and the compression ratios.

    For a pruned model the removed fields' constants are added to both counts.
    """
    memory = memory_summary(model)
    clustered = clustered_part(model.embedding)
    if clustered is not None:
        detail = clustered.memory_report().to_dict()
        extra = int(model.embedding.embedding_bytes()) - int(clustered.embedding_bytes())  # pruned constants
        memory.update({"rows_bytes": detail["rows_bytes"] + extra, "map_index_bytes": detail["map_index_bytes"],
                       "bytes_map_folded_into_vocabulary": detail["bytes_map_folded_into_vocabulary"] + extra,
                       "bytes_map_as_index": detail["bytes_map_as_index"] + extra,
                       "cluster_rows": detail["cluster_rows"], "value_rows": detail["value_rows"]})
        memory["embedding_bytes_before"] = before_bytes
        memory["rows_before"] = before_rows
        memory["rows_compression"] = before_rows / max(sum(model.embedding.num_rows().values()), 1)
        memory["bytes_compression_map_folded"] = before_bytes / max(memory["bytes_map_folded_into_vocabulary"], 1)
        memory["bytes_compression_map_as_index"] = before_bytes / max(memory["bytes_map_as_index"], 1)
    return memory


def run_cluster(bundle: ModelBundle, data: PreparedData, out_dir: str | Path | None = None,
                **options: Any) -> tuple[DLRM, dict[str, Any]]:
    """:func:`cluster_model` on a saved model; with ``out_dir`` write model.pt, then report.json last."""
    model = bundle.model
    if not isinstance(model, DLRM):  # a saved model file holds sharkrec's DLRM; cluster_model takes any FieldModel
        raise ConfigError(f"cannot cluster a {type(model).__name__}; sharkrec clusters DLRM models")
    clustered, report = cluster_model(model, data, **options)
    if out_dir is not None:
        out = Path(out_dir)
        info = {**bundle.info, "clustering": report["clustering"], "metrics": report.get("metrics", {})}
        save_model(out / MODEL_FILE, clustered, bundle.schema, bundle.vocabularies, info=info)
        write_json(out / REPORT_FILE, report)
    return clustered, report
