"""The embedding of a pruned model: kept fields keep their tables, removed fields return a constant vector.

SHARK §3.1.2 deletes the tables of the weakest fields. The rest of the network still expects F field
vectors (the dot interaction and the head were trained on them), so a removed field i is replaced by
one constant vector c_i (D,), initialised from E[v_i], the field's mean vector over the data (the same
E_i as in Eq. 4). Its table is gone from the module and the state dict, and its ids are never read:
only the batch size is taken from its :class:`FieldIds`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding, embedding_from_spec


class PrunedEmbedding(FieldEmbedding):
    """All sparse fields of a model, of which ``removed`` are answered by a constant vector.

    Args:
        field_names: every sparse field, in the order the model's batches hold them.
        kept: an embedding over the kept fields, in ``field_names`` order (any :class:`FieldEmbedding`).
        constants: ``{removed field: (D,) vector}``; the removed fields, in the order they were removed.

    Shapes: ``forward`` takes one :class:`FieldIds` per field of ``field_names`` and returns (B, F, D);
    the kept fields' ids go to ``kept``, the removed fields' ids are ignored.
    """

    kind: ClassVar[str] = "pruned"

    def __init__(self, field_names: Sequence[str], kept: FieldEmbedding, constants: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.field_names = tuple(field_names)
        self.embedding_dim = int(kept.embedding_dim)
        self.removed = tuple(constants)
        unknown = [name for name in (*kept.field_names, *self.removed) if name not in self.field_names]
        if unknown:
            raise ConfigError(f"fields {unknown} are not fields of the model; known fields: {', '.join(field_names)}")
        expected = tuple(name for name in self.field_names if name not in constants)
        if tuple(kept.field_names) != expected:
            raise ConfigError(
                f"the kept embedding has fields {list(kept.field_names)} but the model keeps {list(expected)}; "
                "build the kept embedding over the kept fields, in model order"
            )
        self.kept = kept
        vectors = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in constants.values()]
        if any(v.numel() != self.embedding_dim for v in vectors):
            raise ConfigError(f"every constant vector of a removed field must have {self.embedding_dim} values")
        self.constants: Tensor
        self.register_buffer(
            "constants", torch.stack(vectors) if vectors else torch.zeros(0, self.embedding_dim)
        )  # (R, D)
        self._kept_positions = [i for i, name in enumerate(self.field_names) if name not in constants]
        # field f's vector sits at source[f] of cat([kept output (B, K, D), constants (B, R, D)], dim=1)
        source = {p: k for k, p in enumerate(self._kept_positions)}
        source.update({self.field_names.index(name): len(self._kept_positions) + r
                       for r, name in enumerate(self.removed)})
        self._source: Tensor
        self.register_buffer("_source", torch.tensor([source[f] for f in range(len(self.field_names))],
                                                     dtype=torch.int64), persistent=False)

    # ------------------------------------------------------------------ building
    @classmethod
    def wrap(cls, embedding: FieldEmbedding, constants: Mapping[str, Tensor]) -> PrunedEmbedding:
        """Remove the fields of ``constants`` from ``embedding`` (a pruned one is pruned further).

        The kept tables are copied with the embedding's ``subset(names)``; an embedding without one
        cannot be pruned.
        """
        if isinstance(embedding, PrunedEmbedding):
            already = dict(zip(embedding.removed, embedding.constants, strict=True))
            again = sorted(set(already) & set(constants))
            if again:
                raise ConfigError(f"fields {again} are already pruned; prune other fields")
            return cls.wrap_inner(embedding.field_names, embedding.kept, {**already, **constants})
        return cls.wrap_inner(embedding.field_names, embedding, constants)

    @classmethod
    def wrap_inner(cls, field_names: Sequence[str], inner: FieldEmbedding,
                   constants: Mapping[str, Tensor]) -> PrunedEmbedding:
        subset = getattr(inner, "subset", None)
        if not callable(subset):
            raise ConfigError(
                f"a {type(inner).__name__} cannot be pruned: it has no subset(field_names); "
                "prune the fp32 model first, then compress it"
            )
        kept_names = [name for name in field_names if name not in constants]
        if not kept_names:  # every table removed: an empty layer keeps the spec / state dict shape
            return cls(field_names, FloatEmbedding({}, inner.embedding_dim), constants)
        return cls(field_names, subset(kept_names), constants)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "field_names": list(self.field_names), "removed": list(self.removed),
                "embedding_dim": self.embedding_dim, "kept": self.kept.spec()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> PrunedEmbedding:
        dim = int(spec["embedding_dim"])
        zeros = {str(name): torch.zeros(dim) for name in spec["removed"]}
        return cls([str(n) for n in spec["field_names"]], embedding_from_spec(spec["kept"]), zeros)

    # ----------------------------------------------------------------- lookups
    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D) vectors: the kept embedding's for kept fields, the constant for removed ones."""
        if len(sparse) != len(self.field_names):
            raise DataError(
                f"the batch has {len(sparse)} sparse fields but the model has {len(self.field_names)} "
                f"({', '.join(self.field_names)}); build the batch with the model's schema"
            )
        batch_size = sparse[0].batch_size() if sparse else 0
        if not self.removed:
            return self.kept(sparse)
        parts = [self.constants.unsqueeze(0).expand(batch_size, -1, -1)]  # (B, R, D)
        if self._kept_positions:
            parts.insert(0, self.kept(self.kept_ids(sparse)))  # (B, K, D)
        return torch.cat(parts, dim=1).index_select(1, self._source)  # (B, F, D)

    def inner_layer(self) -> FieldEmbedding:
        return self.kept

    def with_inner(self, inner: FieldEmbedding) -> PrunedEmbedding:
        return PrunedEmbedding(self.field_names, inner, dict(zip(self.removed, self.constants.clone(), strict=True)))

    def removed_fields(self) -> tuple[str, ...]:
        return (*self.removed, *self.kept.removed_fields())

    def constant_vectors(self) -> dict[str, Tensor]:
        return {name: self.constants[r].detach().float().clone() for r, name in enumerate(self.removed)}

    def kept_ids(self, sparse: Sequence[FieldIds]) -> list[FieldIds]:
        return [sparse[i] for i in self._kept_positions]

    def num_rows(self) -> dict[str, int]:
        """Rows of each kept table; a removed field holds one row (its constant)."""
        kept = self.kept.num_rows()
        return {name: kept.get(name, 1) for name in self.field_names}

    def embedding_bytes(self) -> int:
        """Kept tables' bytes plus R·D·4 bytes of constants."""
        return int(self.kept.embedding_bytes()) + self.constants.numel() * self.constants.element_size()

    def sparse_parameters(self) -> list[nn.Parameter]:
        return self.kept.sparse_parameters()

    def observe_batch(self, sparse: Sequence[FieldIds], labels: Tensor) -> None:
        self.kept.observe_batch(self.kept_ids(sparse), labels)

    def make_sparse_optimizer(self, kind: str, lr: float) -> torch.optim.Optimizer | None:
        return self.kept.make_sparse_optimizer(kind, lr)

    def extra_repr(self) -> str:
        return f"removed={list(self.removed)}"
