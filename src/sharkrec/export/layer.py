"""A store that computes its rows from the id (the hashed layers) in an artifact: its spec and tensors.

Hashed layers (QR, ROBE-Z, hot/cold hybrid, mixed dims: ``FieldEmbedding.computes_rows``) hold no
row per value, so there is nothing to order into tiers. The artifact keeps the layer itself:

- ``embedding.safetensors``: every tensor of the layer's ``state_dict()`` as ``layer.<name>``
  (e.g. ``layer.weights``, ``layer.offset_hash``, ``layer.hot_0``, ``layer.starts_1``);
- ``manifest["embedding"]["layer"]``: ``kind``, ``spec`` (the layer's ``spec()``: per-field sizes,
  hash seed, combine op, chunk size, block layout, ...), ``fields`` (the kept fields it serves, in
  order), ``bytes`` (its ``embedding_bytes()``), ``tensors`` (``state`` name → stored ``tensor``
  name, dtype, shape) and ``row_rule`` (how the vector of id x is computed, the kind's one line);
- each of its fields: ``"store": "layer"``, no tiers, the raw keys in vocabulary order, OOV slot 0.

Raw value → vector, every kind: the vocabulary gives the value's slot, which is its vocabulary row
(0 for an unseen value), the same id the layer was trained on; the rebuilt layer computes the
vector from that id by its ``row_rule``.

Loading builds the layer from its spec on the meta device (names, dtypes and shapes, no memory),
checks every stored tensor against them (present, dtype, shape, finite floats) and against the
manifest's list, assigns the stored tensors, then computes the vectors of up to 1024 ids per field
(both ends of its range): any mismatch or failure is one :class:`CheckpointError` line.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from sharkrec.data.batch import FieldIds
from sharkrec.errors import CheckpointError
from sharkrec.export import integrity
from sharkrec.model.embedding import FieldEmbedding, embedding_class

PREFIX = "layer."


def layer_entry(layer: FieldEmbedding, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The manifest entry of ``layer``; its state tensors are added to ``tensors`` (embedding.safetensors)."""
    listed = []
    for name, value in layer.state_dict().items():
        stored = f"{PREFIX}{name}"
        value = value.detach().contiguous()
        if value.is_floating_point():
            try:
                integrity.check_finite(stored, value)
            except CheckpointError as exc:
                raise CheckpointError(f"cannot export the model: {exc}; retrain it or restore a good checkpoint"
                                      ) from None
        tensors[stored] = value
        listed.append({"state": name, "tensor": stored, "dtype": integrity.dtype_name(value),
                       "shape": list(integrity.shape_of(value))})
    return {"kind": layer.kind, "spec": layer.spec(), "fields": list(layer.field_names),
            "bytes": int(layer.embedding_bytes()), "tensors": listed, "row_rule": layer.row_rule}


def read_layer(entry: Any, tensors: Mapping[str, Tensor], declared: set[str]) -> FieldEmbedding:
    """The layer of manifest entry ``entry``, its tensors taken from ``tensors`` (names added to ``declared``)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("spec"), Mapping):
        raise CheckpointError("the embedding's layer entry has no spec; a layer entry holds kind, spec and tensors")
    kind, spec = entry.get("kind"), entry["spec"]
    if spec.get("kind") != kind:
        raise CheckpointError(f"the layer entry is of kind {kind!r} but its spec of kind {spec.get('kind')!r}")
    cls = embedding_class(kind)  # imports the kind's module before any tensor is made on the meta device
    if not cls.computes_rows:
        raise CheckpointError(f"layer kind {kind!r} stores rows; only a layer that computes its rows is stored whole")
    with torch.device("meta"):
        layer = cls.from_spec(spec)  # names, dtypes, shapes: no memory
    expected = layer.state_dict()
    listed = {str(t.get("state")): t for t in entry.get("tensors", ()) if isinstance(t, Mapping)}
    if sorted(listed) != sorted(expected):
        raise CheckpointError(f"the {kind} layer lists tensors {integrity.names(sorted(listed))} but its spec holds "
                              f"{integrity.names(sorted(expected))}")
    state = {}
    for name, want in expected.items():
        stored = str(listed[name].get("tensor"))
        value = integrity.check_tensor(stored, tensors, want.dtype, integrity.shape_of(want))
        if value.is_floating_point():
            integrity.check_finite(stored, value)
        declared.add(stored)
        state[name] = value
    layer.load_state_dict(state, strict=True, assign=True)
    unset = [n for n, t in chain(layer.named_parameters(), layer.named_buffers()) if t.is_meta]
    if unset:
        raise CheckpointError(f"the {kind} layer has tensors {integrity.names(unset)} that its state does not hold")
    if list(layer.field_names) != list(entry.get("fields", ())):
        raise CheckpointError(f"the {kind} layer serves fields {integrity.names(layer.field_names)} but the entry "
                              f"lists {integrity.names(entry.get('fields', ()))}")
    if integrity.integer(entry.get("bytes"), "layer bytes") != layer.embedding_bytes():
        raise CheckpointError(f"the {kind} layer holds {layer.embedding_bytes()} bytes but the manifest says "
                              f"{entry.get('bytes')!r}")
    for parameter in layer.parameters():
        parameter.requires_grad_(False)
    _probe(layer.eval())
    return layer


def _probe(layer: FieldEmbedding, count: int = 1024) -> None:
    """Compute the vectors of up to ``count`` ids per field spread over ``0..V − 1`` (both ends included): integer
    state that indexes outside a table (edited block starts, hot ids) or non-finite vectors fail here, at load,
    not in a request."""
    columns = [torch.linspace(0, rows - 1, min(rows, count)).round().long() for rows in layer.value_rows().values()]
    width = max(c.numel() for c in columns)
    ids = [FieldIds(torch.cat([c, c[-1:].expand(width - c.numel())])) for c in columns]  # (width,) each
    try:
        with torch.inference_mode():
            vectors = layer(ids)  # (width, F, D)
    except (IndexError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(f"the {layer.kind} layer cannot compute its rows from its stored tensors ({reason})"
                              ) from None
    if not bool(torch.isfinite(vectors).all()):
        raise CheckpointError(f"the {layer.kind} layer computes vectors that are not finite from its stored tensors")
