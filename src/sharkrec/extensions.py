"""sharkrec's C++ kernels, built once with ``torch.utils.cpp_extension`` and cached, or ``None``.

Each kernel file (the serving lookup, :mod:`sharkrec.export.fused`; the F-Quantization training rows,
:mod:`sharkrec.quant.kernels`) has a PyTorch path computing the same result; :func:`build` returns
``None`` when ``SHARKREC_NO_EXTENSION=1`` is set or the build fails (no compiler), and the caller uses
that path. Builds are cached per torch version under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch


def disabled() -> bool:
    """``SHARKREC_NO_EXTENSION`` is set (to anything but ``0``): use the PyTorch paths."""
    return os.environ.get("SHARKREC_NO_EXTENSION", "") not in ("", "0")


def build(name: str, source: Path, extra_cflags: Sequence[str] = ("-O3", "-march=native")) -> Any | None:
    """The compiled module ``name`` of C++ file ``source``, or ``None`` (disabled, no compiler, build failed)."""
    if disabled():
        return None
    try:
        from torch.utils.cpp_extension import load

        with build_folder(name) as folder:
            return load(name=name, sources=[str(source)], extra_cflags=list(extra_cflags),
                        build_directory=str(folder), verbose=False)
    except Exception:  # any build problem: the caller runs its PyTorch path instead
        return None


@contextlib.contextmanager
def build_folder(name: str) -> Iterator[Path]:
    """Kernel ``name``'s build folder, held with a kernel lock while it is built or loaded.

    torch's own build lock is a plain ``lock`` file: a process killed while compiling leaves it behind
    and every later load waits on it forever. Every sharkrec process takes this ``flock`` first (the
    kernel drops it when its holder dies), so a ``lock`` file found while holding it is stale and removed.
    """
    import fcntl

    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    folder = folder / f"sharkrec-torch{torch.__version__}" / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".sharkrec-build.lock", "w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        (folder / "lock").unlink(missing_ok=True)
        yield folder
