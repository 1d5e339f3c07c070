"""The compiled F-Quantization training kernels (``csrc/tier_rows.cpp``), or ``None`` without a compiler.

:func:`extension` builds the C++ file once with ``torch.utils.cpp_extension`` (cached per torch version
under ``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and returns the module; any build
problem, or ``SHARKREC_NO_EXTENSION=1``, returns ``None`` and :class:`~sharkrec.quant.embedding.
MixedPrecisionEmbedding` trains with the same algorithm in PyTorch ops (the tests check both agree).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sharkrec.extensions import build, disabled

_SOURCE = Path(__file__).with_name("csrc") / "tier_rows.cpp"
_NAME = "sharkrec_tier_rows"


@functools.lru_cache(maxsize=1)
def _build() -> Any | None:
    return build(_NAME, _SOURCE, ("-O3", "-march=native", "-ffp-contract=off"))  # codec.py's arithmetic, bit for bit


def extension() -> Any | None:
    """The compiled module, or ``None`` (disabled, no compiler, or the build failed)."""
    return None if disabled() else _build()
