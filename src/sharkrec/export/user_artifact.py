"""The artifact of a user's own model: served by ``sharkrec serve`` and ``sharkrec.load`` without its Python class.

::

    wrapped = FieldModel.wrap(user_model, sharkrec.fields(user_model, example))   # (compressed or not)
    save_user_artifact(wrapped, example, "ART")                # example: the forward's positional inputs
    served = sharkrec.load("ART")                              # a UserServingModel
    served(*example)                                           # what user_model(*example) returns

Layout of ``ART/`` (manifest ``"kind": "user-model"``; written to a temporary sibling, then renamed)::

    manifest.json, manifest.sha256   as for sharkrec's own artifacts (:mod:`sharkrec.export.artifact`),
                                     plus the field map, the lookups (kind, fields, call structure)
                                     and the inputs (structure, dtype and ndim of each tensor)
    program.ids.json                 inputs → every lookup's call tensors  (torch.export, JSON graph)
    program.dense.json               (field vectors (B, F, D), inputs) → the model's output
    program.safetensors              param/<module path> (both programs), ids.const/*, dense.const/*
    embedding.safetensors            the kept fields' tier pools, as sharkrec's artifacts store them (a
                                     hashed embedding: its layer's tensors, :mod:`sharkrec.export.layer`)
    vocabulary.safetensors           per kept field its row → slot order (identity keys, OOV = row 0)

See :mod:`sharkrec.export.programs` for how the programs are captured and stored (no pickle is
written or read). Serving a call: the ``ids`` program gives each lookup's call arguments, the
lookup kind turns them into the rows each field reads (mean bags: weights 1 / length), those become
slots, the tiered engine (:class:`~sharkrec.export.engine.ServingEmbedding`) reads them in their
stored precision (fp32 / fp16 / int8 / int4, pruned fields their constant, clustered fields their
shared rows), and the ``dense`` program runs the network on the vectors.

HTTP (``sharkrec serve``): ``POST /predict`` with ``{"inputs": [arg_1, arg_2, ...]}``, one JSON value
per positional argument of the model's forward, each shaped as that argument (a tensor as nested
lists of numbers, read with the dtype it was exported with; a dict of tensors as an object; a TorchRec
``KeyedJaggedTensor`` as an object of its parts, ``{"values": [...], "lengths": [...]}`` plus ``"weights"``
when it was exported weighted, its keys fixed by the artifact). The answer is ``{"output": ...}``: the
model's output with every tensor as nested lists. Every input leaf is found by its path in the request
(``manifest["inputs"]["leaves"]``); a part absent at export (a KJT's offsets) stays absent.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from sharkrec.data.batch import FieldIds
from sharkrec.data.user import tree_canonical
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import CheckpointError, ConfigError, DataError
from sharkrec.export import integrity, programs
from sharkrec.export.artifact import (
    USER_FILES,
    USER_KIND,
    _atomic_dir,
    _memory,
    _read_fields,
    check_exportable,
    embedding_section,
    write_manifest,
)
from sharkrec.export.engine import ServingEmbedding
from sharkrec.export.tables import ServingVocabulary, export_fields
from sharkrec.io import read_bounded
from sharkrec.model.fieldmap import FieldMap, _import_optional_kinds
from sharkrec.model.lookups import LOOKUP_KINDS, LookupKind
from sharkrec.model.wrapped import FieldModel, LookupSlot

USER_VERSION = 1
_LAYER_VERSION = 2  # the first version with a layer that computes rows (hashed embeddings)
MAX_PROGRAM_BYTES = 256 << 20
_FIX = "re-export it with save_user_artifact"
_JSON_SCALARS = (bool, int, float, str)


def save_user_artifact(model: FieldModel, example: Any, path: str | os.PathLike[str], *,
                       vocabularies: Mapping[str, Vocabulary] | None = None) -> dict[str, Any]:
    """Write the artifact of ``model`` to directory ``path`` atomically; returns the manifest.

    Args:
        model: a :class:`FieldModel` (its embedding fp32, mixed-precision, pruned, clustered, hashed or a
            composition).
        example: inputs of the model's forward (a tuple = positional arguments) to trace the network with;
            use a batch of 2 or more samples.
        vocabularies: per field the row counts that order each tier hottest first (``UserData.vocabularies``);
            default: row order.
    """
    if not isinstance(model, FieldModel):
        raise ConfigError(f"save_user_artifact takes a FieldModel (FieldModel.wrap(your_model, fields)), not a "
                          f"{type(model).__name__}; sharkrec's own DLRM goes through save_artifact")
    inputs = tree_canonical(example if isinstance(example, tuple) else (example,))
    leaves = pytree.tree_leaves(inputs)
    if not any(isinstance(leaf, Tensor) for leaf in leaves) or \
            not all(leaf is None or isinstance(leaf, Tensor) for leaf in leaves):
        kinds = sorted({type(leaf).__name__ for leaf in leaves if not (leaf is None or isinstance(leaf, Tensor))})
        raise ConfigError(f"the example inputs hold {', '.join(kinds) or 'no tensors'}; an artifact serves inputs "
                          "that are tensors (or tuples, lists, dicts of tensors, KeyedJaggedTensors)")
    lookups = _lookup_entries(model, inputs)
    ids_program, dense_program = programs.capture(model, inputs)
    count = sum(1 for entry in lookups for leaf in entry["leaves"] if "tensor" in leaf)
    if len(ids_program.graph_signature.user_outputs) != count:
        raise ConfigError(f"the traced lookups return {len(ids_program.graph_signature.user_outputs)} tensors but "
                          f"the model's lookups take {count}; call every lookup once per forward pass")
    tensors = _program_tensors(ids_program, dense_program)
    embedding = model.embedding
    tables, constants, layer = export_fields(embedding, vocabularies or _identity_vocabularies(model))
    rows = model.fields.field_rows()
    for table in tables:  # the ids a lookup sees are rows: only identity vocabularies fit
        try:
            _slot_of_row(table.vocabulary, rows[table.name])
        except CheckpointError:
            raise ConfigError(f"the vocabulary of field {table.name!r} is not the identity over its "
                              f"{rows[table.name]} rows; pass UserData.vocabularies (or none)") from None
    check_exportable(tensors, constants)
    dim = int(embedding.embedding_dim)
    section, table_tensors, vocab_tensors = embedding_section(embedding.field_names, tables, constants, layer, dim)
    manifest: dict[str, Any] = {
        "format": "sharkrec-artifact", "kind": USER_KIND, "version": USER_VERSION if layer is None else _LAYER_VERSION,
        "model": {"class": type(model.network).__name__, "fields": model.fields.to_dict()},
        "tasks": list(model.task_names),
        "inputs": {"structure": programs.spec_dumps(inputs), "leaves": input_paths(inputs),
                   "tensors": programs.input_leaves(ids_program)},
        "lookups": lookups,
        "programs": {what: {"graph": f"program.{what}.json",
                            "state": sorted(program.state_dict), "constants": sorted(program.constants)}
                     for what, program in (("ids", ids_program), ("dense", dense_program))},
        "embedding": section,
        "memory": _memory(tables, len(constants), dim, layer),
    }
    with _atomic_dir(Path(path)) as tmp:
        for what, program in (("ids", ids_program), ("dense", dense_program)):
            (tmp / f"program.{what}.json").write_bytes(programs.program_json(program))
        save_file(tensors, str(tmp / "program.safetensors"))
        save_file(table_tensors, str(tmp / "embedding.safetensors"))
        save_file(vocab_tensors, str(tmp / "vocabulary.safetensors"))
        write_manifest(tmp, manifest, USER_FILES)
    return manifest


def _lookup_entries(model: FieldModel, inputs: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Per lookup slot: its kind, fields, and the structure of its call (tensor leaves numbered in call order)."""
    from sharkrec.export.programs import lookup_calls

    model.record(inputs)  # a one-line DataError when the example does not fit the model
    calls = lookup_calls(model, inputs)
    slots = {m.positions[0]: m for m in model.network.modules() if isinstance(m, LookupSlot)}
    entries, tensor = [], 0
    for position in sorted(calls):
        slot = slots[position]
        leaves: list[dict[str, Any]] = []
        for leaf in pytree.tree_leaves(calls[position]):
            if isinstance(leaf, Tensor):
                leaves.append({"tensor": tensor})
                tensor += 1
            elif leaf is None or isinstance(leaf, _JSON_SCALARS):
                leaves.append({"value": leaf})
            else:
                raise ConfigError(f"lookup {slot.fields[0].module!r} is called with a {type(leaf).__name__}; an "
                                  "artifact stores calls with tensors, numbers and strings")
        entries.append({"kind": slot.kind.name, "module": type(slot.kind).__module__,
                        "fields": [f.name for f in slot.fields], "positions": list(slot.positions),
                        "call": programs.spec_dumps(calls[position]), "leaves": leaves})
    return entries


