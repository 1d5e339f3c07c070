"""The quotient-remainder trick (Shi et al., KDD 2020): two small tables per field instead of one large one.

Value ``x`` of a field with ``V`` rows reads row ``x mod m`` of a remainder table (m, D) and row
``x div m`` of a quotient table (⌈V/m⌉, D), combined element-wise::

    e(x) = R[x mod m] ⊙ Q[x div m]      (multiply, the paper's default)
    e(x) = R[x mod m] + Q[x div m]      (add)

Every value gets its own combination, so the field still produces V distinct vectors from
``m + ⌈V/m⌉`` rows (at best ``2√V``). There is no hash and no per-value state: the bytes are the two tables.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, parse_choice
from sharkrec.hashed.hashing import check_field_rows, check_ids, pool
from sharkrec.hashed.kernels import fused_lookup, inference_extension
from sharkrec.model.embedding import FieldEmbedding


class Combine(str, enum.Enum):
    """How the remainder and quotient rows of a value are combined."""

    MULTIPLY = "multiply"
    ADD = "add"


def quotient_rows(value_rows: int, remainder_rows: int) -> int:
    """⌈V / m⌉: rows of the quotient table."""
    return -(-int(value_rows) // int(remainder_rows))


class QREmbedding(FieldEmbedding):
    """Per field a remainder table (m, D) and a quotient table (⌈V/m⌉, D) (kind ``"qr"``).

    Args:
        field_rows: vocabulary rows V per field (the ids it accepts), in field order.
        remainder_rows: m per field, in ``[1, V]``.
        embedding_dim: D.
        combine: multiply (default) or add.
        init_std: remainder rows ~ N(0, init_std²); quotient rows ~ N(1, init_std²) when multiplying (so a
            value starts near its remainder row, at the scale of a plain table), N(0, init_std²) when adding.
        generator: random generator for the initial rows.

    Shapes: ``forward`` takes one :class:`FieldIds` per field (ids in ``[0, V_f)``) and returns (B, F, D).
    """

    kind: ClassVar[str] = "qr"
    computes_rows: ClassVar[bool] = True
    row_rule: ClassVar[str] = (
        "e(x) = remainders.f[x mod m_f] * quotients.f[x div m_f] (combine add: +); m_f = spec "
        "remainder_rows[f]")

    def __init__(self, field_rows: Mapping[str, int], remainder_rows: Mapping[str, int], embedding_dim: int, *,
                 combine: Combine | str = Combine.MULTIPLY, init_std: float = 0.01,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        rows = check_field_rows(field_rows)
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim is {embedding_dim}; use 1 or more")
        if not (init_std >= 0.0 and math.isfinite(init_std)):
            raise ConfigError(f"init_std is {init_std}; use a finite value >= 0 such as 0.01")
        if set(remainder_rows) != set(rows):
            raise ConfigError(f"remainder_rows covers fields {sorted(remainder_rows)} but the embedding has "
                              f"{sorted(rows)}; give one remainder table size per field")
        for name, value_rows in rows.items():
            m = int(remainder_rows[name])
            if not 1 <= m <= value_rows:
                raise ConfigError(f"field {name!r}: remainder_rows is {m}; use 1..{value_rows} (its vocabulary rows)")
        self.field_names = tuple(rows)
        self.embedding_dim = int(embedding_dim)
        self.combine = parse_choice(Combine, combine, "QR combine")
        self.init_std = float(init_std)
        self._value_rows = [rows[n] for n in self.field_names]
        self._remainder_rows = [int(remainder_rows[n]) for n in self.field_names]
        self.remainders = nn.ParameterList(nn.Parameter(torch.empty(m, self.embedding_dim))
                                           for m in self._remainder_rows)
        self.quotients = nn.ParameterList(nn.Parameter(torch.empty(quotient_rows(v, m), self.embedding_dim))
                                          for v, m in zip(self._value_rows, self._remainder_rows, strict=True))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        quotient_mean = 1.0 if self.combine is Combine.MULTIPLY else 0.0
        with torch.no_grad():
            for remainder, quotient in zip(self.remainders, self.quotients, strict=True):
                remainder.normal_(0.0, self.init_std, generator=generator)
                quotient.normal_(quotient_mean, self.init_std, generator=generator)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "field_rows": self.value_rows(), "embedding_dim": self.embedding_dim,
                "remainder_rows": dict(zip(self.field_names, self._remainder_rows, strict=True)),
                "combine": self.combine.value, "init_std": self.init_std}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> QREmbedding:
        return cls(dict(spec["field_rows"]), dict(spec["remainder_rows"]), int(spec["embedding_dim"]),
                   combine=str(spec.get("combine", "multiply")), init_std=float(spec.get("init_std", 0.01)))

    def value_rows(self) -> dict[str, int]:
        """Vocabulary rows per field (the ids this layer accepts)."""
        return dict(zip(self.field_names, self._value_rows, strict=True))

    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D): per id ``R[x mod m] ⊙ Q[x div m]`` (or +), bags sum-pooled (one fused kernel call without
        autograd: :mod:`sharkrec.hashed.kernels`)."""
        module = inference_extension(self)
        if module is not None:
            out = fused_lookup(module.qr_lookup, self.field_names, self._value_rows, sparse, list(self.remainders),
                               list(self.quotients), self._remainder_rows, self.combine is Combine.MULTIPLY,
                               self.embedding_dim)
            if out is not None:
                return out
        check_ids(self.field_names, self._value_rows, sparse)
        vectors = []
        for position, ids in enumerate(sparse):
            values = ids.values.to(torch.int64)
            m = self._remainder_rows[position]
            remainder = F.embedding(values.remainder(m), self.remainders[position], sparse=True)  # (N, D)
            quotient = F.embedding(values.div(m, rounding_mode="floor"), self.quotients[position], sparse=True)
            combined = remainder * quotient if self.combine is Combine.MULTIPLY else remainder + quotient
            vectors.append(pool(combined, ids))  # (B, D)
        return torch.stack(vectors, dim=1)  # (B, F, D)

    def num_rows(self) -> dict[str, int]:
        """Distinct vectors per field: every value has its own (remainder, quotient) pair, so V."""
        return self.value_rows()

    def table_rows(self) -> dict[str, tuple[int, int]]:
        """(remainder rows m, quotient rows ⌈V/m⌉) per field."""
        return {name: (int(r.shape[0]), int(q.shape[0]))
                for name, r, q in zip(self.field_names, self.remainders, self.quotients, strict=True)}

    def embedding_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.remainders, *self.quotients))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [*self.remainders, *self.quotients]

    def subset(self, field_names: Sequence[str]) -> QREmbedding:
        """A new layer with copies of the tables of ``field_names``, in that order."""
        positions = [self._position(name) for name in field_names]
        out = QREmbedding({n: self._value_rows[p] for n, p in zip(field_names, positions, strict=True)},
                          {n: self._remainder_rows[p] for n, p in zip(field_names, positions, strict=True)},
                          self.embedding_dim, combine=self.combine, init_std=self.init_std)
        with torch.no_grad():
            for new, p in enumerate(positions):
                out.remainders[new].copy_(self.remainders[p])
                out.quotients[new].copy_(self.quotients[p])
        return out

    def extra_repr(self) -> str:
        rows = sum(r + q for r, q in self.table_rows().values())
        return f"fields={len(self.field_names)}, dim={self.embedding_dim}, rows={rows}, combine={self.combine.value}"
