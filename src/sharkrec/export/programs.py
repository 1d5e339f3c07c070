"""A user's network as two torch.export programs, stored as JSON graphs + safetensors, loaded without pickle.

A :class:`~sharkrec.model.wrapped.FieldModel` runs its network around sharkrec's embedding; the
artifact keeps that network as two programs captured with :func:`torch.export.export` (non-strict,
dim 0 of every input tensor dynamic, so any batch size serves):

- ``ids``: the user's inputs → every lookup's call arguments (the tensors the slot received: ids,
  offsets, per-sample weights). The slots run in *export* mode (they keep their call and answer
  zeros without stopping), so the dense code after them is dead and dropped from the graph.
  The serving model turns those arguments into :class:`FieldIds` with the lookup's own
  :class:`~sharkrec.model.lookups.LookupKind` (eagerly, so value-dependent bag layouts are fine).
- ``dense``: (field vectors (B, F, D), the user's inputs) → the network's output, the slots in
  *replay* mode answering slices of the vectors.

Storage. ``torch.export.save`` writes a zip whose loader may unpickle (``torch.load(weights_only=False)``
for some weights, ``pickle.loads`` for custom objects), so it is not used. Each program is its
serialized graph (torch's own JSON schema, ``torch._export.serde``) with no tensors inside; the
weights (named by module path, shared by both programs) and the lifted constants go to safetensors.
Loading parses the JSON into torch's schema dataclasses, refuses any operator outside ``aten`` /
``prims`` and the symbolic-size helpers (a graph naming ``torch.os.system`` never becomes a call),
checks every stored tensor against the placeholder's recorded dtype and shape, then rebuilds the
program from the dicts (no bytes handed to ``torch.load``).
"""

from __future__ import annotations

import json
import operator
import re
import traceback
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram
from torch.utils import _pytree as pytree

from sharkrec.errors import CheckpointError, ConfigError
from sharkrec.model.fieldmap import call_model
from sharkrec.model.wrapped import FieldModel, _Tape, replay

_ALLOWED_OP = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")


class _IdsProgram(nn.Module):
    """inputs (a tuple of the forward's positional arguments) → the tensors every lookup was called with."""

    def __init__(self, network: nn.Module, tape: _Tape) -> None:
        super().__init__()
        self.net = network
        self.tape = tape

    def forward(self, inputs: tuple[Any, ...]) -> tuple[Tensor, ...]:
        tape = self.tape
        tape.mode, tape.export_calls = "export", {}
        try:
            call_model(self.net, inputs)
            calls = dict(tape.export_calls)
        finally:
            tape.mode, tape.export_calls = None, {}
        leaves: list[Tensor] = []
        for position in sorted(calls):
            leaves.extend(leaf for leaf in pytree.tree_leaves(calls[position]) if isinstance(leaf, Tensor))
        return tuple(leaves)


class _DenseProgram(nn.Module):
    """(field vectors (B, F, D), inputs) → the network's output, every lookup answered from the vectors."""

    def __init__(self, network: nn.Module, tape: _Tape) -> None:
        super().__init__()
        self.net = network
        self.tape = tape

    def forward(self, vectors: Tensor, inputs: tuple[Any, ...]) -> Any:
        return replay(self.net, self.tape, vectors, inputs)


