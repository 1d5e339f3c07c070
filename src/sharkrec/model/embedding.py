"""The embedding layer: one vector per sparse field and sample, behind a small swappable interface.

:class:`FieldEmbedding` is what the rest of the model sees: given one :class:`FieldIds` per field it
returns a (B, F, D) tensor in field order. How rows are stored (fp32 tables here; mixed precision,
shared rows or a pruned field's constant vector later) stays behind that interface, so a compressor
builds a new embedding and hands it to ``DLRM.with_embedding`` without touching the rest.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError

_ID_DTYPES = (torch.int64, torch.int32)


class FieldEmbedding(nn.Module, abc.ABC):
    """Looks up and pools the rows of every sparse field.

    Attributes:
        field_names: sparse field names, in the order ``forward`` expects and returns them.
        embedding_dim: D, the length of every field vector.
    """

    field_names: tuple[str, ...]
    embedding_dim: int
    #: name under which the class is registered; model files record it to rebuild the layer
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            EMBEDDING_KINDS[cls.kind] = cls

    def _position(self, field_name: str) -> int:
        """Index of ``field_name`` in :attr:`field_names`; a one-line ConfigError naming the known fields."""
        try:
            return self.field_names.index(field_name)
        except ValueError:
            raise ConfigError(
                f"field {field_name!r} has no table; known fields: {', '.join(self.field_names)}"
            ) from None

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments; ``from_spec(spec)`` + ``load_state_dict`` rebuild the layer."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved: it does not define spec()")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> FieldEmbedding:
        """An empty layer of the shape ``spec`` describes (weights come from ``load_state_dict``)."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded: it does not define from_spec()")

    # -- training hooks: a layer that stores rows itself (mixed precision, clustering) overrides these
    def observe_batch(self, sparse: Sequence[FieldIds], labels: Tensor) -> None:
        """Called by the trainer before each training step with the batch's ids and labels (B, T)."""

    def make_sparse_optimizer(self, kind: str, lr: float) -> torch.optim.Optimizer | None:
        """An optimizer that updates this layer's rows itself after ``backward``.

        ``None`` (the default) means: the trainer updates :meth:`sparse_parameters` with its own
        sparse optimizer of ``kind`` ("sgd", "adagrad", "adam").
        """
        return None

    #: whether torchrun data parallelism (:mod:`sharkrec.train.parallel`) can train this layer; a layer
    #: that cannot sets it False and names why in :attr:`single_process_reason`
    trains_data_parallel: ClassVar[bool] = True
    single_process_reason: ClassVar[str] = ""

    def sync_gradients(self, world: int) -> None:
        """Under torchrun, after ``backward``: make the gradients this layer keeps outside its parameters
        (rows read in the last forward pass) the mean over the ``world`` ranks. Parameters' sparse gradients
        are synchronised by the trainer; a layer with no other gradient state does nothing."""

    # -- the wrapper stack. A layer either stores rows (fp32, tiers, ALPT: a *store*) or wraps one inner
    # layer and changes which rows answer (pruned: constants for removed fields; clustered: value → row
    # maps). Stages walk the stack through these methods (and :func:`storage` / :func:`replace_storage`),
    # never through concrete classes, so a new kind is one file.
    def inner_layer(self) -> FieldEmbedding | None:
        """The layer this one wraps; ``None`` for a store."""
        return None

    def with_inner(self, inner: FieldEmbedding) -> FieldEmbedding:
        """A copy of this wrapper around ``inner`` (whose fields are the ones this wrapper passes on)."""
        raise ConfigError(f"a {type(self).__name__} stores rows itself: it wraps no inner layer")

    def removed_fields(self) -> tuple[str, ...]:
        """Fields answered by a constant vector (pruned), at any depth of the stack."""
        inner = self.inner_layer()
        return () if inner is None else inner.removed_fields()

    def fixed_bytes(self) -> dict[str, int]:
        """Bytes per field that re-storing the rows cannot shrink (e.g. a value → row map), at any depth."""
        inner = self.inner_layer()
        return {} if inner is None else inner.fixed_bytes()

    # -- how export reads a layer (sharkrec.export.tables): a store gives its rows per tier, a wrapper its
    # value → row map or its constants; export walks the stack and never reads a kind's buffers itself.
    def row_storage(self, field_name: str) -> tuple[Tensor, dict[Any, tuple[Tensor, Tensor | None, Tensor]]]:
        """A store's rows of one field: (R,) tier codes and per tier ``(pool payload, pool scale or None,
        (R,) position of each row in the pool)`` (tiers are :class:`~sharkrec.quant.codec.Precision`)."""
        raise ConfigError(f"a {type(self).__name__} cannot be exported: it does not define row_storage(); export "
                          "fp32, mixed-precision, pruned, clustered tables or a store that computes its rows")

    #: a store that computes every row from its id instead of holding one row per value (the hashed layers):
    #: export writes its spec() and state_dict() and serving rebuilds it (from_spec, then the stored tensors),
    #: where a row store is read row by row (row_storage)
    computes_rows: ClassVar[bool] = False
    #: how such a store computes the vector of id x from its tensors (one line; written into artifacts)
    row_rule: ClassVar[str] = ""

    def value_rows(self) -> dict[str, int]:
        """Ids accepted per field (vocabulary rows): a row store's rows; a store that computes rows says its own."""
        return self.num_rows()

    def value_map(self, field_name: str) -> Tensor | None:
        """(V,) row of the inner layer each incoming id maps to (a clustered layer), or ``None``: ids are rows."""
        return None

    def constant_vectors(self) -> dict[str, Tensor]:
        """``{removed field: (D,) vector}`` of this layer (a pruned layer), empty otherwise."""
        return {}

    @abc.abstractmethod
    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """Field vectors (B, F, D) for one :class:`FieldIds` per field, in ``field_names`` order.

        Single-hot fields (``offsets is None``) look up one row per sample; multi-hot fields sum
        the rows of each bag, and an empty bag gives a zero vector.
        """

    @abc.abstractmethod
    def num_rows(self) -> dict[str, int]:
        """Rows held per field (the number of distinct vectors the field can produce)."""

    @abc.abstractmethod
    def embedding_bytes(self) -> int:
        """Bytes held by the tensors that store rows (payload and per-row metadata, not optimizer state)."""

    @abc.abstractmethod
    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters with sparse gradients, to be updated by a sparse / row-wise optimizer."""

    @property
    def num_fields(self) -> int:
        return len(self.field_names)


class RowMapLayer(FieldEmbedding):
    """A wrapper that translates each field's incoming ids into rows of one inner layer over the same fields
    (Saec's value → row maps, the hashed tail's hot ids + hash). A subclass says how (:meth:`map_ids`,
    :meth:`value_map`, :meth:`with_inner`); lookups, training hooks and pruning go through the inner layer."""

    inner: FieldEmbedding

    @abc.abstractmethod
    def map_ids(self, sparse: Sequence[FieldIds]) -> list[FieldIds]:
        """The batch's ids translated to inner rows (same offsets and weights); ids are checked."""

    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D) vectors of the inner rows the ids map to."""
        return self.inner(self.map_ids(sparse))

    def num_rows(self) -> dict[str, int]:
        """Inner rows per field (distinct vectors a field can produce)."""
        return self.inner.num_rows()

    def inner_layer(self) -> FieldEmbedding:
        return self.inner

    def sparse_parameters(self) -> list[nn.Parameter]:
        return self.inner.sparse_parameters()

    def observe_batch(self, sparse: Sequence[FieldIds], labels: Tensor) -> None:
        self.inner.observe_batch(self.map_ids(sparse), labels)

    def make_sparse_optimizer(self, kind: str, lr: float) -> torch.optim.Optimizer | None:
        return self.inner.make_sparse_optimizer(kind, lr)

    def subset(self, field_names: Sequence[str]) -> FieldEmbedding:
        """The layer of ``field_names`` only, in that order (so a mapped model can be pruned)."""
        inner_subset = getattr(self.inner, "subset", None)
        if not callable(inner_subset):
            raise ConfigError(f"a {self.kind} layer over {type(self.inner).__name__} cannot be pruned; prune before "
                              "quantizing")
        return self.with_inner(inner_subset(list(field_names)))


def layers(embedding: FieldEmbedding) -> list[FieldEmbedding]:
    """The stack from ``embedding`` (outermost) down to its store (innermost)."""
    stack = [embedding]
    while (inner := stack[-1].inner_layer()) is not None:
        stack.append(inner)
    return stack


def storage(embedding: FieldEmbedding) -> FieldEmbedding:
    """The layer of the stack that holds the rows."""
    return layers(embedding)[-1]


def find_layer(embedding: FieldEmbedding, kind: str) -> FieldEmbedding | None:
    """The first layer of the stack registered as ``kind`` (e.g. ``"clustered"``), or ``None``."""
    return next((layer for layer in layers(embedding) if layer.kind == kind), None)


def replace_storage(embedding: FieldEmbedding, store: FieldEmbedding) -> FieldEmbedding:
    """The same stack of wrappers (copied) around a new store, e.g. quantized rows under the same maps."""
    stack = layers(embedding)
    out = store
    for wrapper in reversed(stack[:-1]):
        out = wrapper.with_inner(out)
    return out


EMBEDDING_KINDS: dict[str, type[FieldEmbedding]] = {}
#: modules whose layers a saved model may use; imported on demand by :func:`embedding_from_spec`
_BUILTIN_KIND_MODULES = ("sharkrec.prune.embedding", "sharkrec.quant.embedding", "sharkrec.quant.alpt",
                         "sharkrec.cluster.embedding", "sharkrec.hashed")


def embedding_from_spec(spec: Mapping[str, Any]) -> FieldEmbedding:
    """Rebuild an (empty) embedding layer from the ``spec()`` of a registered class."""
    return embedding_class(spec.get("kind")).from_spec(spec)


def embedding_class(kind: Any) -> type[FieldEmbedding]:
    """The class registered as ``kind`` (importing sharkrec's compressed layers first when it is not known yet)."""
    if kind not in EMBEDDING_KINDS:
        import importlib

        for module in _BUILTIN_KIND_MODULES:  # compressed layers register themselves when imported
            importlib.import_module(module)
    if kind not in EMBEDDING_KINDS:
        raise ConfigError(
            f"unknown embedding kind {kind!r}; known kinds: {sorted(EMBEDDING_KINDS)} "
            "(a newer sharkrec may have written this model)"
        )
    return EMBEDDING_KINDS[str(kind)]


class FloatEmbedding(FieldEmbedding):
    """One fp32 table (rows, D) per field, looked up with sparse gradients.

    ``backward`` gives each table a sparse COO gradient that covers only the rows the batch used,
    so an optimizer step costs O(rows touched) rather than O(table size).

    Args:
        field_rows: rows per sparse field, in field order.
        embedding_dim: D.
        init_std: rows are drawn from N(0, init_std²). 0.01 trains well with Adam / Adagrad at
            lr 0.01 (see ``tests/model/test_dlrm.py::test_tiny_model_learns``).
        check_ids: check every batch's ids are in ``[0, rows)`` and raise :class:`DataError`
            naming the field otherwise (one min/max per field: about 0.1-0.3 ms for a
            batch of 512 over 26 fields, 1-2% of a forward + backward pass).
        generator: random generator for the initial rows (reproducible models).
    """

    def __init__(
        self,
        field_rows: Mapping[str, int],
        embedding_dim: int,
        *,
        init_std: float = 0.01,
        check_ids: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim is {embedding_dim}; use 1 or more")
        if not (init_std >= 0.0 and math.isfinite(init_std)):
            raise ConfigError(f"init_std is {init_std}; use a finite value >= 0 such as 0.01")
        for name, rows in field_rows.items():
            if int(rows) < 1:
                raise ConfigError(f"field {name!r} has {rows} rows; every table needs at least 1 row")
        self.field_names = tuple(field_rows)
        self.embedding_dim = int(embedding_dim)
        self.init_std = float(init_std)
        self.check_ids = bool(check_ids)
        # tables are indexed by field position: field names may hold characters a parameter name cannot
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(int(rows), self.embedding_dim)) for rows in field_rows.values()
        )
        self._rows: Tensor
        self.register_buffer(
            "_rows", torch.tensor([int(r) for r in field_rows.values()], dtype=torch.int64), persistent=False
        )
        self.reset_parameters(generator)

    kind: ClassVar[str] = "float"

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "field_rows": self.num_rows(), "embedding_dim": self.embedding_dim,
                "init_std": self.init_std, "check_ids": self.check_ids}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> FloatEmbedding:
        return cls(dict(spec["field_rows"]), int(spec["embedding_dim"]), init_std=float(spec.get("init_std", 0.01)),
                   check_ids=bool(spec.get("check_ids", True)))

    @classmethod
    def from_tables(cls, tables: Mapping[str, Tensor], *, check_ids: bool = True,
                    init_std: float = 0.01) -> FloatEmbedding:
        """An embedding holding copies of the given (rows, D) tables (``init_std``: σ of :meth:`reset_parameters`)."""
        dims = {int(t.shape[1]) for t in tables.values() if t.ndim == 2}
        if len(dims) != 1 or any(t.ndim != 2 for t in tables.values()):
            raise ConfigError("tables must all be 2-D (rows, D) with the same D")
        module = cls({name: int(t.shape[0]) for name, t in tables.items()}, dims.pop(), check_ids=check_ids,
                     init_std=init_std)
        with torch.no_grad():
            for table, source in zip(module.tables, tables.values(), strict=True):
                table.copy_(source)
        return module

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            for table in self.tables:
                table.normal_(0.0, self.init_std, generator=generator)

    def table(self, field_name: str) -> nn.Parameter:
        """The (rows, D) table of one field."""
        table: nn.Parameter = self.tables[self._position(field_name)]
        return table

    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D) field vectors; see :meth:`FieldEmbedding.forward`.

        All-single-hot batches are looked up by one kernel call (ids checked in the same pass; gradients: the same
        uncoalesced sparse COO tensor per table as ``F.embedding(sparse=True)`` gives), else table by table.
        """
        fused = self._single_hot_lookup(sparse)
        if fused is not None:
            return fused
        self._check_inputs(sparse)
        vectors = []
        for table, ids in zip(self.tables, sparse, strict=True):
            if ids.offsets is None:
                vectors.append(F.embedding(ids.values, table, sparse=True))  # (B, D)
            else:
                vectors.append(
                    F.embedding_bag(
                        ids.values, table, ids.offsets, mode="sum", sparse=True, include_last_offset=True,
                        per_sample_weights=ids.weights,
                    )
                )  # (B, D)
        return torch.stack(vectors, dim=1)  # (B, F, D)

    def _single_hot_lookup(self, sparse: Sequence[FieldIds]) -> Tensor | None:
        """(B, F, D) by :func:`sharkrec.model.kernels.lookup_single_hot`, or ``None`` where it does not apply
        (a multi-hot or weighted field, int32 ids, tables that are not contiguous float32 on CPU, tracing)."""
        from sharkrec.model.kernels import lookup_single_hot

        if not self.check_ids or len(sparse) != len(self.field_names) or not sparse:
            return None
        batch_size = sparse[0].values.shape[0]
        for ids in sparse:
            if ids.offsets is not None or ids.weights is not None or ids.values.dtype != torch.int64 \
                    or ids.values.ndim != 1 or ids.values.shape[0] != batch_size:
                return None
        result = lookup_single_hot(list(self.tables), [ids.values for ids in sparse])
        if result is None:
            return None
        vectors, bad = result
        if vectors is None:  # an id outside its table (field ``bad``): the one-line DataError naming the field
            self._check_inputs(sparse)
            raise DataError(f"field {self.field_names[bad]!r} has an id outside its table; encode the data with the "
                            "vocabulary the model was built with")
        return vectors

    def num_rows(self) -> dict[str, int]:
        return {name: int(table.shape[0]) for name, table in zip(self.field_names, self.tables, strict=True)}

    def embedding_bytes(self) -> int:
        return sum(table.numel() * table.element_size() for table in self.tables)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables)

    def row_storage(self, field_name: str) -> tuple[Tensor, dict[Any, tuple[Tensor, Tensor | None, Tensor]]]:
        from sharkrec.quant.codec import Precision

        table = self.table(field_name).detach().float()
        rows = table.shape[0]
        return torch.zeros(rows, dtype=torch.int8), {Precision.FP32: (table, None, torch.arange(rows))}

    def subset(self, field_names: Sequence[str]) -> FloatEmbedding:
        """A new embedding with copies of the tables of ``field_names``, in that order."""
        positions = [self._position(name) for name in field_names]
        return FloatEmbedding.from_tables(
            {name: self.tables[p].detach() for name, p in zip(field_names, positions, strict=True)},
            check_ids=self.check_ids, init_std=self.init_std,
        )

    def extra_repr(self) -> str:
        return f"fields={len(self.field_names)}, dim={self.embedding_dim}, rows={sum(self.num_rows().values())}"

    def _check_inputs(self, sparse: Sequence[FieldIds]) -> None:
        """Raise a one-line :class:`DataError` for a wrong field count, batch size, id dtype or id range."""
        if len(sparse) != len(self.field_names):
            raise DataError(
                f"the batch has {len(sparse)} sparse fields but the embedding has {len(self.field_names)} "
                f"({', '.join(self.field_names)}); build the batch with the model's schema"
            )
        batch_size = sparse[0].batch_size() if sparse else 0
        lows, highs, checked = [], [], []
        for position, (name, ids) in enumerate(zip(self.field_names, sparse, strict=True)):
            if ids.values.dtype not in _ID_DTYPES:
                raise DataError(f"field {name!r} has ids of dtype {ids.values.dtype}; ids must be int64 or int32")
            if ids.batch_size() != batch_size:
                raise DataError(
                    f"field {name!r} has {ids.batch_size()} samples but field {self.field_names[0]!r} has "
                    f"{batch_size}; every field of a batch needs the same number of samples"
                )
            if self.check_ids and ids.values.numel() > 0:
                low, high = torch.aminmax(ids.values)
                lows.append(low)
                highs.append(high)
                checked.append(position)
        if not checked:
            return
        # one host synchronisation for all fields
        min_ids, max_ids = torch.stack(lows), torch.stack(highs)  # (K,) each
        rows = self._rows if len(checked) == len(self.field_names) else self._rows[checked]
        bad = (min_ids < 0) | (max_ids >= rows)
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            name = self.field_names[checked[k]]
            min_id, max_id = int(min_ids[k].item()), int(max_ids[k].item())
            num_rows = int(rows[k].item())
            raise DataError(
                f"field {name!r} has ids from {min_id} to {max_id} but its table has {num_rows} rows "
                f"(valid ids 0..{num_rows - 1}); encode the data with the vocabulary the model was built with"
            )
