"""Prepared data read back from a :mod:`sharkrec.data.stream` folder: splits memory-mapped, not loaded.

:class:`MappedSplit` is an :class:`EncodedSplit` whose dense values and ids stay in the ``.npy``
files: a batch reads only its rows (the OS page cache keeps the hot pages), so a split larger than
memory trains. The batch order is the in-memory split's (:meth:`EncodedSplit.batches`), so training
on a mapped split gives the same batches, and the same model, as training on the split in memory.
Labels (4 bytes a sample) are held in memory; metrics read them whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.data.dataset import EncodedSplit, PreparedData, SparseColumn
from sharkrec.data.schema import Schema
from sharkrec.data.sources import SPLITS
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import DataError
from sharkrec.io import read_json

STREAM_VERSION = 1
MANIFEST = "manifest.json"


class MappedSplit(EncodedSplit):
    """Rows ``start..stop-1`` of a split folder (``dense.npy``, ``labels.npy``, ``sparse.npy``), memory-mapped."""

    def __init__(self, folder: str | Path, start: int = 0, stop: int | None = None) -> None:
        folder = Path(folder)
        try:
            dense = np.load(folder / "dense.npy", mmap_mode="r")
            sparse = np.load(folder / "sparse.npy", mmap_mode="r")  # (N, S) int32
            labels = np.load(folder / "labels.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"prepared split {folder} cannot be read ({exc}); prepare the data again") from None
        n = len(labels)
        if len(dense) != n or len(sparse) != n:
            raise DataError(f"prepared split {folder} has arrays of different lengths; prepare the data again")
        stop = n if stop is None else stop
        self.folder = folder
        self._range = (start, stop)
        self._dense_map = dense[start:stop]
        self._sparse_map = sparse[start:stop]
        self.labels = torch.from_numpy(np.array(labels[start:stop], dtype=np.float32))
        self.num_sparse = sparse.shape[1]
        self._single_fields = list(range(self.num_sparse))
        self._multi_fields = {}
        self._bag_weights = {}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def dense(self) -> Tensor:  # type: ignore[override]
        """All dense values (N, n_dense) read into memory; batches read only their rows."""
        return torch.from_numpy(np.array(self._dense_map))

    def column(self, field_index: int) -> SparseColumn:
        """The ids of one sparse field (N,) int64, read into memory."""
        return SparseColumn(np.asarray(self._sparse_map[:, field_index], dtype=np.int64))

    def batch(self, index: Tensor) -> Batch:
        """The samples at ``index`` (int64, (B,)): their rows read from the mapped files."""
        rows = index.numpy()
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            picked = slice(int(rows[0]), int(rows[-1]) + 1)  # in order: one contiguous read
            dense, ids = self._dense_map[picked], self._sparse_map[picked]
        else:
            dense, ids = self._dense_map[rows], self._sparse_map[rows]
        ids_by_field = torch.from_numpy(np.ascontiguousarray(ids.T, dtype=np.int64))  # (S, B)
        return Batch(
            dense=torch.from_numpy(np.array(dense, dtype=np.float32)),
            sparse=tuple(FieldIds(ids_by_field[f]) for f in range(self.num_sparse)),
            labels=self.labels.index_select(0, index),
        )

    def subset(self, index: np.ndarray | Tensor) -> EncodedSplit:
        """A contiguous run of samples stays mapped (e.g. a rank's training shard); other picks load into memory."""
        idx = np.asarray(index, dtype=np.int64)
        if len(idx) and np.all(np.diff(idx) == 1) and idx[0] >= 0 and idx[-1] < len(self):
            start = self._range[0]
            return MappedSplit(self.folder, start + int(idx[0]), start + int(idx[-1]) + 1)
        return super().subset(idx)


def is_prepared_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_prepared_dir(path: str | Path) -> PreparedData:
    """The prepared data in folder ``path`` (written by :func:`sharkrec.data.stream.prepare_stream`)."""
    path = Path(path)
    manifest = read_json(path / MANIFEST, "prepared data manifest", DataError,
                         "pass the folder 'sharkrec prepare --stream' wrote (it holds manifest.json)",
                         fix="prepare the data again")
    if not isinstance(manifest, dict) or manifest.get("version") != STREAM_VERSION:
        version = manifest.get("version") if isinstance(manifest, dict) else None
        raise DataError(f"prepared data {path} has manifest version {version!r}, this sharkrec reads version "
                        f"{STREAM_VERSION}; prepare the data again")
    schema = Schema.from_dict(manifest["schema"])
    vocabularies = {}
    for spec, name in zip(schema.sparse, manifest["vocabularies"], strict=True):
        try:
            table = pq.read_table(path / name)
        except (OSError, ValueError) as exc:
            raise DataError(f"vocabulary file {path / name} cannot be read ({exc}); prepare the data again") from None
        metadata = table.schema.metadata or {}
        vocabularies[spec.name] = Vocabulary.from_dict({
            "name": spec.name,
            "min_count": int(metadata.get(b"min_count", b"1")),
            "keys": np.asarray(table.column("key").slice(1).to_numpy(zero_copy_only=False), dtype=object),
            "counts": table.column("count").to_numpy(),
            "positive_counts": table.column("positive_count").to_numpy(),
        })
    splits = {name: MappedSplit(path / name) for name in SPLITS}
    report = dict(manifest.get("report", {}))
    return PreparedData(schema, vocabularies, splits["train"], splits["valid"], splits["test"], report)
