"""A Parquet dataset directory as Spark, Hive or Dask write it, split by partition and shared among ranks.

``DIR/part-*.parquet`` files, optionally under hive-style partition folders (``DIR/day=17/part-0.parquet``).
Files whose names start with ``_`` or ``.`` (``_SUCCESS``, ``_metadata``, ``.crc``) are ignored. Files are
read in order of their partition values (numbers compare as numbers), then name.

Splits: a selection per split over the partition keys, e.g. ``{"train": "day<=17", "valid": "day==18",
"test": "day==19"}``. A selection is one or more comparisons joined by ``&`` (``day>=10&day<=17``) with
``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``. A split without a selection is carved from the end of the
train rows by the split fractions, as for one file; with no selection at all every file is train.

The unit of reading is one row group of one file (a :class:`Piece`). Under torchrun each rank takes a
contiguous run of every split's pieces (:func:`rank_pieces`), so no rank reads the whole dataset and
the ranks' rows, in rank order, are the split's rows in file order.

Checked up front, reading only file footers: every file has the same columns and types as the first,
no partition folder is empty, every selection matches some file and no file falls in two splits.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sharkrec.data.sources import SPLITS
from sharkrec.errors import ConfigError, DataError

_OPERATORS: dict[str, Callable[[object, object], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_COMPARISON = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*([^&=<>!]+?)\s*$")


@dataclass(frozen=True)
class Piece:
    """One row group of one file: ``first_row`` is its 1-based row number within the file."""

    path: Path
    row_group: int
    rows: int
    first_row: int
    partition: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ParquetDataset:
    """The pieces of each split, in file order; ``carved`` splits come from the end of the train rows."""

    root: Path
    pieces: Mapping[str, tuple[Piece, ...]]
    carved: tuple[str, ...]
    schema: pa.Schema

    def files(self, split: str) -> list[Path]:
        return list(dict.fromkeys(piece.path for piece in self.pieces[split]))


def is_dataset_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder of ``part-*`` Parquet files or hive-style ``key=value`` folders."""
    path = Path(path)
    if not path.is_dir():
        return False
    return any(entry.name.startswith("part-") or (entry.is_dir() and "=" in entry.name) for entry in path.iterdir())


