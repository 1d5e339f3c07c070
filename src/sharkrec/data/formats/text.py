"""What every raw-data reader shares: reading bytes, splitting delimited text, recording bad lines.

A reader turns one input file into a :class:`RawTable`: a DataFrame of raw cell values, the
1-based physical line number of every row, and a :class:`BadLines` record of the lines it dropped.
Blank lines are ignored (neither rows nor bad lines).
"""

from __future__ import annotations

import csv
import enum
import gzip
import io
import warnings
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sharkrec.data.schema import duplicate_names
from sharkrec.errors import ConfigError, DataError, SchemaError

GZIP_MAGIC = b"\x1f\x8b"
# what reading a damaged gzip stream raises: a bad header or CRC, a truncated stream, corrupt deflate data
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
MAX_LINE_NUMBERS = 20
# cells that mean "no value": a missing sparse value gets its own row, a missing dense value is 0
MISSING_MARKERS = ("", "?")

_DELIMITER_NAMES = {"\t": "tab", ",": "comma", " ": "space", "|": "pipe", ";": "semicolon"}


class OnBadLine(str, enum.Enum):
    """What to do with a malformed line: skip and count it, or stop with an error naming it."""

    SKIP = "skip"
    ERROR = "error"

    @classmethod
    def parse(cls, value: str | OnBadLine) -> OnBadLine:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"on_bad_line {value!r} is not known; use 'skip' or 'error'") from None


@dataclass(frozen=True)
class BadLines:
    """Malformed lines of one input file.

    Attributes:
        source: the file, as given.
        count: lines dropped.
        first_line_numbers: the first (smallest) 1-based line numbers, up to 20.
        reasons: lines per kind of problem (a line with two problems counts under both).
        first_problem: the problem on the first bad line, in words.
    """

    source: str
    count: int = 0
    first_line_numbers: tuple[int, ...] = ()
    reasons: Mapping[str, int] = field(default_factory=dict)
    first_problem: str | None = None

    def merge(self, other: BadLines) -> BadLines:
        """Bad lines of the same file found by two different checks (disjoint sets of lines)."""
        reasons = dict(self.reasons)
        for reason, count in other.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
        first_problem = self.first_problem
        if other.first_line_numbers and (
            not self.first_line_numbers or other.first_line_numbers[0] < self.first_line_numbers[0]
        ):
            first_problem = other.first_problem
        lines = tuple(sorted(set(self.first_line_numbers) | set(other.first_line_numbers))[:MAX_LINE_NUMBERS])
        return BadLines(self.source, self.count + other.count, lines, reasons, first_problem)

    def error(self) -> DataError:
        """The one-line error raised under ``on_bad_line='error'``."""
        line = self.first_line_numbers[0] if self.first_line_numbers else "?"
        return DataError(
            f"data file {self.source} line {line}: {self.first_problem}; fix or delete the line, "
            "or pass on_bad_line='skip' (--on-bad-line skip) to skip malformed lines"
        )


