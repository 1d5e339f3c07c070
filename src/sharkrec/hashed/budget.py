"""Build a hashed embedding for a byte budget: one call per (kind, budget), so a benchmark sweeps 2x..100x.

::

    layer = hashed_embedding("qr", field_rows, 16, target_bytes=fp32_bytes // 10)
    small = hashed_model(model, "hybrid", target_bytes, frequencies=value_counts(data))

The budget is split over the fields in proportion to their vocabulary rows (each field between the
fewest bytes its kind can hold it in and the most it can use), then each field's layout is the largest
that fits its share; the layer's :meth:`embedding_bytes` is at most ``target_bytes`` and, above the
floors, within one fp32 row per field of it (ROBE: within 4 bytes, its array is one number; mixed dims
just above their floor can fall short by up to one block's projection, d_b × D weights, which did not fit).
The layers start untrained: they are trained from scratch (a trained model only gives the shape).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from sharkrec.errors import ConfigError, parse_choice
from sharkrec.hashed.hashing import check_field_rows
from sharkrec.hashed.hybrid import HybridEmbedding, hottest_ids
from sharkrec.hashed.mixed import MixedDimEmbedding
from sharkrec.hashed.qr import QREmbedding, quotient_rows
from sharkrec.hashed.robe import RobeEmbedding
from sharkrec.model.embedding import FieldEmbedding
from sharkrec.model.protocol import check_field_path

_PAIR_BYTES = 16  # one (a, b) int64 hash pair
_START_BYTES = 8  # one int64 block start


class HashedKind(str, enum.Enum):
    """Embedding layers with no per-value state."""

    QR = "qr"
    ROBE = "robe"
    HYBRID = "hybrid"
    MIXED_DIM = "mixed_dim"


_OPTIONS = {HashedKind.QR: {"combine"}, HashedKind.ROBE: {"chunk_size", "signed"},
            HashedKind.HYBRID: {"hot_share", "min_rows"}, HashedKind.MIXED_DIM: {"min_dim", "growth"}}


def hashed_embedding(kind: HashedKind | str, field_rows: Mapping[str, int], embedding_dim: int, target_bytes: int, *,
                     seed: int = 0, frequencies: Mapping[str, Tensor] | None = None,
                     **options: Any) -> FieldEmbedding:
    """An untrained layer of ``kind`` over ``field_rows`` whose bytes are at most ``target_bytes``.

    Args:
        kind: qr, robe, hybrid or mixed_dim.
        field_rows: vocabulary rows V per field.
        frequencies: per field, (V,) training counts of each id (:func:`sharkrec.cluster.saec.value_counts`);
            hybrid needs them (its hot set); mixed_dim checks them (ids must be numbered hottest first).
        options: qr ``combine`` ("multiply" / "add"); robe ``chunk_size`` (default 8, capped at D) and
            ``signed`` (True); hybrid ``hot_share`` (share of a field's bytes for hot rows, default 0.5) and
            ``min_rows`` (a field of at most this many values keeps every seen value hot, default 1);
            mixed_dim ``min_dim`` (narrowest block, default 1) and ``growth`` (each narrower block
            holds this many times the ids of the one before, default 4).
    """
    kind = parse_choice(HashedKind, kind, "hashed embedding kind")
    unknown = sorted(set(options) - _OPTIONS[kind])
    if unknown:
        raise ConfigError(f"{kind.value} takes no option {unknown}; its options are {sorted(_OPTIONS[kind])}")
    rows = check_field_rows(field_rows)
    dim = int(embedding_dim)
    if dim < 1:
        raise ConfigError(f"embedding_dim is {embedding_dim}; use 1 or more")
    if int(target_bytes) <= 0:
        raise ConfigError(f"target_bytes is {target_bytes}; use a positive number of bytes")
    builders: dict[HashedKind, Callable[..., FieldEmbedding]] = {
        HashedKind.QR: _qr, HashedKind.ROBE: _robe, HashedKind.HYBRID: _hybrid, HashedKind.MIXED_DIM: _mixed}
    return builders[kind](rows, dim, int(target_bytes), seed=int(seed), frequencies=frequencies, **options)


def hashed_model(model: Any, kind: HashedKind | str, target_bytes: int, *, seed: int = 0,
                 frequencies: Mapping[str, Tensor] | None = None, **options: Any) -> Any:
    """A new model (dense network copied) whose embedding is an untrained ``kind`` layer of at most
    ``target_bytes``, over the fields and vocabulary rows ``model`` was built with."""
    check_field_path(model, "hash")
    if model.embedding.removed_fields():
        raise ConfigError("this model has pruned fields; build the hashed layer on the unpruned model, then prune")
    all_rows = model.field_rows()
    rows = {name: all_rows[name] for name in model.embedding.field_names}
    layer = hashed_embedding(kind, rows, model.embedding_dim, target_bytes, seed=seed, frequencies=frequencies,
                             **options)
    return model.with_embedding(layer)


def split_budget(total: int, low: Mapping[str, int], high: Mapping[str, int], what: str) -> dict[str, int]:
    """Bytes per field: ``total`` shared in proportion to ``high`` (each field between its ``low`` and ``high``).

    Raises a one-line :class:`ConfigError` naming the floor when ``total`` is below ``Σ low``.
    """
    floor = sum(low.values())
    if total < floor:
        raise ConfigError(f"a budget of {total} bytes cannot hold a {what} layer: its floor over these fields is "
                          f"{floor} bytes; raise target_bytes to {floor} or more")
    share = {name: 0 for name in low}
    free = set(low)
    left = total
    while free:  # water-filling: fields pinned at low or high leave the rest to the others
        weight = sum(high[n] for n in free)
        proposal = {n: left * high[n] / weight for n in free}
        pinned = {n: low[n] if p < low[n] else high[n] for n, p in proposal.items() if p < low[n] or p > high[n]}
        if not pinned:
            share.update({n: math.floor(p) for n, p in proposal.items()})
            break
        for name, value in pinned.items():
            share[name] = value
            left -= value
            free.discard(name)
    return share


# ---------------------------------------------------------------------------------------------- per kind
def _qr(rows: dict[str, int], dim: int, target: int, *, seed: int, frequencies: Any,
        combine: str = "multiply") -> QREmbedding:
    row_bytes = dim * 4
    low = {n: _qr_rows(v, _qr_best_m(v)) * row_bytes for n, v in rows.items()}
    high = {n: (v + 1) * row_bytes for n, v in rows.items()}  # m = V: one quotient row
    budget = split_budget(target, low, high, "qr")
    remainder_rows = {n: _largest_m(v, budget[n] // row_bytes) for n, v in rows.items()}
    generator = torch.Generator().manual_seed(seed)
    return QREmbedding(rows, remainder_rows, dim, combine=combine, generator=generator)


def _qr_rows(value_rows: int, m: int) -> int:
    return m + quotient_rows(value_rows, m)


def _qr_best_m(value_rows: int) -> int:
    """The m in [1, V] with the fewest rows m + ⌈V/m⌉ (near √V)."""
    root = math.isqrt(value_rows)
    candidates = {max(1, min(value_rows, c)) for c in (root, root + 1)}
    return min(candidates, key=lambda m: (_qr_rows(value_rows, m), m))


def _largest_m(value_rows: int, budget_rows: int) -> int:
    """The largest m in [√V, V] with m + ⌈V/m⌉ ≤ ``budget_rows`` (that count is non-decreasing there, and
    reaches every integer on its way, so it lands on ``budget_rows`` itself unless m = V)."""
    low, high = _qr_best_m(value_rows), value_rows
    while low < high:
        middle = (low + high + 1) // 2
        if _qr_rows(value_rows, middle) <= budget_rows:
            low = middle
        else:
            high = middle - 1
    return low


def _robe(rows: dict[str, int], dim: int, target: int, *, seed: int, frequencies: Any, chunk_size: int = 8,
          signed: bool = True) -> RobeEmbedding:
    chunk = min(int(chunk_size), dim)
    hashes = len(rows) * -(-dim // max(chunk, 1)) * (2 if signed else 1)
    size = (target - hashes * _PAIR_BYTES) // 4
    if size < chunk:
        floor = hashes * _PAIR_BYTES + chunk * 4
        raise ConfigError(f"a budget of {target} bytes cannot hold a robe layer: its floor (hash parameters plus one "
                          f"chunk of {chunk} weights) is {floor} bytes; raise target_bytes to {floor} or more")
    generator = torch.Generator().manual_seed(seed)
    return RobeEmbedding(rows, dim, size, chunk_size=chunk, signed=signed, seed=seed, generator=generator)


def _hybrid(rows: dict[str, int], dim: int, target: int, *, seed: int, frequencies: Mapping[str, Tensor] | None,
            hot_share: float = 0.5, min_rows: int = 1) -> HybridEmbedding:
    if frequencies is None or set(rows) - set(frequencies):
        raise ConfigError("hybrid picks each field's hot values by frequency; pass frequencies=value_counts(data) "
                          "(sharkrec.cluster.saec) covering every field")
    if not 0.0 <= float(hot_share) <= 1.0:
        raise ConfigError(f"hot_share is {hot_share}; use the share of a field's bytes for hot rows, in [0, 1]")
    row_bytes, hot_bytes = dim * 4, dim * 4 + 4  # a hot row also stores its int32 id
    counts = {n: _checked_counts(n, frequencies[n], v) for n, v in rows.items()}
    low = {n: _PAIR_BYTES + row_bytes for n in rows}  # no hot value, one shared row
    high = {n: _PAIR_BYTES + int((counts[n] > 0).sum()) * hot_bytes + row_bytes for n in rows}
    low.update({n: high[n] for n, v in rows.items() if v <= int(min_rows)})  # small fields: every seen value hot
    budget = split_budget(target, low, high, "hybrid")
    hot_ids, shared = {}, {}
    for name in rows:
        spare = budget[name] - _PAIR_BYTES - row_bytes
        seen = int((counts[name] > 0).sum())
        hot = seen if budget[name] >= high[name] else min(seen, int(float(hot_share) * spare) // hot_bytes)
        hot_ids[name] = hottest_ids(counts[name], hot)
        shared[name] = 1 + (spare - hot * hot_bytes) // row_bytes
    generator = torch.Generator().manual_seed(seed)
    return HybridEmbedding(rows, hot_ids, shared, dim, seed=seed, generator=generator)


def _checked_counts(name: str, counts: Tensor, value_rows: int) -> Tensor:
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() != value_rows:
        raise ConfigError(f"field {name!r}: frequencies has shape {tuple(counts.shape)} but the field has "
                          f"{value_rows} rows; pass value_counts(data) of the data the model was built on")
    return counts


def _mixed(rows: dict[str, int], dim: int, target: int, *, seed: int, frequencies: Mapping[str, Tensor] | None,
           min_dim: int | None = None, growth: float = 4.0) -> MixedDimEmbedding:
    narrowest = 1 if min_dim is None else int(min_dim)
    if not 1 <= narrowest <= dim:
        raise ConfigError(f"min_dim is {min_dim}; use 1..{dim} (the embedding dim)")
    if not float(growth) >= 1.0:
        raise ConfigError(f"growth is {growth}; use 1 or more (each narrower block holds that many times the ids)")
    for name in frequencies or {}:
        if name in rows:
            _check_hottest_first(name, _checked_counts(name, frequencies[name], rows[name]))  # type: ignore[index]
    dims = [dim]
    while dims[-1] // 2 >= narrowest:
        dims.append(dims[-1] // 2)
    low = {n: _mixed_bytes(list(zip(_mixed_layout(v, 0, dims, growth), dims, strict=True)), dim)
           for n, v in rows.items()}
    high = {n: _mixed_bytes([(v, dim)], dim) for n, v in rows.items()}
    budget = split_budget(target, low, high, "mixed_dim")
    blocks = {n: _fit_blocks(v, budget[n], dims, float(growth), dim) for n, v in rows.items()}
    # a field's share can end far below it (a wider block's projection did not fit): the largest fields take
    # what the others left, one by one
    for name in sorted(rows, key=lambda n: -rows[n]):
        left = target - sum(_mixed_bytes(b, dim) for b in blocks.values())
        if left > 0:
            blocks[name] = _fit_blocks(rows[name], _mixed_bytes(blocks[name], dim) + left, dims, float(growth), dim)
    generator = torch.Generator().manual_seed(seed)
    return MixedDimEmbedding(blocks, dim, generator=generator)


def _check_hottest_first(name: str, counts: Tensor) -> None:
    """Mixed dims cut fields into id ranges, so ids past the OOV row 0 must be numbered by falling frequency."""
    if counts.numel() > 2 and bool((counts[2:] > counts[1:-1]).any()):
        raise ConfigError(f"field {name!r}: ids are not numbered hottest first, so blocks of consecutive ids are not "
                          "frequency blocks; encode the data with sharkrec's vocabularies (mixed dims would otherwise "
                          "need a 4 B per value map)")


def _mixed_layout(value_rows: int, hot: int, dims: list[int], growth: float) -> list[int]:
    """Ids per block: ``hot`` at full width, each narrower block ``growth`` times the one before, the rest last."""
    sizes, left = [], value_rows
    for b in range(len(dims) - 1):
        take = min(left, int(hot * growth**b))
        sizes.append(take)
        left -= take
    return [*sizes, left]


def _mixed_bytes(blocks: list[tuple[int, int]], dim: int) -> int:
    """Bytes of one field's non-empty blocks: rows, projections and block starts."""
    return sum(r * d * 4 + d * dim * 4 + _START_BYTES for r, d in blocks if r > 0)


def _fit_blocks(value_rows: int, budget: int, dims: list[int], growth: float, dim: int) -> list[tuple[int, int]]:
    """The widest layout of one field within ``budget`` bytes: the largest ``hot`` whose layout fits (charged
    for every block's projection, which keeps the search monotone), then single ids moved one block wider,
    hottest boundary first, while they fit."""
    def charged(hot: int) -> int:
        sizes = _mixed_layout(value_rows, hot, dims, growth)
        return sum(r * d * 4 + d * dim * 4 + _START_BYTES for r, d in zip(sizes, dims, strict=True))

    low, high = 0, value_rows
    while low < high:
        middle = (low + high + 1) // 2
        if charged(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    sizes = _mixed_layout(value_rows, low, dims, growth)
    moved = True
    while moved:
        moved = False
        for b in range(len(dims) - 1):
            if sizes[b + 1] == 0:
                continue
            trial = list(sizes)
            trial[b] += 1
            trial[b + 1] -= 1
            if _mixed_bytes(list(zip(trial, dims, strict=True)), dim) <= budget:
                sizes, moved = trial, True
                break
    return [(r, d) for r, d in zip(sizes, dims, strict=True) if r > 0]