def lookup_calls(model: FieldModel, inputs: tuple[Any, ...]) -> dict[int, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The (args, kwargs) each slot is called with for ``inputs`` (eager, export mode), by first field position."""
    tape = model.tape
    tape.mode, tape.export_calls = "export", {}
    try:
        with torch.no_grad():
            call_model(model.network, inputs)
        return dict(tape.export_calls)
    finally:
        tape.mode, tape.export_calls = None, {}


def _dynamic(tree: Any) -> Any:
    """dynamic_shapes for ``tree``: dim 0 of every tensor leaf dynamic, nothing else.

    Built-in containers map to the same container; a class registered with pytree by its library (a
    TorchRec ``KeyedJaggedTensor``) maps to the list of its flattened children, as torch.export reads it.
    """
    if isinstance(tree, Tensor):
        return {0: Dim.DYNAMIC} if tree.ndim else None
    kind = pytree._get_node_type(tree)
    node = pytree.SUPPORTED_NODES.get(kind)
    if node is None:
        return None
    children, context = node.flatten_fn(tree)
    mapped = [_dynamic(child) for child in children]
    return node.unflatten_fn(mapped, context) if kind in pytree.BUILTIN_TYPES else mapped


def capture(model: FieldModel, inputs: tuple[Any, ...]) -> tuple[ExportedProgram, ExportedProgram]:
    """The ``ids`` and ``dense`` programs of ``model``'s network, traced on example ``inputs``.

    A network torch.export cannot trace raises one :class:`ConfigError` line naming the construct.
    """
    network = model.network
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            vectors = model.embedding(model.record(inputs)).detach()  # (B, F, D)
        ids = _export(_IdsProgram(network, model.tape), (inputs,), (_dynamic(inputs),))
        graph = ids.graph_module.graph
        graph.eliminate_dead_code()  # the dense code after the lookups (their zeros feed nothing kept)
        ids.graph_module.recompile()
        dense = _export(_DenseProgram(network, model.tape), (vectors, inputs),
                        ({0: Dim.DYNAMIC}, _dynamic(inputs)))
    finally:
        network.train(was_training)
    return ids, dense


def _export(module: nn.Module, args: tuple[Any, ...], dynamic: tuple[Any, ...]) -> ExportedProgram:
    try:
        return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
    except Exception as exc:  # any failure of the tracer is the model's construct
        raise ConfigError(f"torch.export cannot capture the model's network: {describe_failure(exc)}; rewrite it "
                          "without data-dependent Python control flow (torch.where / torch.cond instead of "
                          "if on tensor values, no .item() / .tolist() branching)") from None


def describe_failure(exc: BaseException) -> str:
    """One line: the first line of the tracer's message and the user's source line it stopped at."""
    message = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    message = f"{type(exc).__name__}: {message[:240]}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/torch/" not in f.filename and "/sharkrec/" not in f.filename and "/site-packages/" not in f.filename]
    if frames:
        frame = frames[-1]
        message += f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} `{(frame.line or '').strip()[:120]}`"
    return message


# ---------------------------------------------------------------------- storage without pickle
def program_json(program: ExportedProgram) -> bytes:
    """The program's graph, signature and shape constraints as torch's serialized-program JSON (no tensors)."""
    from torch._export.serde.serialize import serialize

    for name, value in program.constants.items():
        if not isinstance(value, Tensor):
            raise ConfigError(f"the network holds a {type(value).__name__} constant {name!r} (a script object); "
                              "an artifact stores tensors only")
    return serialize(program, serialize_state_dict=False, serialize_constants=False,
                     serialize_example_inputs=False).exported_program


def program_tensors(program: ExportedProgram) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(state dict, lifted constants) of a program, contiguous copies fit for safetensors."""
    state = {name: t.detach().contiguous().clone() for name, t in program.state_dict.items()}
    constants = {name: t.detach().contiguous().clone() for name, t in program.constants.items()}
    return state, constants


def load_program(raw: bytes, state: Mapping[str, Tensor], constants: Mapping[str, Tensor], what: str
                 ) -> ExportedProgram:
    """The program of ``raw`` JSON with its tensors; every operator and stored tensor checked first."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass

    try:
        serialized = _bytes_to_dataclass(schema.ExportedProgram, raw)
    except (ValueError, TypeError, KeyError, AttributeError, AssertionError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"program {what} is not a serialized torch.export program ({type(exc).__name__})"
                              ) from None
    check_operators(serialized, what)
    parameters = {spec.parameter.parameter_name for spec in serialized.graph_module.signature.input_specs
                  if spec.type == "parameter"}
    state = {name: nn.Parameter(t, requires_grad=False) if name in parameters else t for name, t in state.items()}
    try:
        program = ExportedProgramDeserializer().deserialize(serialized, state, dict(constants), None)
    except Exception as exc:  # a damaged graph fails in many ways inside torch
        raise CheckpointError(f"program {what} does not load ({describe_failure(exc)})") from None
    check_program_tensors(program, what)
    return program


def check_operators(serialized: Any, what: str) -> None:
    """Refuse a serialized graph that calls anything but aten / prims ops and symbolic-size arithmetic."""
    from torch._export.serde.serialize import _SYM_OPS

    allowed = {f"{op.__module__}.{op.__name__}" for op in (*_SYM_OPS, operator.getitem)}
    for node in serialized.graph_module.graph.nodes:
        target = str(node.target)
        if target not in allowed and not _ALLOWED_OP.fullmatch(target):
            raise CheckpointError(f"program {what} calls {target[:120]!r}, which is not a torch operator sharkrec "
                                  "serves (aten, prims, symbolic sizes)")


def check_program_tensors(program: ExportedProgram, what: str) -> None:
    """Each parameter, buffer and constant matches the dtype and shape its placeholder was traced with."""
    from torch.export.graph_signature import InputKind

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT or spec.target is None:
            continue
        stored = program.state_dict.get(spec.target, program.constants.get(spec.target))
        traced = placeholders[spec.arg.name].meta.get("val")
        if not isinstance(stored, Tensor) or not isinstance(traced, Tensor):
            raise CheckpointError(f"program {what} needs tensor {spec.target!r}, which is not stored")
        if stored.dtype != traced.dtype or tuple(stored.shape) != tuple(traced.shape):
            raise CheckpointError(f"tensor {spec.target!r} of program {what} is {stored.dtype} "
                                  f"{tuple(stored.shape)}; the graph was traced with {traced.dtype} "
                                  f"{tuple(traced.shape)}")


def input_leaves(program: ExportedProgram) -> list[dict[str, Any]]:
    """dtype, ndim and shape (null: dynamic) of each user-input tensor of the ``ids`` program, in flattened order."""
    from torch.export.graph_signature import InputKind

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out = []
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            value = placeholders[spec.arg.name].meta.get("val")
            if isinstance(value, Tensor):  # a dynamic size is null
                shape = [int(d) if isinstance(d, int) else None for d in value.shape]
                out.append({"dtype": str(value.dtype).removeprefix("torch."), "ndim": value.ndim, "shape": shape})
    return out


def spec_dumps(tree: Any) -> str:
    """The pytree structure of ``tree`` as JSON text (``treespec_loads`` reads it back, no pickle)."""
    return pytree.treespec_dumps(pytree.tree_structure(tree))


def spec_loads(text: Any, what: str) -> pytree.TreeSpec:
    try:
        return pytree.treespec_loads(str(text))
    except (ValueError, TypeError, KeyError, json.JSONDecodeError, NotImplementedError) as exc:
        raise CheckpointError(f"the {what} structure in the manifest does not parse ({exc})") from None
