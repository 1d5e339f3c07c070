"""Checks that an artifact's stored tensors are what its manifest declares, run before anything is built.

The sha256 of every file proves the bytes are the ones written, not that they make sense: a
hand-made or edited artifact can hash correctly and still hold an int32 tensor where float32 rows
belong, NaN constants, or a model config whose network does not fit the stored weights. Each check
here names the tensor or value and what was expected (one line); :func:`load_artifact` adds the
artifact's path and the fix.

What the tensors must be (see :mod:`sharkrec.export.tables` for the layout save_artifact writes):

=====================  ==============  ==================================================
``field.k.fp32``       float32         (n, D), finite
``field.k.fp16``       float16         (n, D), finite
``field.k.int8``       int8            (n, D), with ``_scale`` float32 (n,), finite, >= 0
``field.k.int4``       uint8           (n, ceil(D/2)), with ``_scale`` float32 (n,), finite,
                                       0 .. 65504 (the 4-bit kernel keeps fp16 scales)
``vocab.k.keys``       int64           (size,)
``vocab.k.key_bytes``  uint8           (bytes,), ``vocab.k.key_offsets`` int64 (size + 1,)
                                       rising from 0 to at most ``bytes``
``vocab.k.key_slots``  int32           (size,), each in 0 .. rows - 1
dense tensors          floating point  the shapes of :meth:`DLRMConfig.dense_shapes`, finite
pruned ``constant``    JSON numbers    D of them, finite as float32
``layer.<name>``       as the spec     the dtype and shape of the hashed layer's state tensor
                       implies         ``<name>`` built from its spec, finite floats
                                       (:mod:`sharkrec.export.layer`)
=====================  ==============  ==================================================

Every tensor in ``embedding.safetensors`` and ``vocabulary.safetensors`` must be declared by a
field of the manifest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sharkrec.errors import CheckpointError
from sharkrec.quant.codec import Precision

if TYPE_CHECKING:
    from sharkrec.model.dlrm import DLRMConfig

PAYLOAD_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.INT8: torch.int8,
                  Precision.INT4: torch.uint8}
_FP16_MAX = 65504.0
_CHUNK = 1 << 22  # elements checked at once (a bounded temporary, however large the table)


def dtype_name(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def shape_of(tensor: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in tensor.shape)


def names(items: Iterable[str], limit: int = 4) -> str:
    """``['a', 'b', ...] (9 in all)``: a bounded listing of tensor names for one error line."""
    items = list(items)
    shown = ", ".join(repr(n) for n in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]" + (f" ({len(items)} in all)" if len(items) > limit
                                                                else "")


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise unless every value of float tensor ``name`` is finite (checked in bounded chunks)."""
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        if not bool(torch.isfinite(flat[start:start + _CHUNK]).all()):
            raise CheckpointError(f"tensor {name!r} has values that are not finite (NaN or inf)")


def check_tensor(name: str, tensors: Mapping[str, Tensor], dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """Tensor ``name`` of ``tensors``, checked to have ``dtype`` and ``shape``."""
    if not isinstance(name, str) or name not in tensors:
        raise CheckpointError(f"tensor {name!r} that the manifest names is not stored")
    tensor = tensors[name]
    if tensor.dtype != dtype:
        raise CheckpointError(f"tensor {name!r} has dtype {dtype_name(tensor)}; the manifest declares "
                              f"{str(dtype).removeprefix('torch.')}")
    if shape_of(tensor) != shape:
        raise CheckpointError(f"tensor {name!r} has shape {shape_of(tensor)}; the manifest implies {shape}")
    return tensor


def check_dense(config: DLRMConfig, tensors: Mapping[str, Tensor]) -> None:
    """The network weights: exactly the tensors ``config`` implies, in those shapes, floating point and finite.

    Runs before the network exists, so a config that asks for more than the stored weights (10^9
    MMoE experts, layers 10^7 wide) costs nothing.
    """
    expected = config.dense_shapes()
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    if missing or unexpected:
        raise CheckpointError(f"dense.safetensors does not hold the network of the manifest's model config "
                              f"(missing {names(missing)}, unexpected {names(unexpected)})")
    for name, shape in expected.items():
        tensor = tensors[name]
        if shape_of(tensor) != shape:
            raise CheckpointError(f"tensor {name!r} has shape {shape_of(tensor)} but the model config implies {shape}")
        if not tensor.is_floating_point():
            raise CheckpointError(f"tensor {name!r} has dtype {dtype_name(tensor)}; network weights are float32")
        check_finite(name, tensor)


def check_constant(field: str, value: Any, dim: int) -> Tensor:
    """(D,) float32 constant of pruned field ``field`` from its manifest list: D finite numbers."""
    if (not isinstance(value, list) or len(value) != dim
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        what = f"a list of {len(value)} values" if isinstance(value, list) else type(value).__name__
        raise CheckpointError(f"pruned field {field!r} has a constant that is {what}, not {dim} numbers")
    vector = torch.tensor(value, dtype=torch.float32)
    bad = (~torch.isfinite(vector)).nonzero()
    if bad.numel():
        raise CheckpointError(f"pruned field {field!r} has a constant with a value that is not finite in float32 "
                              f"({value[int(bad[0])]!r} at {int(bad[0])})")
    return vector


def check_scale(name: str, scale: Tensor, precision: Precision) -> None:
    check_finite(name, scale)
    if scale.numel() and float(scale.min()) < 0:
        raise CheckpointError(f"tensor {name!r} has negative scales; scales are max|e| / I_max >= 0")
    if precision is Precision.INT4 and scale.numel() and float(scale.max()) > _FP16_MAX:
        raise CheckpointError(f"tensor {name!r} has scales above {_FP16_MAX:g}, which the 4-bit kernel cannot hold")


def check_offsets(name: str, offsets: Tensor, blob_bytes: int) -> None:
    """String keys: (size + 1,) int64 offsets into the key bytes, rising from 0 to at most ``blob_bytes``."""
    if offsets.numel() == 0 or int(offsets[0]) != 0 or int(offsets[-1]) > blob_bytes or (
            offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any())):
        raise CheckpointError(f"tensor {name!r} does not hold key offsets rising from 0 to at most {blob_bytes}")


def check_declared(file_name: str, tensors: Mapping[str, Tensor], declared: set[str]) -> None:
    """Every tensor of ``file_name`` is one the manifest declares."""
    strays = [name for name in tensors if name not in declared]
    if strays:
        raise CheckpointError(f"{file_name} holds tensors {names(strays)} that no field of the manifest declares")


def integer(value: Any, what: str, low: int = 0) -> int:
    """A JSON integer >= ``low`` (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CheckpointError(f"{what} is {value!r}; expected an integer >= {low}")
    return value
