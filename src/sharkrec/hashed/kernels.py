"""The compiled inference lookups of the hashed layers (``csrc/lookup.cpp``), or ``None`` without a compiler.

For a lookup that needs no autograd graph (gradients off, as under ``torch.inference_mode()``, or a
frozen layer, as the serving engine holds it) each layer's ``forward`` calls one kernel that computes
every field's rows (hash, quotient / remainder, hot-id search, block), reads and sum-pools them
straight into the (B, F, D) float32 output. Training, and every input the kernel does not take
(tensors off the CPU, tables not float32), runs the layer's PyTorch ops; the results are the same
(bit for bit for QR, ROBE-Z and the hybrid; mixed dims project with the same ``mm``, the tests allow
fp32 rounding). :func:`extension` builds the C++ file once with ``torch.utils.cpp_extension`` (cached
per torch version under ``TORCH_EXTENSIONS_DIR``); a build problem or ``SHARKREC_NO_EXTENSION=1``
gives ``None`` and the PyTorch path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sharkrec.data.batch import FieldIds
from sharkrec.errors import DataError
from sharkrec.extensions import build, disabled
from sharkrec.hashed.hashing import check_ids

_SOURCE = Path(__file__).with_name("csrc") / "lookup.cpp"
_NAME = "sharkrec_hashed_lookup"
_UNSUPPORTED = -2
#: the layer kinds with a fused lookup
KINDS = frozenset({"qr", "robe", "hybrid", "mixed_dim"})


@functools.lru_cache(maxsize=1)
def _build() -> Any | None:
    return build(_NAME, _SOURCE, ("-O3", "-march=native", "-ffp-contract=off"))  # the PyTorch path's rounding


def extension() -> Any | None:
    """The compiled module, or ``None`` (disabled, no compiler, or the build failed)."""
    return None if disabled() else _build()


def inference_extension(layer: nn.Module) -> Any | None:
    """The compiled module when ``layer``'s lookup builds no autograd graph (gradients disabled, or no
    parameter of it requires a gradient), else ``None``: training keeps the PyTorch path."""
    if torch.is_grad_enabled() and any(p.requires_grad for p in layer.parameters()):
        return None
    return extension()


def fused_lookup(kernel: Callable[..., tuple[Tensor, int]], field_names: Sequence[str], value_rows: Sequence[int],
                 sparse: Sequence[FieldIds], *tables: Any) -> Tensor | None:
    """(B, F, D) float32 from one ``kernel`` call on the batch and the layer's ``tables``, or ``None`` when the
    kernel does not take these inputs (the caller runs its PyTorch path).

    Bad ids, dtypes or batch sizes raise :func:`~sharkrec.hashed.hashing.check_ids`'s :class:`DataError`;
    bad offsets or weights raise one naming the field.
    """
    out, status = kernel([ids.values for ids in sparse], [ids.offsets for ids in sparse],
                         [ids.weights for ids in sparse], list(value_rows), *tables)
    if status == -1:
        return out
    if status == _UNSUPPORTED:
        return None
    check_ids(field_names, value_rows, sparse)  # raises for ids out of range, dtypes, batch sizes
    name = field_names[status]
    raise DataError(f"field {name!r} has bag offsets that do not cut its values (they must start at 0, never "
                    "decrease and end at the number of values) or weights not one per value; build its FieldIds "
                    "with offsets (B + 1,) and weights like the values")
