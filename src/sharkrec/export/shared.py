"""Tables that N server processes hold once: memory-mapped files instead of per-process copies.

``sharkrec serve --workers N`` runs N processes on one artifact. Loaded the plain way, each would
hold its own copy of everything the lookups read: the fused kernel's pools (built at load by
concatenating the fields' tiers, :class:`~sharkrec.export.fused.PackedPools`) and each
vocabulary's hash table (``pandas.Index``, built on the first unknown value; for int64 keys it is
larger than the rows it points to). Here those are written once per artifact into a *serving
cache* file, ``<cache dir>/<manifest sha256>.safetensors``:

    pools.fp32 / pools.fp16 / pools.int8 / pools.int4 / pools.ends / pools.shift   the packed pools
    keys.<k>.sorted   (n,) int64: field k's int keys ascending, or for str keys their 64-bit
                      fingerprints (:func:`fingerprint`) ascending
    keys.<k>.order    (n,) int64: the key position (slot order) of each sorted entry

and every process maps it read-only (:func:`read_mapped`: the tensors are views of one shared
mapping, so the pages live once in the page cache and each process's PSS carries a share of them).
A raw value is found by binary search (:class:`SortedKeys`); a str value's fingerprint match is
confirmed against the artifact's key bytes, also mapped, so a lookup gives exactly the slot the
hash table would. The artifact files themselves are mapped too, and checked (sha256, shapes) as by
:func:`~sharkrec.export.artifact.load_artifact`.

The cache file is written atomically under a lock (the first process builds it, the others wait
and map it) and is checked against its own sha256 before use; a damaged one is rebuilt. It is
derived data: deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import struct
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from sharkrec.errors import CheckpointError
from sharkrec.io import atomic_path

LAYOUT = "1"  # bumped when the cache file's contents change meaning

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def read_mapped(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of a safetensors file as read-only views of one shared memory map (no copy), and its
    metadata. The mapping lives as long as any of the tensors; never write to them."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"{str(path)!r} is not a safetensors file ({size} bytes)")
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    (length,) = struct.unpack("<Q", mapping[:8])
    if not 8 + length <= size:
        raise CheckpointError(f"{str(path)!r} is not a safetensors file (its header runs past the end)")
    header = json.loads(mapping[8:8 + length])
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        count = (end - start) // dtype.itemsize
        if not 0 <= start <= end <= size - base:
            raise CheckpointError(f"{str(path)!r} is damaged: tensor {name!r} lies outside the file")
        if count == 0:
            tensors[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        with warnings.catch_warnings():  # read-only by design: the tensors are never written
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(mapping, dtype=dtype, count=count, offset=base + start)
        tensors[name] = flat.reshape(info["shape"])
    return tensors, metadata


def fingerprint(text: str) -> int:
    """A 64-bit fingerprint of a key's text, the same in every process (blake2b, as a signed int64)."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class StrKeys:
    """A str vocabulary's keys as the artifact stores them (UTF-8 bytes and (n + 1,) offsets), without one
    Python string per key; ``np.asarray(keys)`` builds the object array when something needs it."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = blob
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def encoded(self, position: int) -> bytes:
        return self.blob[self.offsets[position]:self.offsets[position + 1]].tobytes()

    def __getitem__(self, position: int) -> str:
        return self.encoded(position).decode("utf-8", errors="surrogateescape")

    def __iter__(self) -> Iterator[str]:
        return (self[p] for p in range(len(self)))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(list(self), dtype=object)


@dataclass(frozen=True)
class SortedKeys:
    """Raw value → key position by binary search over the keys sorted once (no hash table in the process).

    ``sorted`` (n,) int64: int keys, or str keys' fingerprints, ascending; ``order`` (n,) int64: the key
    position of each; ``texts``: for str keys, the keys themselves, to confirm a fingerprint match.
    """

    sorted: np.ndarray
    order: np.ndarray
    texts: StrKeys | None = None

    @classmethod
    def build(cls, keys: np.ndarray | StrKeys) -> tuple[np.ndarray, np.ndarray]:
        """(sorted, order) of int64 ``keys`` or of str keys' fingerprints."""
        if isinstance(keys, StrKeys):
            values = np.fromiter((fingerprint(text) for text in keys), dtype=np.int64, count=len(keys))
        else:
            values = np.asarray(keys, dtype=np.int64)
        order = np.argsort(values, kind="stable")
        return values[order], order.astype(np.int64)

    def find(self, values: np.ndarray) -> np.ndarray:
        """(N,) key positions of (N,) int64 ``values``, -1 where absent."""
        values = np.asarray(values, dtype=np.int64)
        if len(self.sorted) == 0:
            return np.full(len(values), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.sorted, values), len(self.sorted) - 1)
        return np.where(self.sorted[at] == values, self.order[at], -1)

    def find_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) key positions of str ``texts``, -1 where absent (a fingerprint match is confirmed byte for byte)."""
        assert self.texts is not None
        prints = np.fromiter((fingerprint(text) for text in texts), dtype=np.int64, count=len(texts))
        at = np.searchsorted(self.sorted, prints)
        out = np.full(len(texts), -1, dtype=np.int64)
        for i, (text, start) in enumerate(zip(texts, at.tolist(), strict=True)):
            encoded = text.encode("utf-8", errors="surrogateescape")
            j = start
            while j < len(self.sorted) and self.sorted[j] == prints[i]:  # equal fingerprints: compare the bytes
                position = int(self.order[j])
                if self.texts.encoded(position) == encoded:
                    out[i] = position
                    break
                j += 1
        return out


def cache_file(folder: str | os.PathLike[str], manifest_digest: str) -> Path:
    return Path(folder) / f"{manifest_digest}-layout{LAYOUT}.safetensors"


def open_or_build(path: Path, build: Any) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The mapped tensors of cache file ``path``, first written by ``build()`` → ``(tensors, metadata)`` when
    the file is absent or damaged (under a lock, so concurrent processes build it once)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the serving cache folder {str(path.parent)!r} ({exc.strerror}); give "
                              "a writable one with --cache-dir") from None
    with _locked(path.with_name(path.name + ".lock")):
        if not _intact(path):
            tensors, metadata = build()
            with atomic_path(path) as temporary:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)
            with atomic_path(path.with_name(path.name + ".sha256")) as temporary:
                temporary.write_text(_sha256(path) + "\n", encoding="ascii")
        return read_mapped(path)


def _intact(path: Path) -> bool:
    digest = path.with_name(path.name + ".sha256")
    if not path.is_file() or not digest.is_file():
        return False
    return digest.read_text(encoding="ascii").strip() == _sha256(path)


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            hasher.update(block)
    return hasher.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cache_tensors(pools: Mapping[str, Tensor], keys: Mapping[int, tuple[np.ndarray, np.ndarray]]
                  ) -> dict[str, Tensor]:
    """The cache file's tensors: ``pools.*`` and, per kept field k, ``keys.k.sorted`` / ``keys.k.order``."""
    out = {f"pools.{name}": tensor for name, tensor in pools.items()}
    for k, (sorted_keys, order) in keys.items():
        out[f"keys.{k}.sorted"] = torch.from_numpy(np.ascontiguousarray(sorted_keys))
        out[f"keys.{k}.order"] = torch.from_numpy(np.ascontiguousarray(order))
    return out
