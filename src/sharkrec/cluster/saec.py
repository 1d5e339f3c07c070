"""Saec: cluster the values of each field on their trained embeddings, so similar values share a row.

``Saec(config).fit(model, data)`` learns ``row_maps_`` — per field, the cluster row (V,) of every
vocabulary row — and ``rows_``, the (K, D) row each cluster stores; ``transform(model)`` returns a
new model whose embedding is a :class:`ClusteredEmbedding` (the old model is left untouched).

One global budget sets the clusters: ``rows_ratio`` (cluster rows / vocabulary rows over all fields)
or ``target_bytes`` (fp32 bytes of the cluster rows). :func:`allocate_clusters` splits it over the
fields in proportion to their rows; a field never gets more clusters than values.

``method`` picks how the map is made, so Saec and its baselines share one estimator:

=============  ==================================================================================
saec           frequency-weighted k-means on the head covering ``head_share`` of occurrences,
               then one nearest-centroid pass for the tail (the fast clustering)
kmeans         full frequency-weighted k-means on every value (``head_share`` = 1)
hashing        the hashing trick: value → (a·v + b mod p) mod K, a seeded universal hash
frequency      frequency cut-off: the K − 1 most frequent values keep a row, the rest share OOV
=============  ==================================================================================

Every method stores, per cluster, the frequency-weighted mean of its members' trained rows.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from sharkrec.cluster.embedding import ClusteredEmbedding
from sharkrec.cluster.kmeans import Metric, kmeans, weighted_error, weighted_means
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import ConfigError, parse_choice
from sharkrec.model.dlrm import DLRM
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding, layers, replace_storage
from sharkrec.model.protocol import check_field_path

_HASH_PRIME = 2_147_483_647  # 2^31 − 1


class ClusterMethod(str, enum.Enum):
    """How a field's value → row map is built (see the module table)."""

    SAEC = "saec"
    KMEANS = "kmeans"
    HASHING = "hashing"
    FREQUENCY = "frequency"


@dataclass(frozen=True)
class SaecConfig:
    """Hyper-parameters of :class:`Saec`.

    Attributes:
        rows_ratio: cluster rows kept as a share of the vocabulary rows, in (0, 1]; or
        target_bytes: fp32 bytes (rows × D × 4) allowed for all cluster rows. Give exactly one.
        method: saec, kmeans, hashing or frequency.
        metric: euclidean or cosine distance on the trained rows (k-means methods).
        head_share: share of occurrences the head covers (saec only), in (0, 1].
        max_iter: Lloyd iterations at most. tol: relative error change that stops them.
        fields: fields to cluster (default all); other fields keep one row per value.
        min_rows: a field keeps all its rows when it has at most this many (small tables cost nothing).
        seed: seeds the k-means initialisation and the hash.
    """

    rows_ratio: float | None = None
    target_bytes: int | None = None
    method: ClusterMethod = ClusterMethod.SAEC
    metric: Metric = Metric.EUCLIDEAN
    head_share: float = 0.95
    max_iter: int = 25
    tol: float = 1e-4
    fields: tuple[str, ...] | None = None
    min_rows: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "method", parse_choice(ClusterMethod, self.method, "cluster method"))
        set_(self, "metric", parse_choice(Metric, self.metric, "distance metric"))
        if (self.rows_ratio is None) == (self.target_bytes is None):
            raise ConfigError("give exactly one budget: rows_ratio (e.g. 0.1) or target_bytes")
        if self.rows_ratio is not None and not 0.0 < float(self.rows_ratio) <= 1.0:
            raise ConfigError(f"rows_ratio is {self.rows_ratio}; use the share of rows to keep, in (0, 1], e.g. 0.1")
        if self.target_bytes is not None and int(self.target_bytes) <= 0:
            raise ConfigError(f"target_bytes is {self.target_bytes}; use a positive number of bytes")
        if not 0.0 < float(self.head_share) <= 1.0:
            raise ConfigError(f"head_share is {self.head_share}; use a share of occurrences in (0, 1], e.g. 0.9")
        if int(self.max_iter) < 1 or not float(self.tol) >= 0.0:
            raise ConfigError("max_iter must be 1 or more and tol 0 or more")
        if int(self.min_rows) < 1:
            raise ConfigError(f"min_rows is {self.min_rows}; use 1 or more")
        if self.fields is not None:
            set_(self, "fields", tuple(str(f) for f in self.fields))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["method"], out["metric"] = self.method.value, self.metric.value
        out["fields"] = None if self.fields is None else list(self.fields)
        return out


