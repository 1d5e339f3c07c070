"""The compiled F-Quantization training kernels (``csrc/tier_rows.cpp``), or ``None`` without a compiler.

:func:`extension` builds the C++ file once with ``torch.utils.cpp_extension`` (cached per torch version
under ``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and returns the module; any build
problem, or ``SHARKREC_NO_EXTENSION=1``, returns ``None`` and :class:`~sharkrec.quant.embedding.
MixedPrecisionEmbedding` trains with the same algorithm in PyTorch ops (the tests check both agree).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

_SOURCE = Path(__file__).with_name("csrc") / "tier_rows.cpp"
_NAME = "sharkrec_tier_rows"


def disabled() -> bool:
    """``SHARKREC_NO_EXTENSION`` is set (to anything but ``0``): use the PyTorch paths."""
    return os.environ.get("SHARKREC_NO_EXTENSION", "") not in ("", "0")


@functools.lru_cache(maxsize=1)
def _build() -> Any | None:
    try:
        from torch.utils.cpp_extension import load

        with _build_folder() as folder:
            return load(name=_NAME, sources=[str(_SOURCE)], build_directory=str(folder), verbose=False,
                        extra_cflags=["-O3", "-march=native", "-ffp-contract=off"])
    except Exception:  # any build problem: train with the PyTorch path instead
        return None


def extension() -> Any | None:
    """The compiled module, or ``None`` (disabled, no compiler, or the build failed)."""
    return None if disabled() else _build()


@contextlib.contextmanager
def _build_folder() -> Iterator[Path]:
    """The build folder, held with a kernel ``flock`` while building or loading (a ``lock`` file found while
    holding it was left by a killed build and is removed; see :mod:`sharkrec.export.fused`)."""
    import fcntl

    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    folder = folder / f"sharkrec-torch{torch.__version__}" / _NAME
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".sharkrec-build.lock", "w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        (folder / "lock").unlink(missing_ok=True)
        yield folder
