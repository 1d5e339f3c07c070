"""What every hashed layer shares: a seeded universal hash family on int64 ids, id checks and bag pooling.

The family is Carter–Wegman's ``h(x) = ((a · x + b) mod p) mod m`` with ``p = 2^31 − 1``, ``a`` in
``[1, p)`` and ``b`` in ``[0, p)``: for two distinct ids below ``p`` the chance that they collide is
about ``1 / m``. Ids are reduced mod ``p`` first, so ``a · x + b < 2^62`` never overflows int64; ids are
vocabulary rows (below 2^31), so no two of them alias. The (a, b) pairs are the family's only state:
``2 × 8`` bytes per hash, held as an int64 buffer and counted in the layer's bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError

HASH_PRIME = 2_147_483_647  # 2^31 − 1, a Mersenne prime
_ID_DTYPES = (torch.int64, torch.int32)


def hash_parameters(seed: int, count: int, salt: int = 0) -> Tensor:
    """(count, 2) int64 ``(a, b)`` pairs drawn from ``seed`` (and ``salt``, e.g. a layer's kind): the same
    seed gives the same hashes on every machine, another seed other hashes."""
    if count < 0:
        raise ConfigError(f"cannot draw {count} hash functions; use 0 or more")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(salt))
    a = torch.randint(1, HASH_PRIME, (count, 1), generator=generator, dtype=torch.int64)
    b = torch.randint(0, HASH_PRIME, (count, 1), generator=generator, dtype=torch.int64)
    return torch.cat([a, b], dim=1)


def universal_hash(ids: Tensor, parameters: Tensor, buckets: int) -> Tensor:
    """``((a · x + b) mod p) mod buckets`` of int ``ids`` (N,) for each of the (K, 2) ``parameters`` → (N, K) int64.

    ``buckets`` must be in ``[1, p]``.
    """
    x = ids.to(torch.int64).remainder(HASH_PRIME).unsqueeze(1)  # (N, 1)
    a, b = parameters[:, 0], parameters[:, 1]  # (K,) each
    return (x * a + b).remainder(HASH_PRIME).remainder(int(buckets))  # (N, K)


def check_ids(field_names: Sequence[str], value_rows: Sequence[int], sparse: Sequence[FieldIds]) -> None:
    """One-line :class:`DataError` for a wrong field count, id dtype, batch size or an id outside ``[0, V_f)``."""
    if len(sparse) != len(field_names):
        raise DataError(f"the batch has {len(sparse)} sparse fields but the embedding has {len(field_names)} "
                        f"({', '.join(field_names)}); build the batch with the model's schema")
    batch_size = sparse[0].batch_size() if sparse else 0
    for name, rows, ids in zip(field_names, value_rows, sparse, strict=True):
        if ids.values.dtype not in _ID_DTYPES:
            raise DataError(f"field {name!r} has ids of dtype {ids.values.dtype}; ids must be int64 or int32")
        if ids.batch_size() != batch_size:
            raise DataError(f"field {name!r} has {ids.batch_size()} samples but field {field_names[0]!r} has "
                            f"{batch_size}; every field of a batch needs the same number of samples")
        if ids.values.numel() > 0:
            low, high = (int(v) for v in torch.aminmax(ids.values))
            if low < 0 or high >= rows:
                raise DataError(f"field {name!r} has ids from {low} to {high} but its vocabulary has {rows} rows "
                                f"(valid ids 0..{rows - 1}); encode the data with the vocabulary the model was built "
                                "with")


def pool(vectors: Tensor, ids: FieldIds) -> Tensor:
    """Per-id vectors (N, D) → per-sample vectors (B, D): the same for single-hot ids, the (weighted) sum of
    each bag for multi-hot ids (an empty bag gives zeros), as ``F.embedding_bag(mode="sum")``."""
    if ids.offsets is None:
        return vectors  # (B, D)
    lengths = ids.offsets[1:] - ids.offsets[:-1]  # (B,)
    sample = torch.repeat_interleave(torch.arange(lengths.numel(), device=vectors.device), lengths)  # (N,)
    if ids.weights is not None:
        vectors = vectors * ids.weights.unsqueeze(1)
    out = vectors.new_zeros(lengths.numel(), vectors.shape[1])
    return out.index_add(0, sample, vectors)  # (B, D)


def check_field_rows(field_rows: Mapping[str, int]) -> dict[str, int]:
    """``{field: V_f}`` as ints, or a one-line :class:`ConfigError` for an empty mapping or a field under 1 row."""
    if not field_rows:
        raise ConfigError("no fields given; a hashed embedding needs at least one field with its vocabulary rows")
    out = {}
    for name, rows in field_rows.items():
        if int(rows) < 1 or int(rows) > HASH_PRIME:
            raise ConfigError(f"field {name!r} has {rows} vocabulary rows; use 1..{HASH_PRIME}")
        out[str(name)] = int(rows)
    return out


def checked_hot_ids(name: str, ids: Tensor, value_rows: int) -> Tensor:
    """(H,) int32 sorted copy of field ``name``'s hot ids; a one-line ConfigError unless they are distinct ids in
    ``[0, value_rows)``."""
    ids = ids if isinstance(ids, Tensor) else torch.as_tensor(ids)  # (a tensor stays where it is)
    if ids.ndim != 1 or ids.dtype.is_floating_point:
        raise ConfigError(f"field {name!r}: hot_ids must be a 1-D integer tensor")
    if ids.numel() > value_rows:
        raise ConfigError(f"field {name!r}: {ids.numel()} hot values but the vocabulary has {value_rows}; "
                          f"keep at most {value_rows} hot values")
    ids = ids.to(torch.int64).sort().values
    if ids.numel() and (int(ids[0]) < 0 or int(ids[-1]) >= value_rows or bool((ids[1:] == ids[:-1]).any())):
        raise ConfigError(f"field {name!r}: hot_ids must be distinct ids in 0..{value_rows - 1}")
    return ids.to(torch.int32)  # vocabulary rows are below 2^31 (check_field_rows)


def hot_or_hashed_rows(hot: Tensor, pair: Tensor, shared: int, values: Tensor) -> Tensor:
    """(N,) int64 row of each id of ``values`` (N,): ``i`` where ``hot[i] == x`` (``hot`` sorted int32, H ids),
    else ``H + h(x)`` with ``h`` the universal hash of ``pair`` (1, 2) into ``shared`` rows."""
    h = int(hot.numel())
    values = values.to(torch.int64)
    cold_rows = h + universal_hash(values, pair, shared).squeeze(1)  # (N,)
    if h == 0:
        return cold_rows
    found = torch.searchsorted(hot, values.to(torch.int32)).clamp_(max=h - 1)  # (N,)
    is_hot = hot.index_select(0, found).to(torch.int64) == values
    return torch.where(is_hot, found.to(torch.int64), cold_rows)
