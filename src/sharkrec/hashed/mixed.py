"""Mixed dimension embeddings (Ginart et al., 2019): frequent values get wide rows, rare values narrow ones.

A field's ids are cut into blocks of consecutive ids; block ``b`` holds a table (n_b, d_b) with
``d_1 > d_2 > …`` and a projection (d_b, D) back to the model's dim::

    e(x) = E_b[x − start_b] · P_b,    b = the block whose id range holds x

The blocks are id ranges, so this relies on ids numbered by frequency: sharkrec's vocabularies do that
(row 0 is OOV, then hottest first), so the only state besides the tables and projections is the (k,)
block starts of each field (int64). Ids not numbered by frequency would need a value → block map
(4 B per value); :func:`sharkrec.hashed.budget.hashed_embedding` refuses them rather than hide that cost.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError
from sharkrec.hashed.hashing import check_field_rows, check_ids, pool
from sharkrec.hashed.kernels import fused_lookup, inference_extension
from sharkrec.model.embedding import FieldEmbedding

Blocks = Sequence[tuple[int, int]]  # (rows, dim) per block, widest first


class MixedDimEmbedding(FieldEmbedding):
    """Per field, blocks of consecutive ids with their own width, projected to D (kind ``"mixed_dim"``).

    Args:
        field_blocks: per field, ``[(rows, dim), ...]`` for each block in id order (the hottest first): rows 1 or
            more, dims strictly decreasing in ``[1, D]``; the field accepts ids ``0..Σ rows − 1``.
        embedding_dim: D.
        init_std: rows ~ N(0, init_std²); projections ~ N(0, 1/d_b), so a vector starts at the scale of a plain
            table's.
        generator: random generator for the initial weights.

    Rows are sparse parameters (row-wise optimizer); the projections are dense (the trainer's dense optimizer).
    Shapes: ``forward`` takes one :class:`FieldIds` per field and returns (B, F, D).
    """

    kind: ClassVar[str] = "mixed_dim"
    computes_rows: ClassVar[bool] = True
    row_rule: ClassVar[str] = (
        "e(x) = tables.(first_f + b)[x - starts_f[b]] @ projections.(first_f + b), b = the last block "
        "with starts_f[b] <= x; first_f = blocks of the fields before f")

    def __init__(self, field_blocks: Mapping[str, Blocks], embedding_dim: int, *, init_std: float = 0.01,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim is {embedding_dim}; use 1 or more")
        if not (init_std >= 0.0 and math.isfinite(init_std)):
            raise ConfigError(f"init_std is {init_std}; use a finite value >= 0 such as 0.01")
        blocks = {str(n): [(int(r), int(d)) for r, d in b] for n, b in field_blocks.items()}
        for name, field in blocks.items():
            self._check_blocks(name, field, int(embedding_dim))
        rows = check_field_rows({n: sum(r for r, _ in b) for n, b in blocks.items()})
        self.field_names = tuple(rows)
        self.embedding_dim = int(embedding_dim)
        self.init_std = float(init_std)
        self._value_rows = [rows[n] for n in self.field_names]
        self._blocks = [blocks[n] for n in self.field_names]
        #: flat over (field, block): table and projection number ``self._first[f] + b``
        self._first = [sum(len(b) for b in self._blocks[:f]) for f in range(len(self._blocks))]
        self.tables = nn.ParameterList(nn.Parameter(torch.empty(r, d)) for b in self._blocks for r, d in b)
        self.projections = nn.ParameterList(nn.Parameter(torch.empty(d, self.embedding_dim))
                                            for b in self._blocks for _, d in b)
        for position, field in enumerate(self._blocks):
            starts = torch.tensor([0] + [r for r, _ in field[:-1]], dtype=torch.int64).cumsum(0)
            self.register_buffer(f"starts_{position}", starts)  # (k,) first id of each block
        self.reset_parameters(generator)

    @staticmethod
    def _check_blocks(name: str, blocks: list[tuple[int, int]], dim: int) -> None:
        if not blocks:
            raise ConfigError(f"field {name!r} has no blocks; give at least one (rows, dim) block")
        for rows, width in blocks:
            if rows < 1:
                raise ConfigError(f"field {name!r} has a block of {rows} rows; every block needs 1 or more rows "
                                  "(leave empty blocks out)")
            if not 1 <= width <= dim:
                raise ConfigError(f"field {name!r} has a block of dim {width}; use dims 1..{dim} (the embedding dim)")
        widths = [w for _, w in blocks]
        if any(b >= a for a, b in itertools.pairwise(widths)):
            raise ConfigError(f"field {name!r} has block dims {widths}; dims must decrease block by block "
                              "(hottest ids widest), e.g. [16, 8, 4]")

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            for table, projection in zip(self.tables, self.projections, strict=True):
                table.normal_(0.0, self.init_std, generator=generator)
                projection.normal_(0.0, 1.0 / math.sqrt(projection.shape[0]), generator=generator)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "embedding_dim": self.embedding_dim, "init_std": self.init_std,
                "field_blocks": {n: [list(b) for b in blocks] for n, blocks in zip(self.field_names, self._blocks,
                                                                                  strict=True)}}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> MixedDimEmbedding:
        blocks = {str(n): [(int(r), int(d)) for r, d in b] for n, b in spec["field_blocks"].items()}
        return cls(blocks, int(spec["embedding_dim"]), init_std=float(spec.get("init_std", 0.01)))

    def value_rows(self) -> dict[str, int]:
        """Vocabulary rows per field (the ids this layer accepts)."""
        return dict(zip(self.field_names, self._value_rows, strict=True))

    def field_blocks(self) -> dict[str, list[tuple[int, int]]]:
        """Per field, ``[(rows, dim), ...]`` of its blocks."""
        return {n: list(b) for n, b in zip(self.field_names, self._blocks, strict=True)}

    def field_vectors(self, position: int, values: Tensor) -> Tensor:
        """(N, D) vectors of the ids ``values`` (N,) of field number ``position``."""
        values = values.to(torch.int64).contiguous()
        first, count = self._first[position], len(self._blocks[position])
        starts: Tensor = getattr(self, f"starts_{position}")
        if count == 1:
            return F.embedding(values, self.tables[first], sparse=True) @ self.projections[first]  # (N, D)
        block = torch.bucketize(values, starts[1:], right=True)  # (N,) block of each id
        pieces, order = [], []
        for b in range(count):
            chosen = (block == b).nonzero().squeeze(1)
            if chosen.numel() == 0:
                continue
            local = values.index_select(0, chosen) - starts[b]
            pieces.append(F.embedding(local, self.tables[first + b], sparse=True) @ self.projections[first + b])
            order.append(chosen)
        if not pieces:
            return values.new_zeros((0, self.embedding_dim), dtype=torch.float32)
        placed = torch.cat(order)  # (N,) original position of each stacked vector
        inverse = torch.empty_like(placed)
        inverse[placed] = torch.arange(placed.numel())
        return torch.cat(pieces).index_select(0, inverse)  # (N, D) back in id order

    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D) projected block rows, bags sum-pooled (one fused kernel call without autograd:
        :mod:`sharkrec.hashed.kernels`)."""
        module = inference_extension(self)
        if module is not None:
            starts = [getattr(self, f"starts_{p}") for p in range(len(self.field_names))]
            out = fused_lookup(module.mixed_lookup, self.field_names, self._value_rows, sparse, list(self.tables),
                               list(self.projections), starts, self._first, self.embedding_dim)
            if out is not None:
                return out
        check_ids(self.field_names, self._value_rows, sparse)
        vectors = [pool(self.field_vectors(p, ids.values), ids) for p, ids in enumerate(sparse)]  # (B, D) each
        return torch.stack(vectors, dim=1)  # (B, F, D)

    def num_rows(self) -> dict[str, int]:
        """Distinct vectors per field: every value keeps its own (narrower) row, so V."""
        return self.value_rows()

    def fixed_bytes(self) -> dict[str, int]:
        """Per field: the projections and block starts (re-storing the rows does not shrink them)."""
        out = {}
        for position, name in enumerate(self.field_names):
            first, count = self._first[position], len(self._blocks[position])
            projections = sum(p.numel() * p.element_size() for p in self.projections[first : first + count])
            starts: Tensor = getattr(self, f"starts_{position}")
            out[name] = int(projections + starts.numel() * starts.element_size())
        return out

    def embedding_bytes(self) -> int:
        rows = sum(t.numel() * t.element_size() for t in self.tables)
        return int(rows + sum(self.fixed_bytes().values()))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables)

    def subset(self, field_names: Sequence[str]) -> MixedDimEmbedding:
        """A new layer with copies of the blocks of ``field_names``, in that order."""
        blocks = self.field_blocks()
        missing = [n for n in field_names if n not in blocks]
        if missing:
            raise ConfigError(f"fields {missing} are not in the layer; known fields: {', '.join(self.field_names)}")
        out = MixedDimEmbedding({n: blocks[n] for n in field_names}, self.embedding_dim, init_std=self.init_std)
        with torch.no_grad():
            for new, name in enumerate(field_names):
                old = self.field_names.index(name)
                for b in range(len(blocks[name])):
                    out.tables[out._first[new] + b].copy_(self.tables[self._first[old] + b])
                    out.projections[out._first[new] + b].copy_(self.projections[self._first[old] + b])
        return out

    def extra_repr(self) -> str:
        dims = sorted({d for b in self._blocks for _, d in b}, reverse=True)
        return f"fields={len(self.field_names)}, dim={self.embedding_dim}, block_dims={dims}"