def allocate_clusters(value_rows: dict[str, int], budget_rows: int, clustered: tuple[str, ...],
                      min_rows: int = 1) -> dict[str, int]:
    """Clusters per field from one global row budget.

    Fields not in ``clustered`` and fields with at most ``min_rows`` rows keep every row (and spend
    budget); the rest share what is left in proportion to their rows (largest remainders get the
    leftover rows), each at least 1 and at most its rows. Raises when even that does not fit.
    """
    fixed = {n: r for n, r in value_rows.items() if n not in clustered or r <= min_rows}
    flexible = {n: r for n, r in value_rows.items() if n not in fixed}
    left = budget_rows - sum(fixed.values())
    if left < len(flexible):
        need = sum(fixed.values()) + len(flexible)
        raise ConfigError(f"a budget of {budget_rows} rows cannot hold the model (it needs at least {need}: one "
                          f"row per clustered field plus the fields kept whole); raise rows_ratio / target_bytes")
    counts = dict(fixed)
    if not flexible:
        return counts
    total = sum(flexible.values())
    share = {n: min(r, max(1.0, left * r / total)) for n, r in flexible.items()}
    base = {n: int(s) for n, s in share.items()}
    spare = left - sum(base.values())
    for name in sorted(flexible, key=lambda n: (-(share[n] - base[n]), n)):
        if spare <= 0:
            break
        if base[name] < flexible[name]:
            base[name] += 1
            spare -= 1
    counts.update(base)
    return {n: counts[n] for n in value_rows}


def value_counts(data: PreparedData) -> dict[str, Tensor]:
    """(V,) float64 occurrences of every vocabulary row in the training split, per sparse field (PreparedData
    or UserData: a bag's ids count once each)."""
    out = {}
    for i, (name, rows) in enumerate(data.cardinalities.items()):
        values = np.asarray(data.train.column(i).values, dtype=np.int64)
        out[name] = torch.from_numpy(np.bincount(values, minlength=rows)[:rows].astype(np.float64))
    return out


