"""The embedding of a clustered model: many values of a field share one row through a value → row map.

A :class:`ClusteredEmbedding` holds, per field, ``row_of_value`` (V,) int32 — the cluster row of each
vocabulary row (V = the vocabulary's rows, OOV row 0 included) — and an inner embedding over the
cluster rows (K, D): fp32 (:class:`FloatEmbedding`) or quantized (:class:`MixedPrecisionEmbedding`).
Ids coming from the vocabulary are translated through the map, then looked up in the inner layer,
so training, saving and loading work unchanged on the shared rows.

:func:`fold_vocabulary` composes the map with the vocabulary (raw value → cluster row directly);
the serving-time form where the map costs no extra bytes because the vocabulary exists anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from sharkrec.data.batch import FieldIds
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding, RowMapLayer, embedding_from_spec


class ClusteredEmbedding(RowMapLayer):
    """Shared rows behind a per-field value → row map (kind ``"clustered"``).

    Args:
        row_maps: ``{field: (V,) int tensor}`` cluster row of every vocabulary row, in field order.
        inner: the embedding over cluster rows; its fields are the same, field f has ``max(map_f) + 1``
            rows or more.

    Shapes: ``forward`` takes one :class:`FieldIds` per field with ids in ``[0, V_f)`` and returns
    (B, F, D), the inner layer's vectors for the mapped ids.
    """

    kind: ClassVar[str] = "clustered"

    def __init__(self, row_maps: Mapping[str, Tensor], inner: FieldEmbedding) -> None:
        super().__init__()
        self.field_names = tuple(row_maps)
        if tuple(inner.field_names) != self.field_names:
            raise ConfigError(f"the inner embedding has fields {list(inner.field_names)} but the maps cover "
                              f"{list(self.field_names)}; build both over the same fields, in order")
        self.embedding_dim = int(inner.embedding_dim)
        self.inner = inner
        rows = inner.num_rows()
        self._value_rows: list[int] = []
        for position, (name, row_map) in enumerate(row_maps.items()):
            row_map = torch.as_tensor(row_map)
            if row_map.ndim != 1 or row_map.numel() < 1 or row_map.dtype.is_floating_point:
                raise ConfigError(f"field {name!r}: the value → row map must be a non-empty 1-D integer tensor")
            low, high = int(row_map.min()), int(row_map.max())
            if low < 0 or high >= rows[name]:
                raise ConfigError(f"field {name!r}: the map points at rows {low}..{high} but the field has "
                                  f"{rows[name]} rows; map every value to a row in 0..{rows[name] - 1}")
            self.register_buffer(f"map_{position}", row_map.to(torch.int32).contiguous())
            self._value_rows.append(int(row_map.numel()))

    @classmethod
    def from_float(cls, row_maps: Mapping[str, Tensor], rows: Mapping[str, Tensor]) -> ClusteredEmbedding:
        """An fp32 clustered layer: ``rows[field]`` (K_f, D) cluster rows, ``row_maps[field]`` (V_f,)."""
        return cls(row_maps, FloatEmbedding.from_tables({name: rows[name] for name in row_maps}))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "value_rows": dict(zip(self.field_names, self._value_rows, strict=True)),
                "inner": self.inner.spec()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ClusteredEmbedding:
        inner = embedding_from_spec(spec["inner"])
        maps = {str(name): torch.zeros(int(v), dtype=torch.int32) for name, v in spec["value_rows"].items()}
        return cls(maps, inner)

    # ------------------------------------------------------------------ the map
    def row_map(self, field_name: str) -> Tensor:
        """(V,) int32 cluster row of every vocabulary row of ``field_name``."""
        if field_name not in self.field_names:
            raise ConfigError(f"field {field_name!r} is not clustered; known fields: {', '.join(self.field_names)}")
        buffer: Tensor = getattr(self, f"map_{self.field_names.index(field_name)}")
        return buffer

    def value_rows(self) -> dict[str, int]:
        """Vocabulary rows per field (the ids this layer accepts)."""
        return dict(zip(self.field_names, self._value_rows, strict=True))

    def map_ids(self, sparse: Sequence[FieldIds]) -> list[FieldIds]:
        """The batch's vocabulary ids translated to cluster rows (same offsets)."""
        if len(sparse) != len(self.field_names):
            raise DataError(f"the batch has {len(sparse)} sparse fields but the model has {len(self.field_names)} "
                            f"({', '.join(self.field_names)}); build the batch with the model's schema")
        mapped = []
        for position, (name, ids) in enumerate(zip(self.field_names, sparse, strict=True)):
            values = ids.values
            if values.numel() > 0:
                low, high = int(values.min()), int(values.max())
                if low < 0 or high >= self._value_rows[position]:
                    raise DataError(f"field {name!r} has ids from {low} to {high} but its vocabulary has "
                                    f"{self._value_rows[position]} rows; encode the data with the model's vocabulary")
            row_map: Tensor = getattr(self, f"map_{position}")
            mapped.append(FieldIds(row_map.index_select(0, values).to(torch.int64), ids.offsets, ids.weights))
        return mapped

    def with_inner(self, inner: FieldEmbedding) -> ClusteredEmbedding:
        return ClusteredEmbedding({name: self.row_map(name).clone() for name in inner.field_names}, inner)

    def value_map(self, field_name: str) -> Tensor:
        return self.row_map(field_name).long()

    def fixed_bytes(self) -> dict[str, int]:
        """The value → row maps (int32 per value): quantizing the cluster rows does not shrink them."""
        return {name: int(self.row_map(name).numel() * self.row_map(name).element_size()) for name in self.field_names}

    def map_bytes(self) -> int:
        """Bytes of the value → row maps when stored as an extra index per value (int32 tensors)."""
        return sum(int(self.row_map(n).numel() * self.row_map(n).element_size()) for n in self.field_names)

    def embedding_bytes(self) -> int:
        """Bytes this layer holds: the inner rows plus the maps as an extra index (the conservative count)."""
        return int(self.inner.embedding_bytes()) + self.map_bytes()

    def memory_report(self) -> ClusterMemory:
        return ClusterMemory(rows_bytes=int(self.inner.embedding_bytes()), map_index_bytes=self.map_bytes(),
                             cluster_rows=int(sum(self.num_rows().values())),
                             value_rows=int(sum(self._value_rows)), embedding_dim=self.embedding_dim)

    def extra_repr(self) -> str:
        return f"value_rows={sum(self._value_rows)}, cluster_rows={sum(self.num_rows().values())}"


