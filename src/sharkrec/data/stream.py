"""Streaming preparation: raw input -> vocabularies and memory-mapped splits, one chunk in memory at a time.

Two passes over chunks (:mod:`sharkrec.data.chunks`), with peak memory set by the chunk size and the
vocabularies, not by the input size:

1. Read each chunk once: check it (bad lines as :func:`sharkrec.data.prepare.prepare_data` records
   them), dictionary-encode every sparse field (Arrow), write the transformed dense values, labels and
   chunk-local ids to a work folder, and add the chunk's value counts to a running merge (Arrow
   group-by; only rows of the train split count, as in memory).
2. Fit the vocabularies from the merged counts (:meth:`Vocabulary.fit_counts`, the same rules), map
   each chunk's dictionary to vocabulary rows and write the rows into one ``.npy`` file per array and
   split, at their place in row order.

Splits follow the same rules as in memory (:func:`carve_bounds`): the train rows in order, valid and
test from their own files or selections or carved from the end of the train rows. The output folder::

    manifest.json            version, schema, rows per split, vocabulary files, the data report
    train/dense.npy          (N, n_dense) float32, signed_log1p applied
    train/labels.npy         (N, T) float32
    train/sparse.npy         (N, n_sparse) int32 vocabulary rows (0 = OOV)
    valid/..., test/...
    vocab/<field>.parquet    key (string, null for the OOV row), count, positive_count

is built in a temporary sibling folder and renamed into place when complete: an interrupted run leaves
no partial output (the next run under the same output lock deletes the leftovers). Read it back with
:func:`sharkrec.data.mapped.load_prepared_dir`.

Under torchrun (Parquet dataset folders): each rank reads its own row groups
(:func:`sharkrec.data.parquet_dir.rank_pieces`), the ranks' counts are merged so every rank fits the same
vocabularies, and each rank writes its rows into the shared output files; the result equals one process's.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq

from sharkrec.data.chunks import (
    DEFAULT_CHUNK_BYTES,
    RowsChunk,
    check_streamable,
    criteo_chunk,
    parquet_chunks,
    text_blocks,
)
from sharkrec.data.encode import MISSING_VALUE, signed_log1p
from sharkrec.data.formats.text import BadLines, OnBadLine
from sharkrec.data.mapped import MANIFEST, STREAM_VERSION
from sharkrec.data.parquet_dir import file_pieces, is_dataset_dir, open_dataset, rank_pieces
from sharkrec.data.prepare import (
    DEFAULT_SPLIT,
    bad_line_summary,
    carve_bounds,
    check_file_rows,
    check_min_count,
    check_split,
    check_splits_not_empty,
)
from sharkrec.data.readers import DataFormat, schema_for
from sharkrec.data.schema import Schema
from sharkrec.data.sources import SPLITS, find_sources
from sharkrec.data.vocab import OOV_ROW, Vocabulary
from sharkrec.distributed import all_gather_objects, barrier, broadcast_object
from sharkrec.errors import ConfigError, DataError

STREAM_ABOVE_BYTES = 1 << 30  # inputs larger than this stream by default (the in-memory path holds ~4x the file)
_MERGE_EVERY = 8  # chunk count tables held before they are folded into the running merge
_PARQUET_ROW_BYTES = 256  # rows per Parquet batch: chunk_bytes / this


@dataclass(frozen=True)
class _Input:
    """One source of rows: ``role`` is the split its rows belong to before carving, ``source`` the file."""

    role: str
    source: str
    chunks: Callable[[], Iterator[RowsChunk]]


@dataclass
class _ChunkInfo:
    index: int
    role: str
    rows: int
    role_start: int  # position of its first row among this rank's rows of ``role``
    dict_sizes: np.ndarray  # (S,) distinct values per field in this chunk


@dataclass
class _Pass1:
    chunks: list[_ChunkInfo] = field(default_factory=list)
    role_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    records: dict[str, BadLines] = field(default_factory=dict)
    file_rows: dict[str, int] = field(default_factory=dict)
    missing: np.ndarray | None = None  # (n_dense + n_sparse,) missing cells


def prepare_stream(
    fmt: str,
    path: str | Path,
    out: str | Path,
    schema: Schema | None = None,
    *,
    on_bad_line: str = "skip",
    split: tuple[float, float, float] = DEFAULT_SPLIT,
    min_count: int | None = None,
    vocabularies: Mapping[str, Vocabulary] | None = None,
    partitions: Mapping[str, str] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Prepare ``path`` into the folder ``out`` (see the module docstring); returns the data report.

    Args:
        fmt: ``criteo`` (a file or a folder of train/valid/test files, plain or gzip) or ``parquet``
            (a file, or a dataset folder of ``part-*.parquet`` files and ``key=value`` partitions).
        partitions: for a Parquet dataset folder, a partition selection per split (``{"train": "day<=17"}``).
        chunk_bytes: about how many input bytes one chunk holds (Parquet: ``chunk_bytes / 256`` rows).
        on_progress: called with (rows read so far, pass number 1 or 2) after every chunk.
        Other arguments as :func:`sharkrec.data.prepare.prepare_data`.
    """
    started = time.perf_counter()
    data_format = DataFormat.parse(fmt)
    policy = OnBadLine.parse(on_bad_line)
    fractions = check_split(split)
    check_min_count(min_count)
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1 << 10:
        raise ConfigError(f"chunk size {chunk_bytes!r} bytes must be an integer of 1024 or more")
    schema = schema if schema is not None else schema_for(data_format, path)
    check_streamable(schema)
    if vocabularies is not None and sorted(vocabularies) != sorted(schema.sparse_names):
        raise ConfigError(
            f"the given vocabularies cover fields {sorted(vocabularies)} but the schema's sparse fields are "
            f"{list(schema.sparse_names)}; use the schema the model was trained with"
        )
    rank, world = _rank_world()
    inputs, carved, sources = _inputs(data_format, Path(path), schema, partitions, chunk_bytes, rank, world)
    out = Path(out)
    work = _work_folder(out, rank, world)
    try:
        pass1 = _agreed(lambda: _read_chunks(inputs, schema, policy, work / f"rank{rank}", on_progress), world)
        report = _finish(pass1, schema, carved, fractions, min_count, vocabularies, work, rank, world, on_progress)
        report.update(format=data_format.value, sources=sources, chunk_bytes=chunk_bytes, world_size=world)
        if rank == 0:
            report["seconds"] = time.perf_counter() - started
            _write_manifest(work, schema, report)
            _replace_folder(work, out)
        barrier()
        return report
    finally:
        if rank == 0 and work.exists():
            shutil.rmtree(work, ignore_errors=True)