def input_paths(inputs: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Per flattened input leaf: where it sits (``[["seq", 1], ["attr", "values"]]``) and whether it is a tensor.

    A JSON request names each leaf by this path: list items by position, dict entries and the attributes of
    a library's pytree class (a KeyedJaggedTensor's ``values`` / ``lengths`` / ``weights``) by name.
    """
    out = []
    for path, leaf in pytree.tree_flatten_with_path(inputs)[0]:
        steps: list[list[Any]] = []
        for key in path:
            if isinstance(key, pytree.SequenceKey):
                steps.append(["seq", key.idx])
            elif isinstance(key, pytree.MappingKey):
                steps.append(["key", key.key])
            elif isinstance(key, pytree.GetAttrKey):
                steps.append(["attr", key.name.lstrip("_")])
            else:
                raise ConfigError(f"an input sits at {pytree.keystr(path)}, a place an artifact cannot name; pass "
                                  "tensors in tuples, lists, dicts or a KeyedJaggedTensor")
        out.append({"path": steps, "tensor": isinstance(leaf, Tensor)})
    return out


def _program_tensors(ids: Any, dense: Any) -> dict[str, Tensor]:
    """Both programs' tensors in one dict: weights once under ``param/<path>``, constants per program."""
    out: dict[str, Tensor] = {}
    for what, program in (("ids", ids), ("dense", dense)):
        state, constants = programs.program_tensors(program)
        for name, value in state.items():
            key = f"param/{name}"
            if key in out and not torch.equal(out[key], value):
                raise ConfigError(f"the network's weight {name!r} differs between its traced programs; export a "
                                  "model in eval mode that does not change its weights in forward")
            out[key] = value
        out.update({f"{what}.const/{name}": value for name, value in constants.items()})
    return out


