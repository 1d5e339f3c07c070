"""Which files of a data path hold the train, valid and test rows.

A file is one source, split later by row order, and so is a folder that holds exactly one data
file. In a folder of several files, names decide (case-insensitive, ``.gz`` ignored): a name that
starts with ``train`` or ends with ``.data`` is train; ``dev``, ``valid``, ``val`` -> valid;
``test`` or ``.test`` -> test; failing those, a ``.``/``_``/``-``-separated word of the name
decides (``frappe.train.libfm``, ``criteo_validation.txt``). Several files of one split are read
in name order and concatenated.
Documentation files (``README*``, ``LICENSE*``, ``*.md``, ``*.json``, ``*.yaml``) and hidden files
are ignored. The ml-100k folder of the ``movielens`` format is one source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sharkrec.data.formats.movielens import movielens_folder
from sharkrec.errors import DataError

SPLITS = ("train", "valid", "test")
_DOC_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".pdf", ".html")
_DOC_PREFIXES = ("readme", "license", "licence")
_WORDS = {"train": "train", "dev": "valid", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}


@dataclass(frozen=True)
class SourceFiles:
    """Input files by split; an empty ``valid`` or ``test`` is carved from the end of the train rows."""

    train: tuple[Path, ...]
    valid: tuple[Path, ...] = ()
    test: tuple[Path, ...] = ()

    def by_split(self) -> dict[str, tuple[Path, ...]]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    @property
    def carved(self) -> tuple[str, ...]:
        """The splits taken from the end of the train rows, in split order."""
        return tuple(name for name in ("valid", "test") if not self.by_split()[name])


def find_sources(path: str | Path, fmt: str) -> SourceFiles:
    """The files that make each split of ``path`` (a file or a folder) in format ``fmt``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist; pass an existing file or folder")
    if fmt == "movielens":
        return SourceFiles(train=(movielens_folder(path),))
    if path.is_file():
        return SourceFiles(train=(path,))
    files = sorted(p for p in path.iterdir() if p.is_file() and not _is_ignored(p))
    if not files:
        raise DataError(f"data folder {path} holds no data files; pass a folder with train/valid/test files or a file")
    if len(files) == 1:
        return SourceFiles(train=(files[0],))
    roles: dict[str, list[Path]] = {name: [] for name in SPLITS}
    for file in files:
        role = split_of(file.name)
        if role is not None:
            roles[role].append(file)
    if not any(roles.values()):
        names = ", ".join(f.name for f in files)
        raise DataError(
            f"data folder {path} holds several files ({names}) but none is named train*, dev*/valid*/val* or test*; "
            "rename them so, or pass one file"
        )
    if not roles["train"]:
        raise DataError(
            f"data folder {path} has valid/test files but no train file; add a file named train* (or *.data)"
        )
    return SourceFiles(tuple(roles["train"]), tuple(roles["valid"]), tuple(roles["test"]))


def split_of(file_name: str) -> str | None:
    """The split a file name stands for, or None."""
    name = file_name.lower().removesuffix(".gz")
    if name.startswith("train") or name.endswith(".data"):
        return "train"
    if name.startswith(("dev", "valid", "val")):
        return "valid"
    if name.startswith("test") or name.endswith(".test"):
        return "test"
    for word in re.split(r"[._\-]", name):
        if word in _WORDS:
            return _WORDS[word]
    return None


def _is_ignored(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith(".") or name.startswith(_DOC_PREFIXES) or name.removesuffix(".gz").endswith(_DOC_SUFFIXES)