def should_stream(fmt: str, data: str | Path | None, stream: bool | None, partitions: Mapping[str, str]) -> bool:
    """Whether ``sharkrec prepare`` streams: as asked, else for partition selections, Parquet dataset folders
    and criteo/parquet inputs of more than :data:`STREAM_ABOVE_BYTES`."""
    if stream is not None:
        if not stream and partitions:
            raise ConfigError("partition selections (--train/--valid/--test) need streaming; leave out --no-stream")
        return stream
    if partitions or data is None:
        return bool(partitions)
    path = Path(data)
    if fmt == "parquet" and is_dataset_dir(path):
        return True
    if fmt not in ("criteo", "parquet") or not path.exists():
        return False
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files) > STREAM_ABOVE_BYTES


# -- inputs ----------------------------------------------------------------------------------------


def _inputs(
    data_format: DataFormat, path: Path, schema: Schema, partitions: Mapping[str, str] | None, chunk_bytes: int,
    rank: int, world: int,
) -> tuple[list[_Input], tuple[str, ...], dict[str, list[str]]]:
    """This rank's inputs in row order, the carved splits, and the files of each split for the report."""
    if data_format is DataFormat.PARQUET and path.is_dir():
        dataset = open_dataset(path, partitions)
        batch_rows = max(1, chunk_bytes // _PARQUET_ROW_BYTES)
        inputs = [
            _Input(role, str(piece.path),
                   _parquet_input(piece.path, piece.row_group, piece.first_row, schema, batch_rows))
            for role in SPLITS if dataset.pieces[role]
            for piece in rank_pieces(dataset.pieces[role], role, rank, world)
        ]
        return inputs, dataset.carved, {role: [str(p) for p in dataset.files(role)] for role in SPLITS}
    if partitions:
        raise ConfigError("partition selections (--train/--valid/--test) need --format parquet with a dataset folder")
    if world > 1:
        raise ConfigError(
            "streaming preparation of files under torchrun reads Parquet dataset folders only; run "
            "'sharkrec prepare' once without torchrun, then train on its output with torchrun"
        )
    if data_format not in (DataFormat.CRITEO, DataFormat.PARQUET):
        raise ConfigError(
            f"streaming preparation reads criteo and parquet data, not {data_format.value!r}; prepare it in memory "
            "(leave out --stream)"
        )
    files = find_sources(path, data_format.value)
    inputs = []
    for role, paths in files.by_split().items():
        for file in paths:
            if data_format is DataFormat.CRITEO:
                inputs.append(_Input(role, str(file), _criteo_input(file, schema, chunk_bytes)))
            else:
                batch_rows = max(1, chunk_bytes // _PARQUET_ROW_BYTES)
                for piece in file_pieces(file, {}):
                    inputs.append(_Input(role, str(file), _parquet_input(file, piece.row_group, piece.first_row,
                                                                         schema, batch_rows)))
    return inputs, files.carved, {role: [str(p) for p in paths] for role, paths in files.by_split().items()}


def _criteo_input(file: Path, schema: Schema, chunk_bytes: int) -> Callable[[], Iterator[RowsChunk]]:
    def chunks() -> Iterator[RowsChunk]:
        for block, first_line in text_blocks(file, chunk_bytes):
            yield criteo_chunk(block, str(file), first_line, schema)

    return chunks


def _parquet_input(file: Path, group: int, first_row: int, schema: Schema, batch_rows: int
                   ) -> Callable[[], Iterator[RowsChunk]]:
    return lambda: parquet_chunks(file, group, first_row, schema, batch_rows)


# -- pass 1: check, dictionary-encode, count -----------------------------------------------------


def _read_chunks(inputs: Sequence[_Input], schema: Schema, policy: OnBadLine, folder: Path,
                 on_progress: Callable[[int, int], None] | None) -> _Pass1:
    folder.mkdir(parents=True, exist_ok=True)
    state = _Pass1(missing=np.zeros(len(schema.dense) + len(schema.sparse), dtype=np.int64))
    for item in inputs:
        state.file_rows.setdefault(item.source, 0)
        # three stages on their own threads: read and parse, encode, save (Arrow and numpy release the GIL)
        for encoded in _read_ahead(map(_encode_chunk, _read_ahead(item.chunks()))):
            chunk = encoded.chunk
            record = chunk.bad_lines
            if policy is OnBadLine.ERROR and record.count:
                raise record.error()
            previous = state.records.get(item.source)
            state.records[item.source] = record if previous is None else previous.merge(record)
            if len(chunk) == 0:
                continue
            info = _ChunkInfo(len(state.chunks), item.role, len(chunk), state.role_rows[item.role], np.zeros(0))
            info.dict_sizes = _save_chunk(encoded, folder / f"{info.index:06d}", state.missing)
            state.chunks.append(info)
            state.role_rows[item.role] += len(chunk)
            state.file_rows[item.source] += len(chunk)
            if on_progress is not None:
                on_progress(sum(state.role_rows.values()), 1)
    return state


def _read_ahead(items: Iterator[Any]) -> Iterator[Any]:
    """``items`` in order, the next one made by a helper thread while the caller works on the current one;
    at most three are alive (the caller's, one waiting, one being made)."""
    chunks = items
    ready: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                ready.put((chunk, None))
            ready.put((None, None))
        except BaseException as exc:  # handed to the caller, which raises it
            ready.put((None, exc))

    worker = threading.Thread(target=produce, name="sharkrec-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            chunk, failure = ready.get()
            if failure is not None:
                raise failure
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting to put, so it sees ``stop``
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)


@dataclass
class _EncodedChunk:
    """A chunk ready to save: transformed dense (n, D) float32, labels, local ids (S, n) into per-field dictionaries."""

    chunk: RowsChunk
    dense: np.ndarray
    local: np.ndarray
    dictionaries: list[pa.Array]
    missing: np.ndarray  # (D + S,) missing cells

    def __len__(self) -> int:
        return len(self.chunk)


def _encode_chunk(chunk: RowsChunk) -> _EncodedChunk:
    """Dictionary-encode each sparse field (already done by the fast reader), transform dense, count missing cells."""
    n_dense = chunk.dense.shape[1]
    missing = np.zeros(n_dense + len(chunk.sparse), dtype=np.int64)
    missing[:n_dense] = np.isnan(chunk.dense).sum(axis=0)
    local = np.empty((len(chunk.sparse), len(chunk)), dtype=np.int32)  # field-major: one contiguous row a field
    dictionaries = []
    for f, column in enumerate(chunk.sparse):
        encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
        local[f] = encoded.indices.to_numpy(zero_copy_only=False)
        dictionaries.append(encoded.dictionary)
        at = pc.index(encoded.dictionary, MISSING_VALUE).as_py()
        if at >= 0:
            missing[n_dense + f] = int(np.count_nonzero(local[f] == at))
    return _EncodedChunk(chunk, signed_log1p(chunk.dense), local, dictionaries, missing)


def _save_chunk(encoded: _EncodedChunk, stem: Path, missing: np.ndarray) -> np.ndarray:
    """Write a chunk's transformed dense values, labels, local ids and dictionaries; add its missing cells."""
    missing += encoded.missing
    np.save(f"{stem}.dense.npy", encoded.dense)
    np.save(f"{stem}.labels.npy", encoded.chunk.labels)
    np.save(f"{stem}.local.npy", encoded.local)
    sizes = np.array([len(d) for d in encoded.dictionaries], dtype=np.int64)
    values = pa.chunked_array(encoded.dictionaries, type=pa.string())
    feather.write_feather(pa.table({"v": values}), f"{stem}.dict.arrow", compression="uncompressed")
    return sizes


def _chunk_counts(stem: Path, sizes: np.ndarray, rows: int) -> pa.Table:
    """(f, v, count, pos) of the first ``rows`` rows of a saved chunk; pos counts rows whose first label is 1."""
    local = np.load(f"{stem}.local.npy", mmap_mode="r")[:, :rows]
    labels = np.load(f"{stem}.labels.npy", mmap_mode="r")[:rows]
    positive = labels[:, 0] == 1.0 if labels.shape[1] else np.zeros(rows, dtype=bool)
    values = feather.read_table(f"{stem}.dict.arrow").column("v")
    counts, pos = [], []
    for f, size in enumerate(sizes):
        ids = np.asarray(local[f])
        counts.append(np.bincount(ids, minlength=size))
        pos.append(np.bincount(ids[positive], minlength=size))
    fields = np.repeat(np.arange(len(sizes), dtype=np.int16), sizes)
    table = pa.table({"f": fields, "v": values, "count": np.concatenate(counts), "pos": np.concatenate(pos)})
    return table.filter(pc.greater(table.column("count"), 0))  # a prefix leaves some values unseen


class _CountMerger:
    """Sums (f, v) -> count, pos over chunk tables; holds at most the merged table and a few chunk tables."""

    def __init__(self) -> None:
        self._merged: pa.Table | None = None
        self._parts: list[pa.Table] = []

    def add(self, table: pa.Table) -> None:
        self._parts.append(table)
        if len(self._parts) >= _MERGE_EVERY:
            self._fold()

    def _fold(self) -> None:
        tables = ([self._merged] if self._merged is not None else []) + self._parts
        self._parts = []
        if not tables:
            return
        grouped = pa.concat_tables(tables).group_by(["f", "v"]).aggregate([("count", "sum"), ("pos", "sum")])
        self._merged = pa.table({"f": grouped["f"], "v": grouped["v"], "count": grouped["count_sum"],
                                 "pos": grouped["pos_sum"]})

    def result(self) -> pa.Table:
        self._fold()
        if self._merged is None:
            return pa.table({"f": pa.array([], pa.int16()), "v": pa.array([], pa.string()),
                             "count": pa.array([], pa.int64()), "pos": pa.array([], pa.int64())})
        return self._merged


# -- between the passes: splits and vocabularies, agreed by every rank ----------------------------


def _finish(pass1: _Pass1, schema: Schema, carved: tuple[str, ...], fractions: tuple[float, float, float],
            min_count: int | None, given: Mapping[str, Vocabulary] | None, work: Path, rank: int, world: int,
            on_progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    folder = work / f"rank{rank}"
    everyone = all_gather_objects({"chunks": len(pass1.chunks), "role_rows": pass1.role_rows,
                                   "records": pass1.records, "file_rows": pass1.file_rows, "missing": pass1.missing})
    records = {}
    for part in everyone:
        for source, record in part["records"].items():
            records[source] = record if source not in records else records[source].merge(record)
    file_rows: dict[str, int] = {}
    for part in everyone:
        for source, n in part["file_rows"].items():
            file_rows[source] = file_rows.get(source, 0) + n
    for source, n in file_rows.items():
        check_file_rows(source, n, records.get(source, BadLines(source)))
    role_offsets = {role: sum(part["role_rows"][role] for part in everyone[:rank]) for role in SPLITS}
    role_totals = {role: sum(part["role_rows"][role] for part in everyone) for role in SPLITS}
    n_source = role_totals["train"]
    bounds, rule = carve_bounds(carved, n_source, fractions)
    split_rows = {name: role_totals[name] for name in SPLITS}
    for name, (start, stop) in bounds.items():
        split_rows[name] = stop - start
    check_splits_not_empty(split_rows, n_source, rule)

    train_stop = bounds["train"][1]
    if given is None:
        merger = _CountMerger()
        for info in pass1.chunks:
            if info.role != "train":
                continue
            start = role_offsets["train"] + info.role_start
            rows = min(info.rows, train_stop - start)
            if rows > 0:
                merger.add(_chunk_counts(folder / f"{info.index:06d}", info.dict_sizes, rows))
        counts = merger.result()
        if world > 1:
            combined = _CountMerger()
            for payload in all_gather_objects(_ipc_bytes(counts)):
                combined.add(_from_ipc(payload))
            counts = combined.result()
        vocabularies = _fit_vocabularies(counts, schema, min_count)
    else:
        vocabularies = {name: given[name] for name in schema.sparse_names}

    if rank == 0:
        _create_outputs(work, schema, split_rows)
    barrier()
    stats = _write_splits(pass1, schema, vocabularies, bounds, role_offsets, role_totals, work, folder, on_progress)
    totals = _sum_stats(all_gather_objects(stats))
    if rank == 0:
        _write_vocabularies(work / "vocab", schema, vocabularies)
    total_rows = sum(split_rows.values())
    missing = np.sum([part["missing"] for part in everyone], axis=0)
    names = (*schema.dense_names, *schema.sparse_names)
    return {
        "split_rule": rule,
        "rows": split_rows,
        "bad_lines": bad_line_summary(list(records.values())),
        "vocabulary_sizes": {name: vocabularies[name].num_rows for name in schema.sparse_names},
        "oov_share": {name: {field_name: float(totals["oov"][name][f] / split_rows[name])
                             for f, field_name in enumerate(schema.sparse_names)} for name in SPLITS},
        "missing_share": {field_name: float(missing[j] / total_rows) for j, field_name in enumerate(names)},
        "positive_share": {name: {label: float(totals["positive"][name][t] / split_rows[name])
                                  for t, label in enumerate(schema.label_names)} for name in SPLITS},
        "vocabulary_source": "given" if given is not None else "train split",
        "cache": "off",
        "chunks": int(sum(part["chunks"] for part in everyone)),
        "files_read_by_rank": [sorted(part["file_rows"]) for part in everyone],
    }


def _fit_vocabularies(counts: pa.Table, schema: Schema, min_count: int | None) -> dict[str, Vocabulary]:
    """One vocabulary per sparse field from merged counts, keys ascending as :meth:`Vocabulary.fit` sees them."""
    counts = counts.sort_by([("f", "ascending"), ("v", "ascending")])
    per_field = np.bincount(counts.column("f").to_numpy(), minlength=len(schema.sparse))
    vocabularies = {}
    start = 0
    for f, spec in enumerate(schema.sparse):
        part = counts.slice(start, int(per_field[f]))
        start += int(per_field[f])
        vocabulary = Vocabulary(spec.name, min_count if min_count is not None else spec.min_count)
        keys = np.asarray(part.column("v").to_numpy(zero_copy_only=False), dtype=object)
        vocabularies[spec.name] = vocabulary.fit_counts(keys, part.column("count").to_numpy(),
                                                        part.column("pos").to_numpy())
    return vocabularies


# -- pass 2: map to vocabulary rows, write the splits ---------------------------------------------


def _create_outputs(work: Path, schema: Schema, split_rows: Mapping[str, int]) -> None:
    widths = {"dense": (len(schema.dense), np.float32), "labels": (len(schema.labels), np.float32),
              "sparse": (len(schema.sparse), np.int32)}
    for name in SPLITS:
        (work / name).mkdir(parents=True, exist_ok=True)
        for array, (width, dtype) in widths.items():
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": (int(split_rows[name]), width)}
            with open(work / name / f"{array}.npy", "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                handle.truncate(handle.tell() + split_rows[name] * width * np.dtype(dtype).itemsize)


class _RowWriter:
    """Writes rows into an existing C-order ``.npy`` file at a row offset (plain writes, no mapping)."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version != (1, 0):
                raise DataError(f"{path} is not a .npy file written by prepare_stream; prepare the data again")
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            self.offset = handle.tell()
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        self.dtype = dtype
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        written = os.pwrite(self.fd, data, self.offset + start * self.row_bytes)
        if written != len(data):
            raise DataError(f"short write to the prepared data ({written} of {len(data)} bytes); check the disk")

    def close(self) -> None:
        os.close(self.fd)


def _write_splits(pass1: _Pass1, schema: Schema, vocabularies: Mapping[str, Vocabulary],
                  bounds: Mapping[str, tuple[int, int]], role_offsets: Mapping[str, int],
                  role_totals: Mapping[str, int], work: Path, folder: Path,
                  on_progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    writers = {name: {array: _RowWriter(work / name / f"{array}.npy") for array in ("dense", "labels", "sparse")}
               for name in SPLITS}
    oov = {name: np.zeros(len(schema.sparse), dtype=np.int64) for name in SPLITS}
    positive = {name: np.zeros(len(schema.labels), dtype=np.float64) for name in SPLITS}
    done = 0
    try:
        for info in pass1.chunks:
            stem = folder / f"{info.index:06d}"
            ids = _global_ids(stem, info.dict_sizes, schema, vocabularies)
            dense = np.load(f"{stem}.dense.npy")
            labels = np.load(f"{stem}.labels.npy")
            start = role_offsets[info.role] + info.role_start
            for name, lo, hi, dst in _placements(info.role, start, info.rows, bounds):
                writers[name]["dense"].write(dst, dense[lo:hi])
                writers[name]["labels"].write(dst, labels[lo:hi])
                writers[name]["sparse"].write(dst, ids[lo:hi])
                oov[name] += np.count_nonzero(ids[lo:hi] == OOV_ROW, axis=0)
                positive[name] += labels[lo:hi].sum(axis=0, dtype=np.float64)
            for suffix in ("dense.npy", "labels.npy", "local.npy", "dict.arrow"):
                Path(f"{stem}.{suffix}").unlink()
            done += info.rows
            if on_progress is not None:
                on_progress(done, 2)
    finally:
        for group in writers.values():
            for writer in group.values():
                writer.close()
    shutil.rmtree(folder, ignore_errors=True)
    return {"oov": oov, "positive": positive}


def _global_ids(stem: Path, sizes: np.ndarray, schema: Schema, vocabularies: Mapping[str, Vocabulary]) -> np.ndarray:
    """(n, S) int32 vocabulary rows of a saved chunk: each chunk dictionary is looked up once."""
    local = np.load(f"{stem}.local.npy")
    values = feather.read_table(f"{stem}.dict.arrow").column("v")
    start = 0
    for f, spec in enumerate(schema.sparse):
        size = int(sizes[f])
        keys = np.asarray(values.slice(start, size).to_numpy(zero_copy_only=False), dtype=object)
        start += size
        rows = vocabularies[spec.name].transform(keys).astype(np.int32)
        local[f] = rows[local[f]]
    return local.T


def _placements(role: str, start: int, rows: int, bounds: Mapping[str, tuple[int, int]]
                ) -> Iterator[tuple[str, int, int, int]]:
    """(split, first row in chunk, end row in chunk, first row in split) for a chunk of ``rows`` rows at ``start``."""
    if role != "train":
        yield role, 0, rows, start
        return
    for name, (lo, hi) in bounds.items():
        first, last = max(start, lo), min(start + rows, hi)
        if first < last:
            yield name, first - start, last - start, first - lo


def _sum_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {key: {name: np.sum([part[key][name] for part in parts], axis=0) for name in SPLITS}
            for key in ("oov", "positive")}


def _write_vocabularies(folder: Path, schema: Schema, vocabularies: Mapping[str, Vocabulary]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, spec in enumerate(schema.sparse):
        vocabulary = vocabularies[spec.name]
        keys = pa.array([None, *(str(key) for key in vocabulary.keys_)], type=pa.string())
        table = pa.table({"key": keys, "count": vocabulary.counts_, "positive_count": vocabulary.positive_counts_})
        table = table.replace_schema_metadata({"name": spec.name, "min_count": str(vocabulary.min_count)})
        pq.write_table(table, folder / f"{index:04d}.parquet")


def _write_manifest(work: Path, schema: Schema, report: Mapping[str, Any]) -> None:
    from sharkrec.io import write_json

    manifest = {
        "version": STREAM_VERSION,
        "schema": schema.to_dict(),
        "rows": report["rows"],
        "vocabularies": [f"vocab/{i:04d}.parquet" for i in range(len(schema.sparse))],
        "report": dict(report),
    }
    write_json(work / MANIFEST, manifest)


# -- folders and ranks ----------------------------------------------------------------------------


def _work_folder(out: Path, rank: int, world: int) -> Path:
    """A temporary sibling of ``out`` (``.NAME.*.tmp``, removed by the output lock if a run dies), shared by ranks."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file; pass a folder path for the prepared data")
    name = ""
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        name = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    return Path(broadcast_object(name))


def _replace_folder(work: Path, out: Path) -> None:
    """Move the finished ``work`` folder onto ``out`` (an older prepared folder there is replaced)."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        old.rmdir()
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)


def _rank_world() -> tuple[int, int]:
    from sharkrec.distributed import rank, world_size

    return rank(), world_size()


def _agreed(step: Callable[[], _Pass1], world: int) -> _Pass1:
    """``step()`` on every rank; when it fails with a one-line error on any rank, every rank raises it."""
    if world <= 1:
        return step()
    result: _Pass1 | None = None
    failure: tuple[str, str] | None = None
    try:
        result = step()
    except (DataError, ConfigError) as exc:
        failure = (type(exc).__name__, str(exc))
    failures = [f for f in all_gather_objects(failure) if f is not None]
    if failures:
        kind, message = failures[0]
        raise (ConfigError if kind == "ConfigError" else DataError)(message)
    assert result is not None
    return result


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(payload).read_all()
