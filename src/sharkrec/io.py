"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file; an interrupted write leaves the old file (or none).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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


#: Largest JSON file sharkrec parses (schemas, specs, manifests): far above any real one, checked before reading
MAX_JSON_BYTES = 64 << 20


def read_json(path: str | os.PathLike[str], what: str, error: type[Exception], hint: str, *,
              fix: str = "fix it", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file, or raise ``error`` naming ``what``, the path and how to fix it.

    ``hint`` is the fix for a missing file, ``fix`` the fix for one that cannot be parsed: larger
    than ``max_bytes``, not UTF-8, not JSON, or nested too deeply for the parser.
    """
    return parse_json(read_bounded(path, what, error, hint, fix=fix, max_bytes=max_bytes), path, what, error, fix)


def read_bounded(path: str | os.PathLike[str], what: str, error: type[Exception], hint: str, *,
                 fix: str = "fix it", max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of file ``path``, refused with ``error`` when it is missing or larger than ``max_bytes``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist; {hint}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(raw) > max_bytes:  # (a file can grow between stat and read)
        raise error(f"{what} {str(path)!r} has {max(size, len(raw)):,} bytes, more than the "
                    f"{max_bytes / (1 << 20):g} MiB sharkrec reads; {fix}")
    return raw


def parse_json(raw: bytes, path: str | os.PathLike[str], what: str, error: type[Exception], fix: str = "fix it"
               ) -> Any:
    """``json.loads`` of UTF-8 ``raw`` (read from ``path``), every failure one ``error`` line ending with ``fix``."""
    where = f"{what} {str(path)!r}"
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 text (byte {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    except RecursionError:
        raise error(f"{where} nests arrays or objects too deeply to parse; {fix}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        reason = str(exc).split(";")[0][:120]
        raise error(f"{where} is not valid JSON ({reason}); {fix}") from None


# ------------------------------------------------------------------------------------------- output folders
LOCK_FILE = ".sharkrec.lock"
_held_locks: set[Path] = set()  # resolved folders this process holds: a nested lock on one is a no-op


@contextmanager
def output_lock(folder: str | os.PathLike[str], what: str = "run") -> Iterator[Path]:
    """Hold ``folder`` for this process while the block runs; a second holder fails with one line naming the first.

    The lock is an ``fcntl.flock`` on ``folder/.sharkrec.lock`` (which records the holder's PID), so the kernel
    releases it when the holder exits, ``kill -9`` included: a later run never waits on a dead one. Taking the
    lock removes the temporary files an interrupted atomic write left in the folder (no other process can be
    writing there while we hold it). Re-entrant: nested calls in one process share the lock.
    """
    import fcntl

    root = Path(folder)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    key = root.resolve()
    if key in _held_locks:  # the outer holder releases it
        yield root
        return
    path = key / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"output folder {str(root)!r} is in use by another sharkrec {holder}; wait for it to finish "
                "(or stop it) or choose another --out"
            ) from None
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break  # the lock file we hold is the one at the path (not one a releasing holder just removed)
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{what} (PID {os.getpid()})\n".encode(), 0)
    _held_locks.add(key)
    try:
        remove_stale_temporaries(key)
        yield root
    finally:
        _held_locks.discard(key)
        with suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a waiting opener sees the inode change and retries
        os.close(fd)
        if created:
            with suppress(OSError):
                root.rmdir()  # a run that failed before writing anything leaves no empty folder behind


def remove_stale_temporaries(folder: str | os.PathLike[str], depth: int = 2) -> list[Path]:
    """Delete what interrupted atomic writes left under ``folder`` (``.NAME.*.tmp`` files and folders, ``.old``).

    Only call it while holding :func:`output_lock` on ``folder``: then no live writer owns them.
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        name = entry.name
        if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old")) and name.count(".") >= 3:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        elif depth > 1 and entry.is_dir() and not entry.is_symlink() and not name.startswith("."):
            removed.extend(remove_stale_temporaries(entry, depth - 1))
    return removed
