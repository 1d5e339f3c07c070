"""Raw files -> vocabularies and encoded train / valid / test splits, with an optional cache.

Splits follow row order (time order for logs; MovieLens rows are sorted by timestamp first):

- A folder with train/valid/test files (see :mod:`sharkrec.data.sources`) uses them as given.
  CSV/TSV files after the first train file may leave out its header line (see
  :mod:`sharkrec.data.formats.tabular`).
- When only the valid or only the test file is missing, that split is the last ``split[1]``
  (valid) or ``split[2]`` (test) share of the train file's rows, e.g. UCI Adult's
  ``adult.data`` + ``adult.test`` gets valid = the last 10% of ``adult.data``.
- A single file (or a folder with only train files) is cut by the ``split`` fractions.

Vocabularies are fitted on the train split only; the cell rules are in :mod:`sharkrec.data.encode`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sharkrec.data.cache import cache_file, cache_key, load_prepared, save_prepared
from sharkrec.data.dataset import EncodedSplit, PreparedData
from sharkrec.data.encode import (
    ParsedRows,
    encode_rows,
    fit_vocabularies,
    missing_shares,
    oov_shares,
    parse_rows,
)
from sharkrec.data.formats.text import BadLines, OnBadLine
from sharkrec.data.readers import DataFormat, HeaderLine, header_line, read_raw, schema_for
from sharkrec.data.schema import Schema
from sharkrec.data.sources import SPLITS, SourceFiles, find_sources
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import ConfigError, DataError

__all__ = ["DEFAULT_SPLIT", "check_split", "prepare_data", "schema_for"]

DEFAULT_SPLIT = (0.8, 0.1, 0.1)


def prepare_data(
    fmt: str,
    path: str | Path,
    schema: Schema | None = None,
    *,
    on_bad_line: str = "skip",
    split: tuple[float, float, float] = DEFAULT_SPLIT,
    cache_dir: str | Path | None = None,
    min_count: int | None = None,
    vocabularies: Mapping[str, Vocabulary] | None = None,
) -> PreparedData:
    """Read ``path`` in format ``fmt``, check it against ``schema``, split, fit vocabularies, encode.

    Args:
        fmt: criteo, libfm, movielens, csv, tsv or parquet.
        path: a file or a folder (see the module docstring for how folders are split).
        schema: required for csv/tsv/parquet; defaults to the format's built-in schema.
        on_bad_line: "skip" drops and counts malformed lines; "error" raises on the first one.
        split: train/valid/test fractions by row order, used where no file gives the split.
        cache_dir: where to keep prepared data; a second call with the same inputs loads it.
        min_count: ids seen fewer times in train map to the OOV row; overrides the schema's.
        vocabularies: a trained model's vocabularies (one per sparse field); the data is encoded
            with them instead of vocabularies fitted on its train split.

    Returns:
        :class:`PreparedData`; ``report`` holds format, sources, rows per split, bad lines, vocabulary
        sizes, OOV and missing shares, positive shares, cache status ("off", "miss", "hit" or
        "rebuilt" for a corrupted entry) and seconds.
    """
    started = time.perf_counter()
    data_format = DataFormat.parse(fmt)
    policy = OnBadLine.parse(on_bad_line)
    fractions = check_split(split)
    check_min_count(min_count)
    sources = find_sources(path, data_format.value)
    schema = schema if schema is not None else schema_for(data_format, path)
    if vocabularies is not None and sorted(vocabularies) != sorted(schema.sparse_names):
        raise ConfigError(
            f"the given vocabularies cover fields {sorted(vocabularies)} but the schema's sparse fields are "
            f"{list(schema.sparse_names)}; use the schema the model was trained with"
        )

    entry: Path | None = None
    cache_status = "off"
    key = ""
    if cache_dir is not None:
        key = cache_key(data_format.value, sources, schema, fractions, min_count, vocabularies)
        entry = cache_file(cache_dir, data_format.value, key)
        cached = load_prepared(entry, key, schema)
        if cached is not None:
            cached.report.update(cache="hit", cache_path=str(entry), seconds=time.perf_counter() - started)
            return cached
        cache_status = "rebuilt" if entry.exists() else "miss"

    rows, bad_lines, split_rule = _read_splits(data_format, sources, schema, policy, fractions)
    given = vocabularies is not None
    if vocabularies is None:
        vocabularies = fit_vocabularies(rows["train"], schema, min_count)
    encoded = {name: encode_rows(rows[name], schema, vocabularies) for name in SPLITS}
    report: dict[str, Any] = {
        "format": data_format.value,
        "sources": {name: [str(p) for p in files] for name, files in sources.by_split().items()},
        "split_rule": split_rule,
        "rows": {name: len(rows[name]) for name in SPLITS},
        "bad_lines": bad_line_summary(bad_lines),
        **_field_statistics(schema, rows, encoded, vocabularies),
        "vocabulary_source": "given" if given else "train split",
        "cache": cache_status,
    }
    prepared = PreparedData(schema, dict(vocabularies), encoded["train"], encoded["valid"], encoded["test"], report)
    if entry is not None:
        report["cache_path"] = str(entry)
        report["seconds"] = time.perf_counter() - started  # the entry keeps the time it took to build
        save_prepared(entry, key, prepared)
    report["seconds"] = time.perf_counter() - started
    return prepared


def check_min_count(min_count: int | None) -> None:
    """A ConfigError unless ``min_count`` is None or an integer of 1 or more."""
    if min_count is not None and (isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1):
        raise ConfigError(f"min_count {min_count!r} must be an integer of 1 or more")


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """``split`` as three positive fractions summing to 1, else a ConfigError."""
    try:
        values = tuple(float(value) for value in split)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(
            f"split fractions {tuple(split) if isinstance(split, Sequence) else split!r} must be three positive "
            "numbers (train, valid, test) that sum to 1, e.g. (0.8, 0.1, 0.1)"
        )
    return values[0], values[1], values[2]


def _read_splits(
    data_format: DataFormat,
    sources: SourceFiles,
    schema: Schema,
    policy: OnBadLine,
    fractions: tuple[float, float, float],
) -> tuple[dict[str, ParsedRows], list[BadLines], str]:
    """Rows of each split, the bad-line records of every file, and the rule that made the split."""
    rows: dict[str, ParsedRows] = {}
    bad_lines: list[BadLines] = []
    header = header_line(data_format, sources.train[0], schema)  # the other files repeat it or have none
    for name, files in sources.by_split().items():
        if files:
            parts = []
            for file in files:
                parsed, records = _read_file(data_format, file, schema, policy, header)
                parts.append(parsed)
                bad_lines.extend(records)
            rows[name] = ParsedRows.concat(parts)
    train = rows["train"]
    n = len(train)
    bounds, rule = carve_bounds(sources.carved, n, fractions)
    for name, (start, stop) in bounds.items():
        rows[name] = train.rows(start, stop)
    check_splits_not_empty({name: len(rows[name]) for name in SPLITS}, n, rule)
    return rows, bad_lines, rule


def carve_bounds(
    carved: Sequence[str], n: int, fractions: tuple[float, float, float]
) -> tuple[dict[str, tuple[int, int]], str]:
    """Row ranges of the ``n`` train-source rows that become train and the ``carved`` splits, and the rule."""
    if len(carved) == 2:
        cuts = (round(n * fractions[0]), round(n * (fractions[0] + fractions[1])))
        rule = f"fractions {fractions} of the rows in order"
        return {"train": (0, cuts[0]), "valid": cuts, "test": (cuts[1], n)}, rule
    if len(carved) == 1:
        share = fractions[SPLITS.index(carved[0])]
        start = n - round(n * share)
        rule = f"files; {carved[0]} is the last {share:.0%} of the train file rows"
        return {"train": (0, start), carved[0]: (start, n)}, rule
    return {"train": (0, n)}, "files"


def check_splits_not_empty(rows: Mapping[str, int], n_train_source: int, rule: str) -> None:
    """A DataError naming the first empty split."""
    for name in SPLITS:
        if rows[name] == 0:
            raise DataError(
                f"the {name} split is empty ({n_train_source} rows split by {rule}); give more rows or larger split "
                "fractions"
            )


def check_file_rows(source: str, rows: int, own: BadLines) -> None:
    """A DataError when a data file gave no valid rows: all lines malformed (``own`` records them) or none."""
    if rows == 0:
        if own.count:
            raise DataError(
                f"data file {source} has no valid rows: all {own.count} lines are malformed "
                f"(line {own.first_line_numbers[0]}: {own.first_problem}); fix the file"
            )
        raise DataError(f"data file {source} is empty; pass a file that holds data rows")


def _read_file(
    data_format: DataFormat, file: Path, schema: Schema, policy: OnBadLine, header: HeaderLine | None = None
) -> tuple[ParsedRows, list[BadLines]]:
    """Checked rows of one input and the bad-line records of every file it was read from."""
    table = read_raw(data_format, file, schema, header)
    parsed, checked = parse_rows(table, schema)
    # every reader records its main file; that record takes in what the schema check found
    records = [record.merge(checked) if record.source == table.source else record for record in table.bad_lines]
    if policy is OnBadLine.ERROR:
        for record in records:
            if record.count:
                raise record.error()
    check_file_rows(table.source, len(parsed), next(record for record in records if record.source == table.source))
    return parsed, records


def _field_statistics(
    schema: Schema,
    rows: Mapping[str, ParsedRows],
    encoded: Mapping[str, EncodedSplit],
    vocabularies: Mapping[str, Vocabulary],
) -> dict[str, Any]:
    """Vocabulary sizes, OOV shares per split, missing shares over all rows, positive shares per split."""
    total = sum(len(rows[name]) for name in SPLITS)
    missing = {field: 0.0 for field in (*schema.dense_names, *schema.sparse_names)}
    for name in SPLITS:
        for field, share in missing_shares(rows[name], schema).items():
            missing[field] += share * len(rows[name]) / total
    return {
        "vocabulary_sizes": {name: vocabularies[name].num_rows for name in schema.sparse_names},
        "oov_share": {name: oov_shares(encoded[name], schema) for name in SPLITS},
        "missing_share": missing,
        "positive_share": {
            name: dict(zip(schema.label_names, rows[name].labels.mean(axis=0, dtype=np.float64).tolist(), strict=True))
            for name in SPLITS
        },
    }


def bad_line_summary(records: Sequence[BadLines]) -> dict[str, Any]:
    """``{count, reasons, first_line_numbers: {file: [...]}}`` over every file read."""
    reasons: dict[str, int] = {}
    for record in records:
        for reason, count in record.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    return {
        "count": int(np.sum([record.count for record in records])) if records else 0,
        "reasons": reasons,
        "first_line_numbers": {r.source: list(r.first_line_numbers) for r in records if r.count},
    }