class Saec:
    """Cluster field values on their trained embeddings (scikit-learn habit: ``fit`` then ``transform``).

    Learned state: ``row_maps_`` ({field: (V,) int64}), ``rows_`` ({field: (K, D) float32}),
    ``clusters_`` ({field: K}), ``weighted_error_`` ({field: Σ w‖x − row‖²}), ``seconds_`` (clustering
    wall time, all fields) and ``head_sizes_``.
    """

    def __init__(self, config: SaecConfig, progress: bool = False) -> None:
        self.config = config
        self.progress = progress

    def fit(self, model: DLRM, data: PreparedData) -> Saec:
        """Learn the value → row maps from ``model``'s fp32 rows and ``data``'s training frequencies.

        ``model``: sharkrec's DLRM or a user's :class:`~sharkrec.model.wrapped.FieldModel`; ``data``: its
        PreparedData or UserData (``cardinalities``, ``train.column(i)``)."""
        check_field_path(model, "cluster")
        embedding, _ = float_tables(model)
        names = embedding.field_names
        clustered = self.config.fields if self.config.fields is not None else names
        unknown = [f for f in clustered if f not in names]
        if unknown:
            raise ConfigError(f"fields {unknown} are not in the model's tables; known fields: {', '.join(names)}")
        value_rows = embedding.num_rows()
        cardinalities = data.cardinalities
        if any(cardinalities.get(name) != rows for name, rows in value_rows.items()):
            raise ConfigError("the data's vocabularies do not match the model's tables; encode the data with "
                              "the model's vocabularies")
        budget = self._budget_rows(value_rows, embedding.embedding_dim)
        self.clusters_ = allocate_clusters(value_rows, budget, tuple(clustered), self.config.min_rows)
        counts = value_counts(data)
        self.row_maps_: dict[str, Tensor] = {}
        self.rows_: dict[str, Tensor] = {}
        self.weighted_error_: dict[str, float] = {}
        self.head_sizes_: dict[str, int] = {}
        started = time.perf_counter()
        for name in tqdm(names, desc=f"cluster ({self.config.method.value})", unit="field", disable=not self.progress,
                         leave=False):
            points = embedding.table(name).detach().float()
            row_map, rows, head = self._cluster(points, counts[name], self.clusters_[name], name)
            self.row_maps_[name], self.rows_[name], self.head_sizes_[name] = row_map, rows, head
            self.clusters_[name] = int(rows.shape[0])
            self.weighted_error_[name] = weighted_error(points, counts[name], row_map, rows)
        self.seconds_ = time.perf_counter() - started
        return self

    def _budget_rows(self, value_rows: dict[str, int], dim: int) -> int:
        if self.config.rows_ratio is not None:
            return max(1, round(float(self.config.rows_ratio) * sum(value_rows.values())))
        return int(self.config.target_bytes or 0) // (dim * 4)

    def _cluster(self, points: Tensor, weights: Tensor, k: int, name: str) -> tuple[Tensor, Tensor, int]:
        """(V,) map, (K', D) rows and head size for one field; unused clusters are dropped (K' ≤ k)."""
        n = int(points.shape[0])
        config = self.config
        if k >= n:
            return torch.arange(n), points.clone(), n
        if config.method in (ClusterMethod.SAEC, ClusterMethod.KMEANS):
            share = config.head_share if config.method is ClusterMethod.SAEC else 1.0
            result = kmeans(points, weights, k, head_share=share, metric=config.metric, max_iter=config.max_iter,
                            tol=config.tol, seed=config.seed + _field_salt(name))
            assignment, head = result.assignment, result.head_size
        elif config.method is ClusterMethod.HASHING:
            generator = torch.Generator().manual_seed(config.seed + _field_salt(name))
            a, b = (int(x) for x in torch.randint(1, _HASH_PRIME, (2,), generator=generator))
            assignment = ((torch.arange(n, dtype=torch.int64) * a + b) % _HASH_PRIME) % k
            head = 0
        else:  # frequency cut-off: the k − 1 hottest values keep a row, the rest go to the OOV row
            order = weights.sort(descending=True, stable=True).indices
            assignment = torch.zeros(n, dtype=torch.int64)
            kept = order[order != 0][: k - 1]
            assignment[kept] = torch.arange(1, kept.numel() + 1)
            head = int(kept.numel())
        used, assignment = torch.unique(assignment, return_inverse=True)
        fallback = weighted_means(points, torch.ones(n, dtype=torch.float64), assignment, int(used.numel()))
        rows = weighted_means(points, weights, assignment, int(used.numel()), fallback=fallback)
        return assignment, rows, head

    def _check_fitted(self) -> None:
        if not hasattr(self, "row_maps_"):
            raise ConfigError("this Saec is not fitted yet; call fit(model, data) before transform(model)")

    def embedding(self) -> ClusteredEmbedding:
        """The fp32 :class:`ClusteredEmbedding` of the fitted maps and rows."""
        self._check_fitted()
        return ClusteredEmbedding.from_float(self.row_maps_, self.rows_)

    def transform(self, model: DLRM, quantize: str | None = None, **policy: Any) -> DLRM:
        """A new model with the clustered embedding (the dense network is copied).

        ``quantize`` (e.g. ``"int8"``, ``"fp16"``, ``"f-quant"``) stores the cluster rows in that
        precision (:func:`sharkrec.quant.build.build_embedding`): cluster first, then quantize.
        """
        self._check_fitted()
        tables, stack = float_tables(model)
        fields = tuple(tables.field_names)
        if fields != tuple(self.row_maps_):
            raise ConfigError(f"the model has fields {list(fields)} but Saec was fitted on {list(self.row_maps_)}; "
                              "transform the model it was fitted on")
        clustered: FieldEmbedding = self.embedding()
        if quantize is not None:
            clustered = quantize_clusters(self.embedding(), quantize, **policy)
        # F-Permutation removed some tables: the kept ones are clustered under the same (copied) wrappers
        return model.with_embedding(replace_storage(stack, clustered))

    def report(self) -> dict[str, Any]:
        """Per-field clusters, head sizes and weighted errors, plus the config (JSON-able)."""
        self._check_fitted()
        return {"config": self.config.to_dict(), "clusters": dict(self.clusters_),
                "value_rows": {n: int(m.numel()) for n, m in self.row_maps_.items()},
                "head_sizes": dict(self.head_sizes_), "weighted_error": dict(self.weighted_error_),
                "weighted_error_total": float(sum(self.weighted_error_.values())),
                "cluster_seconds": self.seconds_}


def float_tables(model: DLRM) -> tuple[FloatEmbedding, FieldEmbedding]:
    """(the fp32 tables Saec clusters, the whole stack above them): the model's own tables, or the kept tables
    under pruning wrappers."""
    stack = layers(model.embedding)
    tables = stack[-1]
    mapped = [layer for layer in stack[:-1] if any(layer.value_map(n) is not None for n in layer.field_names)]
    if tables.kind != "float" or mapped:
        culprit = mapped[0] if mapped else tables
        raise ConfigError(f"Saec clusters fp32 tables; this model has a {type(culprit).__name__} "
                          "(prune and cluster first, then quantize the clustered rows)")
    return cast(FloatEmbedding, tables), model.embedding  # kind "float": the fp32 tables


def quantize_clusters(embedding: ClusteredEmbedding, precision: str, **policy: Any) -> ClusteredEmbedding:
    """The same maps with the cluster rows stored in ``precision`` (fp16, int8, int4, f-quant, ...)."""
    from sharkrec.quant.build import build_embedding

    inner: FieldEmbedding = embedding.inner
    if inner.kind != "float":
        raise ConfigError(f"the cluster rows are already {type(inner).__name__}; quantize fp32 cluster rows once")
    built = build_embedding(precision, cast(FloatEmbedding, inner), None, **policy)
    return ClusteredEmbedding({n: embedding.row_map(n).clone() for n in embedding.field_names}, built)


def _field_salt(name: str) -> int:
    """A stable per-field offset for seeds (Python's ``hash`` of a str changes between runs)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 10_007
