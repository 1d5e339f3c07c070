"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file; an interrupted write leaves the old file (or none).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sharkrec.errors import ConfigError


def check_file_path(path: str | os.PathLike[str], what: str = "output") -> Path:
    """``path`` as a Path, or a ConfigError when it cannot become a file: it is a folder, or lies under a file."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{what} {target} is a folder; pass a file path, such as a new file name inside it")
    parent = next((folder for folder in target.parents if folder.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{what} {target} lies under {parent}, which is a file; pass a path inside a folder")
    return target


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    target = check_file_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` only when closed without error."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes only; got mode {mode!r}")
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")


def atomic_save(path: str | os.PathLike[str], save: Callable[[Path], None]) -> None:
    """Call ``save(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        save(tmp)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path: str | os.PathLike[str], what: str, error: type[Exception], hint: str) -> Any:
    """Parse a JSON file, or raise ``error`` naming ``what``, the path and ``hint`` (how to fix it)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it") from None
