"""ROBE-Z (Desai et al., MLSys 2022): every field's rows are read from one shared 1-D weight array.

A value ``x`` of field ``f`` is cut into ``C = ⌈D / Z⌉`` chunks of ``Z`` dims; chunk ``c`` starts at the
hashed offset ``o = h_{f,c}(x)`` in the array of ``size`` weights and reads ``Z`` weights contiguously,
wrapping around the end::

    e(x)[c·Z + j] = s_{f,c}(x) · w[(h_{f,c}(x) + j) mod size],   j = 0..Z−1

with an optional sign hash ``s_{f,c}(x) ∈ {−1, +1}`` that makes colliding values' errors cancel in
expectation. The array and the hash parameters (16 B per hash, 1–2 hashes per field and chunk) are all
it holds; its size is free of the vocabulary, so any compression ratio is one number.
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
from sharkrec.hashed.hashing import HASH_PRIME, check_field_rows, check_ids, hash_parameters, pool, universal_hash
from sharkrec.hashed.kernels import fused_lookup, inference_extension
from sharkrec.model.embedding import FieldEmbedding

_SALT_OFFSET, _SALT_SIGN = 101, 202


class RobeEmbedding(FieldEmbedding):
    """All fields' vectors read from one shared (size,) weight array by hashed chunks (kind ``"robe"``).

    Args:
        field_rows: vocabulary rows V per field (the ids it accepts), in field order.
        embedding_dim: D.
        size: weights in the shared array, in ``[chunk_size, 2^31 − 1]``.
        chunk_size: Z, dims read contiguously per hash (ROBE-Z); 1 hashes every weight on its own.
        signed: multiply each chunk by a hashed sign.
        seed: seeds the hash parameters (same seed, same hashes).
        init_std: weights ~ N(0, init_std²).
        generator: random generator for the initial weights.

    The array is stored as a (size, 1) parameter so the trainer's row-wise optimizers update it sparsely
    (one Adagrad accumulator per weight). Shapes: ``forward`` takes one :class:`FieldIds` per field and
    returns (B, F, D).
    """

    kind: ClassVar[str] = "robe"
    computes_rows: ClassVar[bool] = True
    row_rule: ClassVar[str] = (
        "e(x)[c*Z + j] = s_fc(x) * weights[(h_fc(x) + j) mod size], h_fc(x) = ((a*x + b) mod (2^31 - 1)) "
        "mod size with (a, b) = offset_hash[f*C + c], s_fc(x) = 2*(((a*x + b) mod (2^31 - 1)) mod 2) - 1 "
        "with (a, b) = sign_hash[f*C + c] (+1 unsigned); C = ceil(D / Z)")

    def __init__(self, field_rows: Mapping[str, int], embedding_dim: int, size: int, *, chunk_size: int = 8,
                 signed: bool = True, seed: int = 0, init_std: float = 0.01,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        rows = check_field_rows(field_rows)
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim is {embedding_dim}; use 1 or more")
        if not 1 <= int(chunk_size) <= int(embedding_dim):
            raise ConfigError(f"chunk_size is {chunk_size}; use 1..{embedding_dim} (the embedding dim)")
        if not int(chunk_size) <= int(size) <= HASH_PRIME:
            raise ConfigError(f"the ROBE array has {size} weights, less than one chunk of {chunk_size} (or above "
                              f"2^31 − 1); use a size of {chunk_size}..{HASH_PRIME} weights")
        if not (init_std >= 0.0 and math.isfinite(init_std)):
            raise ConfigError(f"init_std is {init_std}; use a finite value >= 0 such as 0.01")
        self.field_names = tuple(rows)
        self.embedding_dim = int(embedding_dim)
        self.chunk_size = int(chunk_size)
        self.chunks = -(-self.embedding_dim // self.chunk_size)
        self.signed = bool(signed)
        self.seed = int(seed)
        self.init_std = float(init_std)
        self._value_rows = [rows[n] for n in self.field_names]
        self.weights = nn.Parameter(torch.empty(int(size), 1))
        hashes = len(self.field_names) * self.chunks
        self.offset_hash: Tensor
        self.register_buffer("offset_hash", hash_parameters(self.seed, hashes, _SALT_OFFSET))  # (F·C, 2)
        self.sign_hash: Tensor
        self.register_buffer("sign_hash", hash_parameters(self.seed, hashes if self.signed else 0, _SALT_SIGN))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.weights.normal_(0.0, self.init_std, generator=generator)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "field_rows": self.value_rows(), "embedding_dim": self.embedding_dim,
                "size": self.size, "chunk_size": self.chunk_size, "signed": self.signed, "seed": self.seed,
                "init_std": self.init_std}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RobeEmbedding:
        return cls(dict(spec["field_rows"]), int(spec["embedding_dim"]), int(spec["size"]),
                   chunk_size=int(spec["chunk_size"]), signed=bool(spec["signed"]), seed=int(spec["seed"]),
                   init_std=float(spec.get("init_std", 0.01)))

    @property
    def size(self) -> int:
        return int(self.weights.shape[0])

    def value_rows(self) -> dict[str, int]:
        """Vocabulary rows per field (the ids this layer accepts)."""
        return dict(zip(self.field_names, self._value_rows, strict=True))

    def weight_positions(self, position: int, values: Tensor) -> tuple[Tensor, Tensor | None]:
        """(N, C·Z) positions in the array of the ids ``values`` (N,) of field number ``position``, and their
        (N, C) signs (``None`` unsigned)."""
        hashes = slice(position * self.chunks, (position + 1) * self.chunks)
        offsets = universal_hash(values, self.offset_hash[hashes], self.size)  # (N, C)
        within = torch.arange(self.chunk_size, dtype=torch.int64)
        positions = (offsets.unsqueeze(2) + within).remainder(self.size)  # (N, C, Z), wrapping around
        signs = None
        if self.signed:
            signs = universal_hash(values, self.sign_hash[hashes], 2).to(torch.float32).mul(2.0).sub(1.0)  # (N, C)
        return positions.flatten(1), signs

    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D): each id's C chunks read from the array (signed), truncated to D, bags sum-pooled (one fused
        kernel call without autograd: :mod:`sharkrec.hashed.kernels`)."""
        module = inference_extension(self)
        if module is not None:
            out = fused_lookup(module.robe_lookup, self.field_names, self._value_rows, sparse, self.weights,
                               self.offset_hash, self.sign_hash, self.chunk_size, self.embedding_dim)
            if out is not None:
                return out
        check_ids(self.field_names, self._value_rows, sparse)
        vectors = []
        for position, ids in enumerate(sparse):
            positions, signs = self.weight_positions(position, ids.values)
            n = positions.shape[0]
            read = F.embedding(positions.reshape(-1), self.weights, sparse=True)  # (N·C·Z, 1)
            chunks = read.view(n, self.chunks, self.chunk_size)  # (N, C, Z)
            if signs is not None:
                chunks = chunks * signs.unsqueeze(2)
            vectors.append(pool(chunks.reshape(n, self.chunks * self.chunk_size)[:, : self.embedding_dim], ids))
        return torch.stack(vectors, dim=1)  # (B, F, D)

    def num_rows(self) -> dict[str, int]:
        """Distinct vectors per field: every value reads its own hashed chunks, so (up to collisions) V."""
        return self.value_rows()

    def embedding_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weights, self.offset_hash, self.sign_hash))

    def fixed_bytes(self) -> dict[str, int]:
        """The hash parameters of each field (re-storing the array does not shrink them)."""
        per_field = (self.offset_hash.numel() + self.sign_hash.numel()) * 8 // len(self.field_names)
        return dict.fromkeys(self.field_names, int(per_field))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weights]

    def subset(self, field_names: Sequence[str]) -> RobeEmbedding:
        """The layer for ``field_names`` only: the same (copied) array, each kept field keeps its hashes."""
        positions = [self._position(name) for name in field_names]
        out = RobeEmbedding({n: self._value_rows[p] for n, p in zip(field_names, positions, strict=True)},
                            self.embedding_dim, self.size, chunk_size=self.chunk_size, signed=self.signed,
                            seed=self.seed, init_std=self.init_std)
        chunk_rows = [p * self.chunks + c for p in positions for c in range(self.chunks)]
        with torch.no_grad():
            out.weights.copy_(self.weights)
            out.offset_hash.copy_(self.offset_hash[chunk_rows])
            if self.signed:
                out.sign_hash.copy_(self.sign_hash[chunk_rows])
        return out

    def extra_repr(self) -> str:
        return (f"fields={len(self.field_names)}, dim={self.embedding_dim}, size={self.size}, "
                f"chunk_size={self.chunk_size}, signed={self.signed}")
