"""MovieLens 100K (the ``ml-100k`` folder): ratings joined with users and items.

Files: ``u.data`` (user, item, rating, timestamp; tab-separated), ``u.user`` (user|age|gender|
occupation|zip), ``u.item`` (latin-1; id|title|release date|video date|URL|19 genre flags) and,
optionally, ``u.genre`` (genre names); each may be gzip-compressed (``u.data.gz``). One row per
rating, sorted by timestamp (a stable sort, so ties keep file order). The label is
``rating >= 4``. Bad lines: ``column_count`` in any file; in ``u.data`` also ``rating`` (not
1..5), ``timestamp`` (not an integer), ``unknown_user`` / ``unknown_item`` (id absent from
``u.user`` / ``u.item``); in ``u.user`` also ``age`` (not a number).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sharkrec.data.formats.text import BadLineLog, BadLines, RawTable, read_bytes, split_delimited
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import DataError

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
SPARSE_FIELDS = ("user", "item", "age", "gender", "occupation", "zip", "release_year", "genres")
GENRE_SEPARATOR = "|"


def movielens_schema() -> Schema:
    """Label ``rating >= 4``; sparse user, item, age bucket, gender, occupation, zip, release year,
    and the multi-hot genres."""
    fields = (
        FieldSpec("label", FieldKind.LABEL, column="rating", positive=("4", "5")),
        *(
            FieldSpec(name, FieldKind.SPARSE, separator=GENRE_SEPARATOR if name == "genres" else None)
            for name in SPARSE_FIELDS
        ),
    )
    return Schema(fields, name="movielens-100k", has_header=False)


def movielens_folder(path: Path) -> Path:
    """The ml-100k folder given the folder itself or its ``u.data`` file."""
    return path.parent if path.is_file() else path


def movielens_files(folder: Path) -> dict[str, Path]:
    """The files present, by name (``u.data`` -> ``.../u.data.gz`` when compressed)."""
    found: dict[str, Path] = {}
    for name in ("u.data", "u.user", "u.item", "u.genre"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    missing = [name for name in ("u.data", "u.user", "u.item") if name not in found]
    if not folder.is_dir():
        raise DataError(f"MovieLens folder {folder} does not exist; pass the ml-100k folder as the data path")
    if missing:
        raise DataError(
            f"MovieLens folder {folder} lacks {', '.join(missing)} (plain or .gz); pass the complete ml-100k folder"
        )
    return found


def read_movielens(path: Path) -> RawTable:
    """One row per rating, in time order: user, item, rating, timestamp, the user's and the item's
    columns (age bucket, gender, occupation, zip, release_year, genres as ``"Action|Comedy"``)."""
    files = movielens_files(movielens_folder(path))
    ratings = split_delimited(read_bytes(files["u.data"]), str(files["u.data"]), "\t", n_columns=4)
    users, user_bad = _read_users(files["u.user"])
    items, item_bad = _read_items(files["u.item"], _genre_names(files.get("u.genre")))

    frame = ratings.frame
    frame.columns = ["user", "item", "rating", "timestamp"]
    lines = ratings.line_numbers
    log = BadLineLog(ratings.source)
    ok = np.ones(len(frame), dtype=bool)

    rating = frame["rating"].astype(str).str.strip()
    bad = ~rating.isin(("1", "2", "3", "4", "5")).to_numpy()
    _record(log, "rating", lines, bad, rating, "rating {!r} is not an integer from 1 to 5")
    ok &= ~bad
    timestamp = pd.to_numeric(frame["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(timestamp) & (timestamp == np.round(timestamp)))
    _record(log, "timestamp", lines, bad, frame["timestamp"], "timestamp {!r} is not an integer")
    ok &= ~bad

    cells = pd.DataFrame({key: frame[key].astype(str).str.strip() for key in ("user", "item")})
    for table, key in ((users, "user"), (items, "item")):
        known = cells[key].isin(table.index).to_numpy()
        _record(log, f"unknown_{key}", lines, ~known & ok, cells[key], f"{key} id {{!r}} is not in u.{key}")
        ok &= known
        for column in table.columns:
            cells[column] = cells[key].map(table[column]).to_numpy(dtype=object)
    cells.insert(2, "rating", rating.to_numpy(dtype=object))
    cells.insert(3, "timestamp", timestamp)

    cells, lines = cells[ok], lines[ok]
    order = np.argsort(cells["timestamp"].to_numpy(), kind="stable")
    cells = cells.iloc[order].reset_index(drop=True)
    bad_lines = (ratings.bad_lines[0].merge(log.summary()), user_bad, item_bad)
    return RawTable(cells, lines[order], ratings.source, bad_lines)


def _read_users(path: Path) -> tuple[pd.DataFrame, BadLines]:
    """u.user indexed by user id: age bucket, gender, occupation, zip."""
    table = split_delimited(read_bytes(path), str(path), "|", n_columns=5)
    frame = table.frame.astype(str)
    frame.columns = ["user", "age", "gender", "occupation", "zip"]
    frame = frame.apply(lambda column: column.str.strip())
    log = BadLineLog(table.source)
    age = pd.to_numeric(frame["age"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(age)
    _record(log, "age", table.line_numbers, bad, frame["age"], "age {!r} is not a number")
    bad |= _record_duplicates(log, table.line_numbers, frame["user"], "user")
    frame["age"] = np.asarray(AGE_BUCKETS, dtype=object)[np.searchsorted(AGE_EDGES, age, side="right")]
    users = frame[~bad].set_index("user")
    return users, table.bad_lines[0].merge(log.summary())


def _read_items(path: Path, genre_names: tuple[str, ...]) -> tuple[pd.DataFrame, BadLines]:
    """u.item indexed by item id: release_year ("" when unknown) and genres ("Action|Comedy")."""
    n_columns = 5 + len(genre_names)
    table = split_delimited(read_bytes(path), str(path), "|", n_columns=n_columns, encoding="latin-1")
    frame = table.frame.astype(str)
    log = BadLineLog(table.source)
    item_ids = frame[0].str.strip()
    bad = _record_duplicates(log, table.line_numbers, item_ids, "item")
    released = pd.to_datetime(frame[2].str.strip(), format="%d-%b-%Y", errors="coerce")
    years = np.where(released.isna(), "", released.dt.year.astype("Int64").astype(str))
    flags = frame[list(range(5, n_columns))].apply(lambda column: column.str.strip()).to_numpy() == "1"
    names = np.asarray(genre_names, dtype=object)
    genres = np.array([GENRE_SEPARATOR.join(names[row]) for row in flags], dtype=object)
    items = pd.DataFrame({"release_year": years.astype(object), "genres": genres}, index=item_ids)[~bad]
    return items, table.bad_lines[0].merge(log.summary())


def _genre_names(path: Path | None) -> tuple[str, ...]:
    """Genre names in flag order from u.genre (``name|index`` lines), else the ml-100k list."""
    if path is None:
        return GENRES
    pairs = [line.rsplit("|", 1) for line in read_bytes(path).decode("latin-1").splitlines() if "|" in line]
    try:
        ordered = sorted((int(index), name.strip()) for name, index in pairs)
    except ValueError:
        raise DataError(f"genre file {path} has a line that is not 'name|index'; fix it or remove the file") from None
    return tuple(name for _, name in ordered)


def _record(log: BadLineLog, reason: str, lines: np.ndarray, bad: np.ndarray, values: pd.Series, template: str) -> None:
    bad_values = values.to_numpy(dtype=object)[bad]
    log.add(reason, lines[bad], lambda k: template.format(bad_values[k]))


def _record_duplicates(log: BadLineLog, lines: np.ndarray, ids: pd.Series, what: str) -> np.ndarray:
    """Mark every repeat of an id (the first occurrence is kept)."""
    repeated = ids.duplicated().to_numpy()
    _record(log, f"duplicate_{what}", lines, repeated, ids, f"{what} id {{!r}} appears on an earlier line too")
    return repeated
