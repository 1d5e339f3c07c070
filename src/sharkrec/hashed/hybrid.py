"""Hot values keep their own rows, the rest share hashed rows (CAFE-style, Zhang et al. SIGMOD 2024, simplified).

Per field, the H hottest values (by training frequency) are listed in a sorted id array; every other
value is hashed into S shared rows. One table (H + S, D) holds both::

    row(x) = i           if hot_ids[i] == x   (found by binary search, O(log H))
    row(x) = H + h(x)    otherwise, h(x) = ((a·x + b) mod p) mod S

CAFE finds the hot set online with a sketch of gradient norms; here it is fixed before training
from the value counts (:func:`sharkrec.cluster.saec.value_counts`). The cold values hold no state
of their own: the bytes are the table, the H hot ids (int32, 4 B each) and one (a, b) pair per field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError
from sharkrec.hashed.hashing import (
    check_field_rows,
    check_ids,
    checked_hot_ids,
    hash_parameters,
    hot_or_hashed_rows,
    pool,
)
from sharkrec.hashed.kernels import fused_lookup, inference_extension
from sharkrec.model.embedding import FieldEmbedding

_SALT_COLD = 303


def hottest_ids(frequencies: Tensor, hot: int) -> Tensor:
    """The ``hot`` ids of highest frequency (ties: lower id first), sorted ascending (int64)."""
    if not 0 <= hot <= frequencies.numel():
        raise ConfigError(f"{hot} hot values asked for a field of {frequencies.numel()} values; use 0.."
                          f"{frequencies.numel()}")
    order = torch.sort(torch.as_tensor(frequencies, dtype=torch.float64), descending=True, stable=True).indices
    return order[:hot].sort().values


class HybridEmbedding(FieldEmbedding):
    """Own rows for each field's hot values, hashed shared rows for the cold ones (kind ``"hybrid"``).

    Args:
        field_rows: vocabulary rows V per field (the ids it accepts), in field order.
        hot_ids: per field, the distinct ids (in ``[0, V)``) that keep their own row; at most V.
        shared_rows: S per field, 1 or more: rows the cold values are hashed into.
        embedding_dim: D.
        seed: seeds the cold values' hash. init_std: rows ~ N(0, init_std²).
        generator: random generator for the initial rows.

    Shapes: ``forward`` takes one :class:`FieldIds` per field (ids in ``[0, V_f)``) and returns (B, F, D).
    """

    kind: ClassVar[str] = "hybrid"
    computes_rows: ClassVar[bool] = True
    row_rule: ClassVar[str] = (
        "e(x) = tables.f[i] if hot_f[i] == x (binary search of the sorted hot ids), else tables.f[H_f + "
        "((a*x + b) mod (2^31 - 1)) mod S_f] with (a, b) = cold_hash[f]")

    def __init__(self, field_rows: Mapping[str, int], hot_ids: Mapping[str, Tensor], shared_rows: Mapping[str, int],
                 embedding_dim: int, *, seed: int = 0, init_std: float = 0.01,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        rows = check_field_rows(field_rows)
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim is {embedding_dim}; use 1 or more")
        if not (init_std >= 0.0 and math.isfinite(init_std)):
            raise ConfigError(f"init_std is {init_std}; use a finite value >= 0 such as 0.01")
        for given, what in ((hot_ids, "hot_ids"), (shared_rows, "shared_rows")):
            if set(given) != set(rows):
                raise ConfigError(f"{what} covers fields {sorted(given)} but the embedding has {sorted(rows)}; "
                                  "give one entry per field")
        self.field_names = tuple(rows)
        self.embedding_dim = int(embedding_dim)
        self.seed = int(seed)
        self.init_std = float(init_std)
        self._value_rows = [rows[n] for n in self.field_names]
        self._hot_counts: list[int] = []
        self._shared_rows: list[int] = []
        for position, name in enumerate(self.field_names):
            hot = checked_hot_ids(name, hot_ids[name], rows[name])
            shared = int(shared_rows[name])
            if shared < 1:
                raise ConfigError(f"field {name!r}: shared_rows is {shared}; the cold values need 1 or more rows")
            self.register_buffer(f"hot_{position}", hot)
            self._hot_counts.append(int(hot.numel()))
            self._shared_rows.append(shared)
        self.tables = nn.ParameterList(nn.Parameter(torch.empty(h + s, self.embedding_dim))
                                       for h, s in zip(self._hot_counts, self._shared_rows, strict=True))
        self.cold_hash: Tensor
        self.register_buffer("cold_hash", hash_parameters(self.seed, len(self.field_names), _SALT_COLD))  # (F, 2)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            for table in self.tables:
                table.normal_(0.0, self.init_std, generator=generator)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "field_rows": self.value_rows(), "embedding_dim": self.embedding_dim,
                "hot_counts": dict(zip(self.field_names, self._hot_counts, strict=True)),
                "shared_rows": dict(zip(self.field_names, self._shared_rows, strict=True)), "seed": self.seed,
                "init_std": self.init_std}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> HybridEmbedding:
        # placeholders on the CPU (also when built on the meta device for serving); load_state_dict fills them
        placeholders = {str(n): torch.arange(int(h), device="cpu") for n, h in spec["hot_counts"].items()}
        return cls(dict(spec["field_rows"]), placeholders, dict(spec["shared_rows"]), int(spec["embedding_dim"]),
                   seed=int(spec["seed"]), init_std=float(spec.get("init_std", 0.01)))

    def value_rows(self) -> dict[str, int]:
        """Vocabulary rows per field (the ids this layer accepts)."""
        return dict(zip(self.field_names, self._value_rows, strict=True))

    def hot_ids(self, field_name: str) -> Tensor:
        """(H,) int32 sorted ids of the field's hot values."""
        buffer: Tensor = getattr(self, f"hot_{self._position(field_name)}")
        return buffer

    def rows_of(self, position: int, values: Tensor) -> Tensor:
        """(N,) row of the field's table for each id of ``values`` (N,): its own row if hot, else a hashed one."""
        hot: Tensor = getattr(self, f"hot_{position}")
        return hot_or_hashed_rows(hot, self.cold_hash[position : position + 1], self._shared_rows[position], values)

    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D) vectors of the rows each id maps to, bags sum-pooled (one fused kernel call without
        autograd: :mod:`sharkrec.hashed.kernels`)."""
        module = inference_extension(self)
        if module is not None:
            hot = [getattr(self, f"hot_{p}") for p in range(len(self.field_names))]
            out = fused_lookup(module.hybrid_lookup, self.field_names, self._value_rows, sparse, hot, list(self.tables),
                               self.cold_hash, self._shared_rows, self.embedding_dim)
            if out is not None:
                return out
        check_ids(self.field_names, self._value_rows, sparse)
        vectors = []
        for position, ids in enumerate(sparse):
            rows = self.rows_of(position, ids.values)
            vectors.append(pool(F.embedding(rows, self.tables[position], sparse=True), ids))  # (B, D)
        return torch.stack(vectors, dim=1)  # (B, F, D)

    def num_rows(self) -> dict[str, int]:
        """Distinct vectors per field: the hot rows plus the shared rows (never more than V)."""
        return {n: min(v, h + s) for n, v, h, s in zip(self.field_names, self._value_rows, self._hot_counts,
                                                       self._shared_rows, strict=True)}

    def hot_counts(self) -> dict[str, int]:
        return dict(zip(self.field_names, self._hot_counts, strict=True))

    def shared_rows(self) -> dict[str, int]:
        return dict(zip(self.field_names, self._shared_rows, strict=True))

    def fixed_bytes(self) -> dict[str, int]:
        """Per field: the hot-id array and the cold hash's (a, b) pair (re-storing the rows does not shrink them)."""
        pair = self.cold_hash.element_size() * 2
        return {name: int(self.hot_ids(name).numel() * self.hot_ids(name).element_size() + pair)
                for name in self.field_names}

    def embedding_bytes(self) -> int:
        rows = sum(t.numel() * t.element_size() for t in self.tables)
        return int(rows + sum(self.fixed_bytes().values()))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables)

    def subset(self, field_names: Sequence[str]) -> HybridEmbedding:
        """A new layer with copies of the tables, hot ids and hashes of ``field_names``, in that order."""
        positions = [self._position(name) for name in field_names]
        out = HybridEmbedding({n: self._value_rows[p] for n, p in zip(field_names, positions, strict=True)},
                              {n: self.hot_ids(n).clone() for n in field_names},
                              {n: self._shared_rows[p] for n, p in zip(field_names, positions, strict=True)},
                              self.embedding_dim, seed=self.seed, init_std=self.init_std)
        with torch.no_grad():
            out.cold_hash.copy_(self.cold_hash[positions])
            for new, p in enumerate(positions):
                out.tables[new].copy_(self.tables[p])
        return out

    def extra_repr(self) -> str:
        return (f"fields={len(self.field_names)}, dim={self.embedding_dim}, hot={sum(self._hot_counts)}, "
                f"shared={sum(self._shared_rows)}")