class BadLineLog:
    """Collects the lines that fail vectorised checks on one file, then summarises them."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._groups: list[tuple[str, np.ndarray, Callable[[int], str]]] = []

    def add(self, reason: str, line_numbers: np.ndarray, describe: Callable[[int], str]) -> None:
        """Record lines failing one check; ``describe(k)`` words the problem of ``line_numbers[k]``."""
        line_numbers = np.asarray(line_numbers, dtype=np.int64)
        if len(line_numbers):
            self._groups.append((reason, line_numbers, describe))

    def summary(self) -> BadLines:
        if not self._groups:
            return BadLines(self.source)
        by_reason: dict[str, list[np.ndarray]] = {}
        for reason, lines, _ in self._groups:
            by_reason.setdefault(reason, []).append(lines)
        reasons = {reason: len(np.unique(np.concatenate(parts))) for reason, parts in by_reason.items()}
        all_lines = np.unique(np.concatenate([lines for _, lines, _ in self._groups]))
        # the problem of the smallest line number across every check
        _, lines, describe = min(self._groups, key=lambda group: int(group[1].min()))
        first_problem = describe(int(np.argmin(lines)))
        first = tuple(int(n) for n in all_lines[:MAX_LINE_NUMBERS])
        return BadLines(self.source, len(all_lines), first, reasons, first_problem)


@dataclass(frozen=True, eq=False)
class RawTable:
    """Raw cells of one input file.

    ``frame`` has one column per source column (names from the header or the format, positions
    ``0..K-1`` for headerless files); ``line_numbers`` (N,) int64 gives each row's 1-based physical
    line; ``bad_lines`` has one record per file read to build the table.
    """

    frame: pd.DataFrame
    line_numbers: np.ndarray
    source: str
    bad_lines: tuple[BadLines, ...] = ()

    def __len__(self) -> int:
        return len(self.frame)


def resolve_column(frame: pd.DataFrame, source: str | int) -> Hashable | None:
    """The frame column a schema's ``column`` names: a name, or (int) a position; None if absent."""
    if source in frame.columns:
        return source
    if isinstance(source, int) and 0 <= source < frame.shape[1]:
        return frame.columns[source]
    return None


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, gunzipped when it starts with the gzip magic bytes (see :func:`text_bytes`)."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; pass an existing file or folder as the data path")
    raw = path.read_bytes()
    if raw.startswith(GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except GZIP_ERRORS as exc:
            raise bad_gzip(path, exc) from None
    return text_bytes(raw, str(path))


def text_bytes(raw: bytes, source: str) -> bytes:
    """``raw`` (the text of ``source``) with CRLF line ends made LF; a DataError when it holds no data."""
    if b"\r\n" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    if not raw or raw.isspace():
        raise DataError(f"data file {source} is empty; pass a file that holds data rows")
    return raw


def read_head(path: Path, max_lines: int) -> bytes:
    """The first ``max_lines`` lines of ``path`` (gunzipped like :func:`read_bytes`), never the rest of it."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; pass an existing file or folder as the data path")
    with open(path, "rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            raw = b"".join(line for _, line in zip(range(max_lines), handle, strict=False))
    except GZIP_ERRORS as exc:
        raise bad_gzip(path, exc) from None
    if b"\r\n" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    if not raw or raw.isspace():
        raise DataError(f"data file {path} is empty; pass a file that holds data rows")
    return raw


def bad_gzip(source: str | Path, exc: BaseException) -> DataError:
    """The one-line error for a gzip file that cannot be decompressed (``exc``: one of :data:`GZIP_ERRORS`)."""
    return DataError(f"data file {source} is not a valid gzip file ({exc}); re-download or re-gzip it")


def delimiter_name(delimiter: str) -> str:
    return _DELIMITER_NAMES.get(delimiter, repr(delimiter))


def split_delimited(
    data: bytes,
    source: str,
    delimiter: str,
    *,
    has_header: bool = False,
    n_columns: int | None = None,
    float_columns: Sequence[int | str] = (),
    encoding: str = "utf-8",
    describe_width: Callable[[int, int], str] | None = None,
    width_reason: str = "column_count",
    first_line: int = 1,
) -> RawTable:
    """Split unquoted delimited text into a table of string cells.

    Lines with the wrong number of columns are dropped and recorded (reason ``width_reason``). The
    expected width is ``n_columns``, else the header's width, else the most common width. Columns
    at ``float_columns`` are parsed as float64 (empty or ``?`` gives NaN) when every cell is a
    number; otherwise all columns stay strings and the caller checks them. ``float_columns`` holds
    positions (int) or header names (str). ``first_line`` is the number of the first line of ``data``
    (a later piece of a file read in chunks).
    """
    if len(delimiter) != 1 or len(delimiter.encode(encoding)) != 1:
        raise SchemaError(f"delimiter {delimiter!r} must be one single-byte character; fix the schema's 'delimiter'")
    names: list[str] | None = None
    body = data
    if has_header:
        stripped = data.lstrip(b"\n")  # blank lines before the header
        first_line += len(data) - len(stripped)
        data = stripped
        header_end = data.find(b"\n")
        header = data if header_end < 0 else data[:header_end]
        names = [name.strip() for name in header.decode(encoding, errors="replace").split(delimiter)]
        duplicates = duplicate_names(names)
        if duplicates:
            raise DataError(f"the header of data file {source} names columns {duplicates} twice; rename them")
        n_columns = len(names)
        body = b"" if header_end < 0 else data[header_end + 1 :]
        first_line += 1
    describe = describe_width or (
        lambda found, expected: f"expected {expected} {delimiter_name(delimiter)}-separated columns, found {found}"
    )
    sep = delimiter.encode(encoding)
    bad_log = BadLineLog(source)
    columns: list[object] = list(names) if names is not None else list(range(n_columns or 0))
    n_lines = line_count(body)
    frame: pd.DataFrame | None = None
    # fast path: the separators add up to exactly (width - 1) per line and the C parser finds no
    # line wider than expected, so every line has the expected width and no per-line scan is needed
    if n_columns is not None and every_line_has_width(body, sep, n_columns, n_lines):
        try:
            frame = _parse_body(body, delimiter, columns, float_columns, encoding)
            line_numbers = np.arange(first_line, first_line + n_lines, dtype=np.int64)
        except (pd.errors.ParserError, pd.errors.ParserWarning):
            frame = None
    if frame is None:
        line_numbers, body, n_columns = keep_full_lines(
            body, sep, n_columns, first_line, bad_log, width_reason, describe
        )
        if names is None:
            columns = list(range(n_columns))
        try:
            frame = _parse_body(body, delimiter, columns, float_columns, encoding)
        except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
            raise DataError(f"data file {source} could not be parsed ({exc}); check its delimiter") from None
    if len(frame) != len(line_numbers):
        raise DataError(
            f"data file {source}: parsed {len(frame)} rows from {len(line_numbers)} lines; "
            "check for stray NUL bytes or an unexpected encoding"
        )
    return RawTable(frame, line_numbers, source, (bad_log.summary(),))


def line_count(body: bytes) -> int:
    """Lines in ``body``, a last line without its newline included."""
    return body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)


def every_line_has_width(body: bytes, sep: bytes, n_columns: int, n_lines: int) -> bool:
    """True when no line is blank and the separators add up to exactly ``n_columns - 1`` per line; then,
    unless the parser finds a line wider than ``n_columns``, every line has the expected width."""
    return b"\n\n" not in body and not body.startswith(b"\n") and body.count(sep) == (n_columns - 1) * n_lines


def keep_full_lines(
    body: bytes,
    sep: bytes,
    n_columns: int | None,
    first_line: int,
    bad_log: BadLineLog,
    reason: str,
    describe: Callable[[int, int], str],
) -> tuple[np.ndarray, bytes, int]:
    """(line numbers of the kept lines, their bytes, the expected width), dropping wrong-width lines."""
    buf = np.frombuffer(body, dtype=np.uint8)
    newlines = np.flatnonzero(buf == ord("\n"))
    ends = newlines if body.endswith(b"\n") else np.append(newlines, len(body))
    starts = np.concatenate([[0], newlines + 1])[: len(ends)]
    sep_positions = np.flatnonzero(buf == sep[0])
    widths = np.searchsorted(sep_positions, ends) - np.searchsorted(sep_positions, starts) + 1
    nonblank = ends > starts
    if n_columns is None:
        if not nonblank.any():
            return np.zeros(0, dtype=np.int64), b"", 0
        n_columns = int(np.bincount(widths[nonblank]).argmax())
    good = nonblank & (widths == n_columns)
    bad = nonblank & ~good
    all_numbers = np.arange(first_line, first_line + len(starts), dtype=np.int64)
    bad_widths = widths[bad]
    expected = n_columns
    bad_log.add(reason, all_numbers[bad], lambda k: describe(int(bad_widths[k]), expected))
    kept = np.flatnonzero(good)
    if len(kept) and good[kept[0] :].all():
        kept_body = body[starts[kept[0]] :]
    else:
        kept_body = b"\n".join(body[s:e] for s, e in zip(starts[kept], ends[kept], strict=True))
    return all_numbers[kept], kept_body, n_columns


def _parse_body(
    body: bytes, delimiter: str, columns: list[object], float_columns: Sequence[int | str], encoding: str
) -> pd.DataFrame:
    """Cells of ``body`` (every line ``len(columns)`` wide); ParserError or ParserWarning on a wider line."""
    if not body:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in columns})

    def read(dtype: object, na_values: object) -> pd.DataFrame:
        # a line wider than ``columns`` raises ParserError, or, when it is the first line, warns
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(
                io.BytesIO(body), sep=delimiter, header=None, names=columns, dtype=dtype,
                keep_default_na=False, na_values=na_values, na_filter=na_values is not None,
                quoting=csv.QUOTE_NONE, engine="c", skip_blank_lines=False, index_col=False,
                encoding=encoding, encoding_errors="surrogateescape",
            )

    float_names = [
        columns[key] if isinstance(key, int) else key
        for key in float_columns
        if (isinstance(key, int) and 0 <= key < len(columns)) or key in columns
    ]
    if float_names:
        try:
            dtypes = {name: (np.float64 if name in float_names else object) for name in columns}
            return read(dtypes, {name: list(MISSING_MARKERS) for name in float_names})
        except pd.errors.ParserError:
            raise
        except ValueError:
            pass  # a non-numeric cell: keep every column as strings and let the caller find it
    return read(object, None)
