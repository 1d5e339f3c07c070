"""A user's model on sharkrec's field path: their network, their lookups answered by one sharkrec embedding.

:class:`FieldModel` is to a user's DeepFM / DCN / two-tower / TorchRec model what :class:`~sharkrec.model.dlrm.DLRM`
is to sharkrec's own: it exposes ``field_vectors(batch)`` (B, F, D) and ``logits_from_fields(vectors)`` (B, T),
``embedding`` (a :class:`~sharkrec.model.embedding.FieldEmbedding` over every field) and ``with_embedding``, so
importance, pruning, F-Quantization, Saec, compress and the trainer run on it unchanged. Called like the
user's model (``wrapped(*inputs)``), it returns what the user's model returns.

How: each lookup module of the field map is replaced (in a copy of the network; the caller's model is never
touched) by a :class:`LookupSlot` with no weights. A forward pass runs the network twice in two modes:

(``sharkrec.export.user_artifact`` traces the network with torch.export in a third mode, *export*: slots
keep the arguments of their call and answer zeros without stopping the pass.)

1. *record*: slots store the ids of their call (the ids the module itself would have seen, offsets already
   added) and answer zeros; the pass stops as soon as the last field is recorded (usually right after the
   lookups, before the dense network runs), in eval mode so no batch statistics move;
2. embedding: ``embedding(ids)`` gives the (B, F, D) field vectors;
3. *replay*: the network runs again and every slot answers with its fields' vectors, shaped as the module's
   own output (``LookupKind.output``).

Batches of a :class:`~sharkrec.data.user.UserSplit` carry their recorded ids, so training and scoring skip
step 1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding
from sharkrec.model.fieldmap import FieldMap, call_model, lookup_modules
from sharkrec.model.lookups import Field, LookupKind, dummy_vectors
from sharkrec.model.protocol import FieldPathMethods, reset_network


@dataclass(frozen=True)
class InputBatch(Batch):
    """A :class:`Batch` of a user's model: ``inputs`` is what the model's forward takes (a tuple = *args);
    ``sparse`` holds the ids its lookups see (recorded once) and ``dense`` is empty (B, 0)."""

    inputs: Any = None


class _Recorded(Exception):
    """Raised by the last slot of a record pass: the rest of the network need not run."""


class _Tape:
    """What the slots of one wrapped network share during a pass (a plain object, never a module)."""

    def __init__(self, fields: int) -> None:
        self.mode: str | None = None
        self.ids: list[FieldIds | None] = [None] * fields
        self.vectors: Tensor | None = None
        self.stop_early = True
        self.calls: list[tuple[LookupSlot, tuple[Any, ...], dict[str, Any]]] | None = None  # raw calls, when kept
        #: "export" mode: the (args, kwargs) of each slot's call, by the slot's first field position
        self.export_calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}


class LookupSlot(nn.Module):
    """Stands where a lookup module was; holds no weights and answers from the wrapping model's pass."""

    def __init__(self, kind: LookupKind, fields: Sequence[Field], positions: Sequence[int], tape: _Tape) -> None:
        super().__init__()
        self.kind = kind
        self.fields = tuple(fields)
        self.positions = tuple(int(p) for p in positions)
        self.tape = tape
        self._index: Tensor
        self.register_buffer("_index", torch.tensor(self.positions, dtype=torch.int64), persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tape = self.tape
        if tape.mode == "record":
            if tape.calls is not None:
                tape.calls.append((self, args, kwargs))
            ids = self.kind.field_ids(self.fields, args, kwargs)
            for position, field_ids in zip(self.positions, ids, strict=True):
                tape.ids[position] = field_ids
            if tape.stop_early and all(i is not None for i in tape.ids):
                raise _Recorded
            vectors = dummy_vectors(ids[0].batch_size(), len(self.fields), self.fields[0].dim)
            return self.kind.output(self.fields, vectors, args, kwargs)
        if tape.mode == "export":  # traced by torch.export: keep the call, answer zeros, never stop early
            tape.export_calls[self.positions[0]] = (args, kwargs)
            size = self.kind.batch_size(self.fields, args, kwargs)
            return self.kind.output(self.fields, torch.zeros(size, len(self.fields), self.fields[0].dim), args, kwargs)
        if tape.mode == "replay":
            assert tape.vectors is not None
            vectors = tape.vectors.index_select(1, self._index)  # (B, k, D)
            return self.kind.output(self.fields, vectors, args, kwargs)
        raise ConfigError("this lookup was replaced by sharkrec: call the FieldModel that wraps the network, "
                          "not the network itself")

    def extra_repr(self) -> str:
        return f"{self.kind.name}: {', '.join(f.name for f in self.fields)}"


def replay(network: nn.Module, tape: _Tape, vectors: Tensor, inputs: Any) -> Any:
    """Run ``network`` on ``inputs`` with its slots answering slices of ``vectors`` (B, F, D)."""
    tape.mode, tape.vectors = "replay", vectors
    try:
        return call_model(network, inputs)
    finally:
        tape.mode, tape.vectors = None, None


def default_logits(output: Any, task_names: Sequence[str]) -> Tensor:
    """The model's output as (B, T) logits: a (B,) or (B, T) tensor, or a dict of (B,) / (B, 1) logits per task."""
    if isinstance(output, dict):
        from sharkrec.data.user import stack_tasks

        return stack_tasks(output, task_names, "the model's output dict",
                           "return one logit per task or pass output=...")
    if not isinstance(output, Tensor):
        raise DataError(f"the model returned {type(output).__name__}; return logits (B,) or (B, T), or pass "
                        "output=lambda out: ... to pick them")
    logits = output.reshape(-1, 1) if output.ndim <= 1 or (output.ndim == 2 and output.shape[1] == 1) else output
    if logits.ndim != 2 or logits.shape[1] != len(task_names):
        raise DataError(f"the model returned logits of shape {tuple(output.shape)} for {len(task_names)} tasks "
                        f"{list(task_names)}; return (B,) or (B, {len(task_names)}) logits")
    return logits


class FieldModel(FieldPathMethods, nn.Module):
    """A user's network whose lookups are answered by one sharkrec :class:`FieldEmbedding` (see the module doc).

    Build it with :meth:`wrap`. Args of the constructor:
        network: the user's network with its lookups replaced by :class:`LookupSlot`s.
        fields: the field map.
        embedding: the tables of every field of ``fields``, in field order.
        tasks: task (label) names, one logit each.
        output: maps the network's output to (B, T) logits (default :func:`default_logits`).
        loss: ``loss(output, labels (B, T)) -> scalar`` to fine-tune with (pruning, Saec, compress); default
            the task-weighted binary cross-entropy of the logits. Importance always scores with the
            cross-entropy of the logits (SHARK Eq. 1), whatever the training loss.
    """

    def __init__(self, network: nn.Module, fields: FieldMap, embedding: FieldEmbedding, tape: _Tape, *,
                 tasks: Sequence[str] = ("label",), output: Callable[[Any], Tensor] | None = None,
                 loss: Callable[[Any, Tensor], Tensor] | None = None) -> None:
        super().__init__()
        if tuple(embedding.field_names) != fields.names:
            raise ConfigError(f"embedding fields {list(embedding.field_names)} differ from the field map's "
                              f"{list(fields.names)}; build the embedding over the map's fields")
        self.network = network
        self.fields = fields
        self.embedding = embedding
        self.tape = tape
        self.tasks = tuple(str(t) for t in tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks {list(self.tasks)} must be distinct names, at least one")
        self.output = output
        self.loss = loss
        self._pending_labels: Tensor | None = None
        self._inputs: Any = None
        self._batch_size = -1

    # ------------------------------------------------------------------ build
    @classmethod
    def wrap(cls, model: nn.Module, fields: FieldMap, *, tasks: Sequence[str] = ("label",),
             output: Callable[[Any], Tensor] | None = None,
             loss: Callable[[Any, Tensor], Tensor] | None = None, init_std: float = 0.01) -> FieldModel:
        """Copy ``model`` with every lookup of ``fields`` replaced by a slot, its rows moved into one fp32
        :class:`FloatEmbedding`. The caller's model is not changed; its tables are read, never copied twice.
        ``init_std``: σ of the rows :meth:`fresh_copy` draws (the user's own embedding init)."""
        lookups = lookup_modules(model)
        position = {f.name: i for i, f in enumerate(fields.fields)}
        tape = _Tape(len(fields.fields))
        memo: dict[int, Any] = {}
        tables: dict[str, Tensor] = {}
        for path in fields.modules:
            if path not in lookups:
                known = ", ".join(lookups) or "none"
                raise ConfigError(f"the field map names module {path!r}, which is not a lookup of the model; "
                                  f"its lookups are: {known}")
            module, kind = lookups[path]
            owned = fields.of_module(path)
            for field in owned:
                table = kind.table(module, field)
                if tuple(table.shape) != (field.rows, field.dim):
                    raise ConfigError(f"field {field.name!r} maps to rows of shape {tuple(table.shape)} in {path!r}, "
                                      f"not ({field.rows}, {field.dim}); rebuild the field map from this model")
                tables[field.name] = table
            memo[id(module)] = LookupSlot(kind, owned, [position[f.name] for f in owned], tape)
        network = copy.deepcopy(model, memo)
        embedding = FloatEmbedding.from_tables({name: tables[name] for name in fields.names}, init_std=init_std)
        return cls(network, fields, embedding, tape, tasks=tasks, output=output, loss=loss).train(model.training)

    # ------------------------------------------------------------------ the field path
    @property
    def field_names(self) -> tuple[str, ...]:
        return self.fields.names

    @property
    def sparse_names(self) -> tuple[str, ...]:
        return self.fields.names

    @property
    def num_fields(self) -> int:
        return len(self.fields.fields)

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.tasks

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_dense(self) -> int:
        return 0

    @property
    def embedding_dim(self) -> int:
        return self.fields.embedding_dim

    def record(self, inputs: Any, calls: list[Any] | None = None) -> list[FieldIds]:
        """The ids (one :class:`FieldIds` per field, local rows) the lookups see for ``inputs``; ``calls``, when
        given, receives each slot call as ``(slot, args, kwargs)``."""
        tape = self.tape
        tape.ids = [None] * self.num_fields
        tape.calls = calls
        tape.mode, tape.stop_early = "record", True
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                call_model(self.network, inputs)
        except _Recorded:
            pass
        except (ConfigError, DataError):
            raise
        except Exception as error:
            raise DataError(f"the model rejected the batch ({type(error).__name__}: {error}); pass the inputs "
                            "its forward takes") from None
        finally:
            tape.mode, tape.calls = None, None
            self.network.train(was_training)
        missing = [f.name for f, ids in zip(self.fields.fields, tape.ids, strict=True) if ids is None]
        if missing:
            raise DataError(f"the model did not look up fields {missing} for this batch; every field of the map must "
                            "be looked up in every forward pass")
        ids = [i for i in tape.ids if i is not None]
        tape.ids = [None] * self.num_fields
        return ids

    def field_vectors(self, batch: Batch) -> Tensor:
        """(B, F, D) vectors the lookups would return (pooled), in field order; remembers the batch's inputs for
        :meth:`logits_from_fields`."""
        if not isinstance(batch, InputBatch):
            raise DataError("a FieldModel takes batches of a UserSplit (sharkrec.data.user); wrap the data with "
                            "sharkrec.data.user.from_batches")
        sparse = list(batch.sparse) if batch.sparse else self.record(batch.inputs)
        self._inputs, self._batch_size = batch.inputs, len(batch)
        return self.embedding(sparse)

    def logits_from_fields(self, vectors: Tensor, batch: Batch | None = None) -> Tensor:
        """(k·B, F, D) field vectors → (k·B, T) logits, the network's other inputs taken from ``batch`` (default:
        the batch last given to :meth:`field_vectors`), repeated k times when the vectors stack k copies
        of it (draw-major, as exact importance does)."""
        if batch is not None:
            if not isinstance(batch, InputBatch):
                raise DataError("a FieldModel takes batches of a UserSplit (sharkrec.data.user)")
            inputs, size = batch.inputs, len(batch)
        else:
            inputs, size = self._inputs, self._batch_size
        rows = int(vectors.shape[0])
        if size <= 0 or rows % size:
            raise DataError(f"field vectors of {rows} samples given for a batch of {size}; give vectors of the "
                            "batch (or k stacked copies of it)")
        if rows != size:
            from sharkrec.data.user import tree_take

            inputs = tree_take(inputs, torch.arange(size).repeat(rows // size))
        return self._logits(self._replay(vectors, inputs))

    def forward(self, *inputs: Any) -> Any:
        """What the user's model returns for ``inputs`` (its forward's positional arguments); for one
        :class:`InputBatch` (sharkrec's trainer and scorers), its (B, T) logits."""
        if len(inputs) == 1 and isinstance(inputs[0], InputBatch):
            return self.logits_from_fields(self.field_vectors(inputs[0]))
        args = inputs if len(inputs) != 1 else inputs[0]
        sparse = self.record(args)
        if self._pending_labels is not None:
            labels, self._pending_labels = self._pending_labels, None
            if len(labels) != sparse[0].batch_size():
                raise DataError(f"observe() got {len(labels)} labels but the batch has {sparse[0].batch_size()} "
                                "samples; call observe(labels) with this batch's labels right before its forward")
            self.embedding.observe_batch(sparse, labels)
        vectors = self.embedding(sparse)
        return self._replay(vectors, args)

    def observe(self, labels: Any) -> None:
        """Hand the next forward's labels ((B,), (B, T) or ``{task: (B,)}``) to the embedding with the ids that
        forward records: the one call per batch of a user's own loop that feeds F-Quantization's Eq. 7."""
        from sharkrec.data.user import labels_tensor

        self._pending_labels = labels_tensor(labels, self.tasks)

    def training_loss(self, vectors: Tensor, batch: Batch) -> Tensor | None:
        """The user's ``loss(output, labels)`` of the batch whose field vectors are ``vectors`` (None without one).

        One-line :class:`ConfigError` when it is not a finite scalar.
        """
        if self.loss is None:
            return None
        value = self.loss(self._replay(vectors, self._inputs), batch.labels)
        if not isinstance(value, Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(f"the loss returned {shape}, not a scalar; reduce it (e.g. .mean()) before returning")
        if not torch.isfinite(value):
            raise ConfigError(f"the loss is {float(value.detach())}; check the labels and lower the learning rate")
        return value

    def _replay(self, vectors: Tensor, inputs: Any) -> Any:
        return replay(self.network, self.tape, vectors, inputs)

    def _logits(self, output: Any) -> Tensor:
        logits = self.output(output) if self.output is not None else default_logits(output, self.tasks)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] != self.num_tasks:
            raise DataError(f"output=... returned {getattr(logits, 'shape', type(logits).__name__)}; return (B, "
                            f"{self.num_tasks}) logits")
        return logits

    # ------------------------------------------------------------------ parameters and copies
    def field_rows(self) -> dict[str, int]:
        return self.embedding.num_rows()

    def with_embedding(self, embedding: FieldEmbedding) -> FieldModel:
        """A new model using ``embedding`` (shared) and deep copies of the network (slots get a new tape)."""
        if tuple(embedding.field_names) != self.field_names:
            raise ConfigError(f"new embedding fields {list(embedding.field_names)} differ from the model's "
                              f"{list(self.field_names)}; keep the fields (a pruned field keeps a constant vector)")
        if embedding.embedding_dim != self.embedding_dim:
            raise ConfigError(f"new embedding dim {embedding.embedding_dim} differs from the model's "
                              f"{self.embedding_dim}")
        return copy.deepcopy(self, memo={id(self.embedding): embedding})

    def fresh_copy(self, seed: int) -> FieldModel:
        """A copy with every weight re-initialised, seeded by ``seed`` (the caller's random state untouched):
        the embedding's rows drawn again from N(0, σ²) (σ = its ``init_std``, 0.01 unless given to :meth:`wrap`,
        as a user's ``nn.init.normal_(std=0.01)``), the network's modules by :func:`reset_network`
        (``reset_parameters()`` of each, free biases at 0). One-line :class:`ConfigError` for an embedding that
        cannot draw its rows again (a compressed one: start from the fp32 model)."""
        clone = copy.deepcopy(self)
        reset = getattr(clone.embedding, "reset_parameters", None)
        if not callable(reset):
            raise ConfigError(f"a {type(self.embedding).__name__} cannot draw its rows afresh; re-initialise the fp32 "
                              "model (before pruning or compressing) or search from the trained weights")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            reset()
            reset_network(clone.network)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_inputs"] = None  # never carry a batch into a copy
        return state
