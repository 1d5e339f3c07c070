"""Write a generated log as raw Criteo TSV (label, I1..I13 counts, C1..C26 hex hashes)."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sharkrec.data.synthetic.config import SyntheticConfig
from sharkrec.data.synthetic.generator import SyntheticData, simulate
from sharkrec.errors import ConfigError
from sharkrec.io import atomic_path

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hash32(values: np.ndarray, field_index: int) -> np.ndarray:
    """A bijection of uint32 (per field): distinct ranks give distinct 8-hex-digit ids."""
    mask = np.uint64(0xFFFFFFFF)
    x = (values.astype(np.uint64) ^ np.uint64((0x9E3779B9 * (field_index + 1)) & 0xFFFFFFFF)) & mask
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & mask
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & mask
    x ^= x >> np.uint64(16)
    return x


def _hex8(values: np.ndarray) -> np.ndarray:
    """(n, 8) ASCII bytes of ``values`` as lower-case hex."""
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    return _HEX[((values[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]


def _decimal(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) ASCII digits of non-negative ``values``, right-aligned, leading positions NUL."""
    values = values.astype(np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (values[:, None] // powers) % 10 + ord("0")
    digits[(values[:, None] < powers) & (powers > 1)] = 0
    return digits.astype(np.uint8)


def _tsv_chunk(label: np.ndarray, counts: np.ndarray, hashes: Sequence[np.ndarray]) -> bytes:
    """Criteo lines for n samples: fixed-width byte columns joined by tabs, NUL padding dropped."""
    n = len(label)
    tab = np.full((n, 1), ord("\t"), dtype=np.uint8)
    parts = [_decimal(label, 1)]
    for j in range(counts.shape[1]):
        parts += [tab, _decimal(counts[:, j], 10)]
    for column in hashes:
        parts += [tab, _hex8(column)]
    parts.append(np.full((n, 1), ord("\n"), dtype=np.uint8))
    buffer = np.concatenate(parts, axis=1).ravel()
    return buffer[buffer != 0].tobytes()


def write_criteo_tsv(source: SyntheticData | SyntheticConfig, path: str | Path) -> Path:
    """Write the generated log as raw Criteo TSV: label, I1..I13 counts, C1..C26 8-hex-digit hashes.

    Rows keep their order, so a reader that splits 80/10/10 by row order sees the same splits.
    The data are regenerated from the config (generation is deterministic). A path ending in
    ``.gz`` is gzip-compressed. The file appears only when complete.
    """
    config = source.config if isinstance(source, SyntheticData) else source
    if not isinstance(config, SyntheticConfig):
        raise ConfigError(f"write_criteo_tsv needs SyntheticData or a SyntheticConfig, got {type(source).__name__}")
    if config.num_dense != 13 or config.num_sparse != 26:
        raise ConfigError(
            f"Criteo TSV needs 13 dense and 26 sparse fields, the config has num_dense={config.num_dense},"
            f" num_sparse={config.num_sparse}; use num_dense=13,num_sparse=26"
        )
    raw = simulate(config)
    path = Path(path)
    with atomic_path(path) as tmp:
        opener: Any = gzip.open if path.suffix == ".gz" else open
        with opener(tmp, "wb") as handle:
            for start in range(0, config.rows, 1 << 16):
                rows = slice(start, min(start + (1 << 16), config.rows))
                hashes = [_hash32(ranks[rows], f) for f, ranks in enumerate(raw.ranks)]
                handle.write(_tsv_chunk(raw.labels[rows], raw.dense_counts[rows], hashes))
    return path


def write_criteo_shards(
    config: SyntheticConfig, folder: str | Path, shard_rows: int, shards: Sequence[int] | None = None
) -> list[Path]:
    """Write a log of ``config.rows`` rows as Criteo TSV shards ``train-00000.tsv``, ... of ``shard_rows`` rows.

    For logs too large to simulate at once (:func:`write_criteo_tsv` holds every row): one teacher is
    built from ``config`` and each shard is drawn on its own (shard ``k`` from the random streams
    ``[seed, stream, index, k]``), so memory holds one shard and shards can be written by separate
    processes (``shards``: the shard numbers to write, default all). Each shard appears only when
    complete; an existing shard is kept (a rerun resumes). Rows differ from :func:`write_criteo_tsv`'s.
    """
    from sharkrec.data.synthetic.config import FieldRole
    from sharkrec.data.synthetic.teacher import (
        _CHUNK,
        _build_teacher,
        _calibrate_and_score,
        _coarsening,
        _dense_params,
        _draw_dense,
        _draw_ranks,
        _layout,
        _log_counts,
        _sigmoid,
        _Stream,
        _zipf_cdf,
    )

    if config.num_dense != 13 or config.num_sparse != 26:
        raise ConfigError(
            f"Criteo TSV needs 13 dense and 26 sparse fields, the config has num_dense={config.num_dense},"
            f" num_sparse={config.num_sparse}; use num_dense=13,num_sparse=26"
        )
    if shard_rows < 1:
        raise ConfigError(f"shard_rows {shard_rows} must be 1 or more")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = -(-config.rows // shard_rows)
    chosen = range(count) if shards is None else shards
    paths = [folder / f"train-{k:05d}.tsv" for k in range(count)]
    if all(paths[k].exists() for k in chosen):
        return [paths[k] for k in chosen]
    layout = _layout(config)
    cdfs = [_zipf_cdf(k, s) for k, s in zip(layout.cardinalities, layout.exponents, strict=True)]
    teacher = _build_teacher(config, layout, cdfs)
    _calibrate_and_score(teacher, config, layout, cdfs)  # sets the dense standardisation and the bias
    mu, sigma = _dense_params(config)

    def rng(stream: _Stream, index: int, shard: int) -> np.random.Generator:
        return np.random.default_rng([config.seed, int(stream), index, shard])

    for k in chosen:
        if paths[k].exists():
            continue
        n = min(shard_rows, config.rows - k * shard_rows)
        ranks = [_draw_ranks(rng(_Stream.VALUES, f, k), cdfs[f], n) if role is not FieldRole.REDUNDANT
                 else np.empty(0, dtype=np.int32) for f, role in enumerate(layout.roles)]
        for f, src in enumerate(layout.source):
            if src >= 0:
                ranks[f] = _coarsening(layout.cardinalities[src], layout.cardinalities[f])[ranks[src]]
        counts = _draw_dense(lambda j, k=k: rng(_Stream.DENSE, j, k), mu, sigma, n)
        labels = np.empty(n, dtype=np.int8)
        label_rng = rng(_Stream.LABELS, 0, k)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            logits = teacher.logits([r[start:stop] for r in ranks], _log_counts(counts[start:stop]))
            labels[start:stop] = label_rng.random(stop - start) < _sigmoid(logits)
        with atomic_path(paths[k]) as tmp, open(tmp, "wb") as handle:
            for start in range(0, n, 1 << 16):
                rows = slice(start, min(start + (1 << 16), n))
                hashes = [_hash32(r[rows], f) for f, r in enumerate(ranks)]
                handle.write(_tsv_chunk(labels[rows], counts[rows], hashes))
    return [paths[k] for k in chosen]