def parse_selection(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A test on a file's partition values from ``day<=17`` or ``day>=10&day<=17``; ConfigError if malformed."""
    tests = []
    for part in text.split("&"):
        match = _COMPARISON.match(part)
        if match is None:
            raise ConfigError(
                f"partition selection {text!r} is not understood; write comparisons of a partition key with a value "
                "joined by '&', e.g. 'day<=17' or 'day>=10&day<=17'"
            )
        key, op, value = match.groups()
        tests.append((key, _OPERATORS[op], value.strip().strip("'\"")))

    def matches(partition: Mapping[str, str]) -> bool:
        for key, compare, value in tests:
            if key not in partition:
                raise ConfigError(
                    f"partition selection {text!r} names key {key!r}, but the files are partitioned by "
                    f"{sorted(partition) or 'nothing'}; select on one of those"
                )
            if not compare(_ordered(partition[key]), _ordered(value)):
                return False
        return True

    return matches


def open_dataset(root: str | Path, selections: Mapping[str, str] | None = None) -> ParquetDataset:
    """The files of ``root`` by split (see the module docstring); DataError / ConfigError on bad input."""
    root = Path(root)
    selections = {name: text for name, text in (selections or {}).items() if text}
    unknown = sorted(set(selections) - set(SPLITS))
    if unknown:
        raise ConfigError(f"partition selections for {unknown} are not splits; use train, valid or test")
    if selections and "train" not in selections:
        raise ConfigError("partition selections need one for train (e.g. --train 'day<=17'); the others are optional")
    files = _find_files(root)
    schema = _common_schema(files)
    tests = {name: parse_selection(text) for name, text in selections.items()}
    by_split: dict[str, list[Path]] = {name: [] for name in SPLITS}
    for path, partition in files:
        chosen = [name for name, test in tests.items() if test(partition)] if tests else ["train"]
        if len(chosen) > 1:
            raise ConfigError(
                f"data file {path} is selected by both {chosen[0]} ({selections[chosen[0]]!r}) and {chosen[1]} "
                f"({selections[chosen[1]]!r}); make the partition selections disjoint"
            )
        if chosen:
            by_split[chosen[0]].append(path)
    for name in tests:
        if not by_split[name]:
            found = sorted({f"{k}={v}" for _, partition in files for k, v in partition.items()}, key=_ordered_item)
            raise DataError(
                f"the {name} selection {selections[name]!r} matches no file under {root}; partitions found: "
                f"{', '.join(found[:12])}{' ...' if len(found) > 12 else ''}"
            )
    partitions = dict(files)
    pieces = {name: tuple(piece for path in paths for piece in file_pieces(path, partitions[path]))
              for name, paths in by_split.items()}
    carved = tuple(name for name in ("valid", "test") if name not in tests)
    return ParquetDataset(root, pieces, carved, schema)


def rank_pieces(pieces: Sequence[Piece], split: str, rank: int, world: int) -> tuple[Piece, ...]:
    """This rank's contiguous run of ``pieces`` (row groups, shared by count); a DataError if a rank gets none."""
    if world <= 1:
        return tuple(pieces)
    if len(pieces) < world:
        raise DataError(
            f"the {split} split has {len(pieces)} Parquet row group(s) for {world} ranks, so a rank would read no "
            "file; write the split as at least one file (or row group) per rank, or start fewer ranks"
        )
    per_rank, extra = divmod(len(pieces), world)  # contiguous runs; the first ``extra`` ranks take one more
    begin = rank * per_rank + min(rank, extra)
    return tuple(pieces[begin : begin + per_rank + (1 if rank < extra else 0)])


def _find_files(root: Path) -> list[tuple[Path, dict[str, str]]]:
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass the folder that holds the part-*.parquet files")
    found: list[tuple[Path, dict[str, str]]] = []

    def walk(folder: Path, partition: dict[str, str]) -> None:
        entries = sorted((e for e in folder.iterdir() if not e.name.startswith(("_", "."))), key=_entry_order)
        data = [e for e in entries if e.is_file()]
        subfolders = [e for e in entries if e.is_dir()]
        if folder != root and not data and not subfolders:
            raise DataError(
                f"partition folder {folder} holds no Parquet files; remove the empty partition or rewrite the dataset"
            )
        for entry in subfolders:
            key, sep, value = entry.name.partition("=")
            if not sep:
                raise DataError(
                    f"folder {entry} inside the dataset is not a key=value partition; move it out of {root}"
                )
            walk(entry, {**partition, key: value})
        found.extend((entry, dict(partition)) for entry in data)

    walk(root, {})
    if not found:
        raise DataError(
            f"data folder {root} holds no Parquet files; pass the folder that holds the part-*.parquet files"
        )
    return found


def _common_schema(files: Sequence[tuple[Path, dict[str, str]]]) -> pa.Schema:
    first: pa.Schema | None = None
    first_path = files[0][0]
    for path, _ in files:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"data file {path} is not a readable Parquet file ({exc}); check the file") from None
        schema = pa.schema([pa.field(f.name, _logical(f.type)) for f in schema])
        if first is None:
            first = schema
            continue
        if not schema.equals(first):
            raise DataError(f"data file {path} has columns {_describe(schema, first)} but {first_path} has "
                            f"{_describe(first, schema)}; rewrite the dataset with one schema")
    assert first is not None
    return first


def _logical(data_type: pa.DataType) -> pa.DataType:
    """The type with 64-bit offsets made plain (pandas writes large_string where Spark writes string)."""
    if pa.types.is_large_string(data_type):
        return pa.string()
    if pa.types.is_large_binary(data_type):
        return pa.binary()
    return data_type


def _describe(schema: pa.Schema, other: pa.Schema) -> str:
    """The columns of ``schema`` that differ from ``other`` (name: type)."""
    differ = [f"{f.name}: {f.type}" for f in schema if other.get_field_index(f.name) < 0
              or other.field(f.name).type != f.type]
    return "[" + ", ".join(differ or [f.name for f in schema]) + "]"


def file_pieces(path: Path, partition: Mapping[str, str]) -> list[Piece]:
    """The non-empty row groups of one Parquet file; a DataError when it is unreadable or has no rows."""
    try:
        metadata = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"data file {path} is not a readable Parquet file ({exc}); check the file") from None
    pieces, first_row = [], 1
    items = tuple(sorted(partition.items()))
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if rows:
            pieces.append(Piece(path, group, rows, first_row, items))
        first_row += rows
    if not pieces:
        raise DataError(f"data file {path} is empty; pass a file that holds data rows (or remove it from the dataset)")
    return pieces


def _ordered(value: str) -> tuple[int, float | str]:
    """Numbers sort before text and compare as numbers."""
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def _ordered_item(item: str) -> tuple[str, tuple[int, float | str]]:
    key, _, value = item.partition("=")
    return key, _ordered(value)


def _entry_order(entry: Path) -> tuple[str, tuple[int, float | str], str]:
    key, sep, value = entry.name.partition("=")
    return (key, _ordered(value), entry.name) if sep and entry.is_dir() else ("", (1, ""), entry.name)
