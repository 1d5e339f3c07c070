"""On-disk cache of prepared data.

An entry is one ``.npz`` file (arrays plus a JSON header, no pickles) named by a key: the sha256 of
the full content of every input file (with its split role, name and size), the schema, the split
fractions, ``min_count``, the format and :data:`CACHE_VERSION`. Any change to the input bytes or a
setting gives a new key. Entries are written atomically; an unreadable or inconsistent entry is
treated as absent and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sharkrec.data.dataset import EncodedSplit, PreparedData, SparseColumn
from sharkrec.data.schema import Schema
from sharkrec.data.sources import SPLITS, SourceFiles
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import ConfigError
from sharkrec.io import atomic_path

CACHE_VERSION = 2  # 2: split files without their own header line read as data
_CHUNK = 1 << 20


def cache_key(
    fmt: str,
    sources: SourceFiles,
    schema: Schema,
    split: tuple[float, float, float],
    min_count: int | None,
    vocabularies: Mapping[str, Vocabulary] | None = None,
) -> str:
    """Hex sha256 of the inputs' content and every setting that shapes the prepared arrays
    (including given vocabularies, by content)."""
    digest = hashlib.sha256()
    settings = {
        "cache_version": CACHE_VERSION,
        "format": fmt,
        "schema": schema.to_dict(),
        "split": list(split),
        "min_count": min_count,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for role, paths in sources.by_split().items():
        for path in paths:
            members = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            for member in members:
                digest.update(f"\0{role}\0{member.name}\0{member.stat().st_size}\0".encode())
                digest.update(_file_digest(member))
    given = vocabularies or {}
    for name in sorted(given):
        vocabulary = given[name]
        digest.update(f"\0vocabulary\0{name}\0{vocabulary.min_count}\0".encode())
        digest.update("\0".join(str(key) for key in vocabulary.keys_).encode("utf-8", errors="surrogateescape"))
        digest.update(np.ascontiguousarray(vocabulary.counts_, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(vocabulary.positive_counts_, dtype=np.int64).tobytes())
    return digest.hexdigest()


def cache_file(cache_dir: str | Path, fmt: str, key: str) -> Path:
    return Path(cache_dir) / f"{fmt}-{key[:32]}.npz"


def save_prepared(path: Path, key: str, prepared: PreparedData) -> None:
    """Write ``prepared`` (splits, vocabularies, report) to ``path`` atomically."""
    arrays: dict[str, np.ndarray] = {}
    multi_hot = [spec.is_multi_hot for spec in prepared.schema.sparse]
    for name in SPLITS:
        split = prepared.split(name)
        arrays[f"{name}.dense"] = split.dense.numpy()
        arrays[f"{name}.labels"] = split.labels.numpy()
        for field_index in range(split.num_sparse):
            column = split.column(field_index)
            arrays[f"{name}.sparse{field_index}.values"] = np.asarray(column.values, dtype=np.int64)
            if column.offsets is not None:
                arrays[f"{name}.sparse{field_index}.offsets"] = np.asarray(column.offsets, dtype=np.int64)
    names = list(prepared.schema.sparse_names)
    for index, field_name in enumerate(names):
        vocabulary = prepared.vocabularies[field_name]
        arrays[f"vocab{index}.keys"] = np.asarray([str(k) for k in vocabulary.keys_], dtype=str)
        arrays[f"vocab{index}.counts"] = vocabulary.counts_
        arrays[f"vocab{index}.positive_counts"] = vocabulary.positive_counts_
    header = {
        "cache_version": CACHE_VERSION,
        "key": key,
        "fields": names,
        "min_counts": [prepared.vocabularies[n].min_count for n in names],
        "multi_hot": multi_hot,
        "report": prepared.report,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
    except OSError as exc:
        raise ConfigError(
            f"cannot write the data cache {path} ({exc.strerror}); pass a writable cache folder"
        ) from None


def load_prepared(path: Path, key: str, schema: Schema) -> PreparedData | None:
    """The entry at ``path``, or None when it is absent, unreadable or not for ``key``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = json.loads(bytes(archive["header"]).decode())
            if header.get("cache_version") != CACHE_VERSION or header.get("key") != key:
                return None
            if header["fields"] != list(schema.sparse_names):
                return None
            splits = {name: _load_split(archive, name, header["multi_hot"]) for name in SPLITS}
            vocabularies = {
                field_name: Vocabulary.from_dict({
                    "name": field_name,
                    "min_count": header["min_counts"][index],
                    "keys": archive[f"vocab{index}.keys"].astype(object),
                    "counts": archive[f"vocab{index}.counts"],
                    "positive_counts": archive[f"vocab{index}.positive_counts"],
                })
                for index, field_name in enumerate(header["fields"])
            }
            report: dict[str, Any] = dict(header["report"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    return PreparedData(schema, vocabularies, splits["train"], splits["valid"], splits["test"], report)


def _load_split(archive: Any, name: str, multi_hot: list[bool]) -> EncodedSplit:
    columns = []
    for field_index, is_multi in enumerate(multi_hot):
        values = archive[f"{name}.sparse{field_index}.values"]
        offsets = archive[f"{name}.sparse{field_index}.offsets"] if is_multi else None
        columns.append(SparseColumn(values, offsets))
    return EncodedSplit(archive[f"{name}.dense"], columns, archive[f"{name}.labels"])


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()