def _identity_vocabularies(model: FieldModel) -> dict[str, Vocabulary]:
    rows = {f.name: f.rows for f in model.fields.fields}
    return {name: Vocabulary.identity(name, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
            for name, n in rows.items()}


# ---------------------------------------------------------------------- loading
class _Lookup:
    """One lookup of the served network: its kind, its fields' positions and how to rebuild its call."""

    def __init__(self, entry: Mapping[str, Any], fields: FieldMap, outputs: int) -> None:
        kind = LOOKUP_KINDS.get(str(entry["kind"]))
        if kind is None:
            raise CheckpointError(f"lookup kind {entry['kind']!r} is unknown; known: {sorted(LOOKUP_KINDS)} "
                                  "(install the package that defines it, e.g. torchrec)")
        self.kind: LookupKind = kind
        by_name = {f.name: f for f in fields.fields}
        names = [str(n) for n in entry["fields"]]
        if any(n not in by_name for n in names) or not names:
            raise CheckpointError(f"a lookup names fields {names} that the field map lacks")
        self.fields = tuple(by_name[n] for n in names)
        self.positions = [integrity.integer(p, "lookup position") for p in entry["positions"]]
        if self.positions != [fields.names.index(n) for n in names]:
            raise CheckpointError(f"lookup of fields {names} has positions {self.positions}, not their map order")
        self.spec = programs.spec_loads(entry["call"], "lookup call")
        self.leaves = list(entry["leaves"])
        if self.spec.num_leaves != len(self.leaves):
            raise CheckpointError(f"lookup of fields {names} lists {len(self.leaves)} call values for a call of "
                                  f"{self.spec.num_leaves}")
        for leaf in self.leaves:
            if "tensor" in leaf:
                integrity.integer(leaf["tensor"], "lookup call tensor")
                if leaf["tensor"] >= outputs:
                    raise CheckpointError(f"lookup call tensor {leaf['tensor']} is not an output of the ids program")
            elif not (leaf.get("value") is None or isinstance(leaf.get("value"), _JSON_SCALARS)):
                raise CheckpointError(f"lookup of fields {names} has a call value {leaf!r}; expected a tensor index "
                                      "or a JSON number / string")

    def field_ids(self, outputs: Sequence[Tensor]) -> list[FieldIds]:
        values = [outputs[leaf["tensor"]] if "tensor" in leaf else leaf["value"] for leaf in self.leaves]
        args, kwargs = pytree.tree_unflatten(values, self.spec)
        return self.kind.field_ids(self.fields, tuple(args), dict(kwargs))


class UserServingModel(nn.Module):
    """A user's model served from an artifact: called with the model's inputs, returns the model's output.

    Attributes:
        embedding: the tiered serving engine over every field (field order of the map).
        fields: the field map; ``task_names``: the tasks; ``manifest``: the artifact's manifest.
    """

    def __init__(self, ids: nn.Module, dense: nn.Module, lookups: Sequence[_Lookup], embedding: ServingEmbedding,
                 slot_of_row: Mapping[str, Tensor], fields: FieldMap, input_spec: pytree.TreeSpec,
                 input_tensors: Sequence[Mapping[str, Any]], input_leaves: Sequence[Mapping[str, Any]],
                 manifest: Mapping[str, Any]) -> None:
        super().__init__()
        self.ids_program, self.dense_program = ids, dense
        self.lookups = list(lookups)
        self.embedding = embedding
        self.slot_of_row = dict(slot_of_row)
        self.fields = fields
        self.input_spec = input_spec
        self.input_tensors = [dict(t) for t in input_tensors]
        self.input_leaves = [dict(leaf) for leaf in input_leaves]
        self.manifest = dict(manifest)
        self.task_names = tuple(str(t) for t in manifest.get("tasks", ()))

    def forward(self, *inputs: Any) -> Any:
        """The model's output for its forward's positional ``inputs``."""
        inputs = tree_canonical(inputs)
        self._check_inputs(inputs)
        with torch.inference_mode():
            vectors = self.field_vectors(inputs)
            try:
                return self.dense_program(vectors, inputs)
            except RuntimeError as exc:  # a runtime shape guard of the program (e.g. sizes that must agree)
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise DataError(f"the model rejected the inputs ({reason}); pass inputs shaped as at export"
                                ) from None

    def field_vectors(self, inputs: tuple[Any, ...]) -> Tensor:
        """(B, F, D) vectors the engine reads for ``inputs``, in field order."""
        try:
            outputs = self.ids_program(inputs)
        except RuntimeError as exc:  # a shape guard of the program, or the input type's own check
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise DataError(f"the model rejected the inputs ({reason}); pass inputs shaped as at export") from None
        sparse: list[FieldIds | None] = [None] * len(self.fields.fields)
        for lookup in self.lookups:
            for position, ids in zip(lookup.positions, lookup.field_ids(outputs), strict=True):
                sparse[position] = self._slots(position, ids)
        return self.embedding([s for s in sparse if s is not None])

    def _slots(self, position: int, ids: FieldIds) -> FieldIds:
        field = self.fields.fields[position]
        values = ids.values.long()
        if values.numel():
            low, high = torch.aminmax(values)
            if int(low) < 0 or int(high) >= field.rows:
                raise DataError(f"field {field.name!r} got ids from {int(low)} to {int(high)}; its table has "
                                f"{field.rows} rows (ids 0..{field.rows - 1})")
        slots = self.slot_of_row.get(field.name)
        values = values if slots is None else slots.index_select(0, values)  # pruned fields read no rows
        return FieldIds(values, ids.offsets, ids.weights)

    def _check_inputs(self, inputs: tuple[Any, ...]) -> None:
        leaves, spec = pytree.tree_flatten(inputs)
        if spec != self.input_spec:
            raise DataError(f"the model takes inputs shaped {self.input_spec}, got {spec}; pass the positional "
                            "arguments the model was exported with")
        tensors = iter(self.input_tensors)
        for leaf, record in zip(leaves, self.input_leaves, strict=True):
            where = _path_text(record["path"])
            if not record["tensor"]:
                if leaf is not None:
                    raise DataError(f"input {where} was absent when the model was exported; pass it as None "
                                    "(or re-export with it)")
                continue
            want = next(tensors)
            if not isinstance(leaf, Tensor) or str(leaf.dtype).removeprefix("torch.") != want["dtype"] \
                    or leaf.ndim != want["ndim"]:
                got = f"{leaf.dtype} of {leaf.ndim} dims" if isinstance(leaf, Tensor) else type(leaf).__name__
                raise DataError(f"input {where} is {got}; the model was exported with {want['dtype']} of "
                                f"{want['ndim']} dims")
            if any(w is not None and w != d for w, d in zip(want["shape"], leaf.shape, strict=True)):
                shape = ", ".join("B" if w is None else str(w) for w in want["shape"])
                raise DataError(f"input {where} has shape {tuple(leaf.shape)}; the model takes ({shape})")

    def parse_inputs(self, arguments: Sequence[Any]) -> tuple[Any, ...]:
        """JSON values (one per positional argument, tensors as nested lists) → the model's inputs.

        Each leaf is found by its path: list items by position, dict entries and the parts of a
        KeyedJaggedTensor (``{"values": [...], "lengths": [...]}``) by name; parts absent at export stay absent.
        """
        tensors = iter(self.input_tensors)
        leaves: list[Tensor | None] = []
        for record in self.input_leaves:
            where = _path_text(record["path"])
            value = _at_path(arguments, record["path"], where)
            if not record["tensor"]:
                if value is not None:
                    raise DataError(f"input {where} was absent when the model was exported; leave it out")
                leaves.append(None)
                continue
            want = next(tensors)
            if value is None:
                raise DataError(f"input {where} is missing; send it as nested lists of {want['dtype']}")
            try:
                tensor = torch.tensor(value, dtype=getattr(torch, want["dtype"]))
            except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
                raise DataError(f"input {where} is not a {want['dtype']} tensor ({str(exc).splitlines()[0][:120]}); "
                                "send nested lists of numbers") from None
            if tensor.ndim != want["ndim"]:
                raise DataError(f"input {where} has {tensor.ndim} dims; the model takes {want['ndim']}")
            leaves.append(tensor)
        return tuple(pytree.tree_unflatten(leaves, self.input_spec))


def _path_text(path: Sequence[Sequence[Any]]) -> str:
    """``inputs[1].values`` for path ``[["seq", 1], ["attr", "values"]]``."""
    text = "inputs"
    for step, key in path:
        text += f".{key}" if step == "attr" else f"[{key!r}]" if step == "key" else f"[{key}]"
    return text


def _at_path(arguments: Any, path: Sequence[Sequence[Any]], where: str) -> Any:
    """The JSON value at ``path`` of the request's arguments (None where an object lacks the name)."""
    value = arguments
    for step, key in path:
        if step == "seq":
            if not isinstance(value, list | tuple) or key >= len(value):
                raise DataError(f"the inputs have no {where}; send one value per positional argument, shaped as the "
                                "model's inputs")
            value = value[key]
        else:
            if not isinstance(value, dict):
                raise DataError(f"the inputs have no {where}; send an object with {key!r} there")
            value = value.get(key)
            if value is None:
                return None
    return value


def load_user_artifact(root: Path, manifest: Mapping[str, Any], *, kernel: str = "fused") -> UserServingModel:
    """The :class:`UserServingModel` of checked artifact ``root`` (``read_manifest`` ran); no pickle is read."""
    _import_kind_modules(manifest)
    fields = FieldMap.from_dict(manifest["model"]["fields"])
    loaded = {name: load_file(str(root / name)) for name in USER_FILES if name.endswith(".safetensors")}
    section = manifest["embedding"]
    dim = integrity.integer(section["dim"], "embedding dim", 1)
    names = [entry["name"] for entry in section["fields"]]
    if names != list(fields.names) or dim != fields.embedding_dim:
        raise CheckpointError(f"embedding fields {integrity.names(names)} (dim {dim}) differ from the field map's "
                              f"{integrity.names(fields.names)} (dim {fields.embedding_dim})")
    tables, constants, layer = _read_fields(section, dim, loaded)
    multi_hot = [f.name for f in fields.fields if f.pooling != "none"]
    embedding = ServingEmbedding(names, tables, constants, dim, kernel=kernel, multi_hot=multi_hot, layer=layer)
    rows = {f.name: f.rows for f in fields.fields}
    slot_of_row = {t.name: _slot_of_row(t.vocabulary, rows[t.name]) for t in tables}
    weights = loaded["program.safetensors"]
    loaded_programs = {}
    for what in ("ids", "dense"):
        entry = manifest["programs"][what]
        state = {name: _stored(weights, f"param/{name}") for name in entry["state"]}
        consts = {name: _stored(weights, f"{what}.const/{name}") for name in entry["constants"]}
        raw = read_bounded(root / f"program.{what}.json", "program", CheckpointError, _FIX, fix=_FIX,
                           max_bytes=MAX_PROGRAM_BYTES)
        loaded_programs[what] = programs.load_program(raw, state, consts, what)
    declared = {f"param/{n}" for what in ("ids", "dense") for n in manifest["programs"][what]["state"]}
    declared |= {f"{what}.const/{n}" for what in ("ids", "dense") for n in manifest["programs"][what]["constants"]}
    integrity.check_declared("program.safetensors", weights, declared)
    ids = loaded_programs["ids"]
    outputs = len(ids.graph_signature.user_outputs)
    lookups = [_Lookup(entry, fields, outputs) for entry in manifest["lookups"]]
    covered = sorted(p for lookup in lookups for p in lookup.positions)
    if covered != list(range(len(fields.fields))):
        raise CheckpointError(f"the lookups cover field positions {covered}, not each of 0..{len(fields.fields) - 1} "
                              "once")
    info = manifest["inputs"]
    input_spec = programs.spec_loads(info["structure"], "input")
    leaves = info.get("leaves")
    if leaves is None:  # version 1: tensors in built-in containers only
        leaves = input_paths(pytree.tree_unflatten([torch.zeros(())] * input_spec.num_leaves, input_spec))
    if input_spec.num_leaves != len(leaves) or info["tensors"] != programs.input_leaves(ids) or \
            sum(1 for leaf in leaves if leaf.get("tensor")) != len(info["tensors"]):
        raise CheckpointError("the manifest's inputs differ from the ids program's inputs")
    return UserServingModel(ids.module(), loaded_programs["dense"].module(), lookups, embedding, slot_of_row, fields,
                            input_spec, info["tensors"], leaves, manifest)


def _import_kind_modules(manifest: Mapping[str, Any]) -> None:
    """Import the sharkrec modules that define the artifact's lookup kinds (the TorchRec kinds import torchrec,
    which also registers its KeyedJaggedTensor with pytree, so the programs' input structure loads)."""
    import importlib

    _import_optional_kinds()
    for entry in manifest.get("lookups", ()):
        module = str(entry.get("module", "")) if isinstance(entry, Mapping) else ""
        if str(entry.get("kind")) not in LOOKUP_KINDS and module.startswith("sharkrec.") and \
                re.fullmatch(r"[a-z_][a-z0-9_.]*", module):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise CheckpointError(f"lookup kind {entry['kind']!r} needs {exc.name or module}, which is not "
                                      "installed; install it (for TorchRec models: pip install 'sharkrec[torchrec]')"
                                      ) from None


def _stored(tensors: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in tensors:
        raise CheckpointError(f"tensor {name!r} that the manifest names is not stored in program.safetensors")
    return tensors[name]


def _slot_of_row(vocabulary: ServingVocabulary, rows: int) -> Tensor:
    """(rows,) int64 slot of each row id of a field, from its identity keys (row 0 is the OOV row)."""
    keys = np.asarray(vocabulary.keys)
    if vocabulary.key_kind != "int" or len(keys) != rows - 1 or (
            len(keys) and not np.array_equal(np.sort(keys), np.arange(1, rows))):
        raise CheckpointError(f"field {vocabulary.name!r} keys are not the row ids 1..{rows - 1} of its table")
    slots = np.empty(rows, dtype=np.int64)
    slots[0] = vocabulary.oov_slot
    if vocabulary.key_slots is None:
        positions = np.arange(len(keys))
        slots[keys] = positions + (positions >= vocabulary.oov_slot)
    else:
        slots[keys] = vocabulary.key_slots
    return torch.from_numpy(slots)


def output_json(output: Any) -> Any:
    """The model's output with every tensor as nested lists (JSON-ready)."""
    return json.loads(json.dumps(pytree.tree_map(lambda v: v.tolist() if isinstance(v, Tensor) else v, output)))