class ClusterMemory:
    """Bytes of a clustered layer counted two ways: map folded into the vocabulary, or as an extra index."""

    def __init__(self, rows_bytes: int, map_index_bytes: int, cluster_rows: int, value_rows: int,
                 embedding_dim: int) -> None:
        self.rows_bytes = rows_bytes
        self.map_index_bytes = map_index_bytes
        self.cluster_rows = cluster_rows
        self.value_rows = value_rows
        self.embedding_dim = embedding_dim

    def to_dict(self) -> dict[str, Any]:
        fp32_before = self.value_rows * self.embedding_dim * 4
        return {
            "rows_bytes": self.rows_bytes,
            "map_index_bytes": self.map_index_bytes,
            "bytes_map_folded_into_vocabulary": self.rows_bytes,
            "bytes_map_as_index": self.rows_bytes + self.map_index_bytes,
            "cluster_rows": self.cluster_rows,
            "value_rows": self.value_rows,
            "rows_compression": self.value_rows / max(self.cluster_rows, 1),
            "fp32_bytes_before": fp32_before,
            "compression_map_folded": fp32_before / max(self.rows_bytes, 1),
            "compression_map_as_index": fp32_before / max(self.rows_bytes + self.map_index_bytes, 1),
        }


class FoldedVocabulary(Vocabulary):
    """A vocabulary whose rows are cluster rows: raw value → cluster row in one lookup.

    The vocabulary's key index already exists for encoding; storing the cluster row in place of the
    value's own row is what makes the map cost no extra bytes ("folded into the vocabulary").
    """

    def __init__(self, vocab: Vocabulary, row_map: Tensor) -> None:
        super().__init__(vocab.name, vocab.min_count)
        if int(row_map.numel()) != vocab.num_rows:
            raise ConfigError(f"field {vocab.name!r}: the map has {row_map.numel()} values but the vocabulary "
                              f"{vocab.num_rows} rows; cluster with the model's own vocabulary")
        self.keys_ = vocab.keys_
        self.counts_ = vocab.counts_
        self.positive_counts_ = vocab.positive_counts_
        self._index = vocab._index
        self.row_of_value_ = row_map.numpy().astype(np.int64)

    @property
    def num_rows(self) -> int:
        return int(self.row_of_value_.max()) + 1

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Cluster rows (int64) for raw ``values``; unknown values get the OOV value's cluster."""
        return self.row_of_value_[super().transform(values)]


def fold_vocabulary(vocabularies: Mapping[str, Vocabulary], embedding: ClusteredEmbedding
                    ) -> tuple[dict[str, Vocabulary], FieldEmbedding]:
    """Compose each field's map with its vocabulary: (raw value → cluster row vocabularies, inner layer).

    Encoding raw data with the returned vocabularies and looking the ids up in the inner layer gives
    the same vectors as the original vocabularies plus ``embedding``.
    """
    folded: dict[str, Vocabulary] = dict(vocabularies)
    for name in embedding.field_names:
        if name not in vocabularies:
            raise ConfigError(f"field {name!r} has no vocabulary; known: {', '.join(vocabularies)}")
        folded[name] = FoldedVocabulary(vocabularies[name], embedding.row_map(name))
    return folded, embedding.inner
