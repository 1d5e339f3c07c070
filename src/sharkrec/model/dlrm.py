"""DLRM (Naumov et al., 2019) as used in the SHARK paper, with shared-bottom or MMoE multi-task heads.

The forward pass is split in two so that field importance can work on the field vectors::

    vectors = model.field_vectors(batch)      # (B, F, D): bottom MLP(dense), then one vector per sparse field
    logits = model.logits_from_fields(vectors)  # (B, T): interaction, then the head

F-Permutation computes ``vectors``, differentiates the loss with respect to them (or replaces a
field's vectors) and calls ``logits_from_fields``. The dense features count as one field named
``"dense"``, placed first (Criteo: 1 + 26 = 27 fields).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sharkrec.data.batch import Batch
from sharkrec.errors import ConfigError, DataError, parse_choice
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding
from sharkrec.model.heads import MMoEHead, SharedBottomHead, mlp, mlp_shapes
from sharkrec.model.kernels import pair_dots
from sharkrec.model.protocol import FieldPathMethods

DENSE_FIELD = "dense"
#: Upper bounds of a config's values: far above any real model, low enough that reading a config
#: (from a model file or an artifact manifest) never plans an absurd network
MAX_EMBEDDING_DIM = 65535  # Table 1's dimension word is 2 bytes
MAX_WIDTH = 1 << 20  # num_dense and every hidden layer size
MAX_LAYERS = 64  # hidden layers of one MLP
MAX_EXPERTS = 1024
MAX_TASKS = 1024
MAX_FIELDS = 4096  # sparse fields (the dot interaction holds F(F-1)/2 pairs)
MAX_ROWS = 1 << 40


class HeadKind(str, enum.Enum):
    """How tasks share the network above the interaction."""

    SHARED_BOTTOM = "shared-bottom"
    MMOE = "mmoe"


class InteractionKind(str, enum.Enum):
    """What the top of the network sees.

    ``dot``: pairwise dot products of all field vectors (upper triangle, no diagonal), concatenated
    with the dense field's vector, as in facebookresearch/dlrm. ``dot-concat``: the dot products
    concatenated with every field vector flattened (helps tiny models and data without dense features).
    ``concat``: every field vector flattened, no dot products (a pre-ranking MLP over many fields).
    """

    DOT = "dot"
    DOT_CONCAT = "dot-concat"
    CONCAT = "concat"


@dataclass(frozen=True)
class DLRMConfig:
    """Architecture of a :class:`DLRM`.

    Attributes:
        num_dense: number of dense features; 0 means there is no dense field.
        field_rows: ``(name, rows)`` of every sparse field, in batch order.
        embedding_dim: D, the length of every field vector (the bottom MLP's output size too).
        bottom_mlp: hidden sizes of the bottom MLP, before its output layer of size D.
        top_mlp: hidden sizes of the top MLP (shared-bottom) or of each expert (MMoE).
        tasks: task (label) names; one logit each.
        head: shared-bottom or MMoE.
        num_experts: experts of an MMoE head.
        tower_mlp: hidden sizes of each task's tower, before its ``Linear(→ 1)``. The default
            ``()`` keeps single-task DLRM exact; for several tasks ``(64,)`` is a common choice.
        dropout: dropout after each hidden ReLU of the top MLP, experts and towers (not the bottom MLP).
        interaction: ``dot`` or ``dot-concat``.
    """

    num_dense: int
    field_rows: tuple[tuple[str, int], ...]
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (64,)
    top_mlp: tuple[int, ...] = (256, 128)
    tasks: tuple[str, ...] = ("label",)
    head: HeadKind = HeadKind.SHARED_BOTTOM
    num_experts: int = 4
    tower_mlp: tuple[int, ...] = ()
    dropout: float = 0.0
    interaction: InteractionKind = InteractionKind.DOT

    def __post_init__(self) -> None:
        # accept JSON-ish input (lists, strings) and store the canonical types
        set_ = object.__setattr__
        try:
            set_(self, "field_rows", tuple((str(name), int(rows)) for name, rows in self.field_rows))
        except (TypeError, ValueError, OverflowError):
            raise ConfigError("field_rows must be a list of (field name, rows) pairs") from None
        for name in ("bottom_mlp", "top_mlp", "tower_mlp"):
            set_(self, name, _sizes(name, getattr(self, name)))
        for name in ("num_dense", "embedding_dim", "num_experts"):
            set_(self, name, _integer(name, getattr(self, name)))
        try:
            set_(self, "dropout", float(self.dropout))
        except (TypeError, ValueError):
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}") from None
        tasks = (self.tasks,) if isinstance(self.tasks, str) else self.tasks
        set_(self, "tasks", tuple(str(t) for t in tasks))
        set_(self, "head", _enum(HeadKind, self.head, "head"))
        set_(self, "interaction", _enum(InteractionKind, self.interaction, "interaction"))
        self._validate()

    def _validate(self) -> None:
        if self.num_dense < 0:
            raise ConfigError(f"num_dense is {self.num_dense}; use 0 (no dense features) or more")
        if self.embedding_dim < 1:
            raise ConfigError(f"embedding_dim is {self.embedding_dim}; use 1 or more")
        if self.num_experts < 1:
            raise ConfigError(f"num_experts is {self.num_experts}; use 1 or more")
        for name, value, low, high in (("num_dense", self.num_dense, 0, MAX_WIDTH),
                                       ("embedding_dim", self.embedding_dim, 1, MAX_EMBEDDING_DIM),
                                       ("num_experts", self.num_experts, 1, MAX_EXPERTS)):
            if value > high:
                raise ConfigError(f"{name} is {value}; use {low}..{high}")
        if len(self.field_rows) > MAX_FIELDS:
            raise ConfigError(f"field_rows has {len(self.field_rows)} fields; use at most {MAX_FIELDS}")
        if len(self.tasks) > MAX_TASKS:
            raise ConfigError(f"tasks has {len(self.tasks)} names; use at most {MAX_TASKS}")
        names = [name for name, _ in self.field_rows]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"field_rows names fields more than once: {duplicates}; rename them")
        if "" in names:
            raise ConfigError("field_rows has a field with an empty name; name every sparse field")
        if self.num_dense > 0 and DENSE_FIELD in names:
            raise ConfigError(f"sparse field name {DENSE_FIELD!r} is reserved for the dense field; rename it")
        for name, rows in self.field_rows:
            if not 1 <= rows <= MAX_ROWS:
                raise ConfigError(f"field {name!r} has {rows} rows; every table needs 1..{MAX_ROWS} rows")
        if self.num_fields == 0:
            raise ConfigError("the model has no fields; give it dense features or sparse fields")
        if self.interaction is InteractionKind.DOT and self.num_dense == 0 and self.num_fields < 2:
            raise ConfigError(
                "dot interaction of a single sparse field without dense features has no inputs; "
                "use interaction 'dot-concat' or add fields"
            )
        if not self.tasks:
            raise ConfigError("tasks is empty; name at least one task (label)")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks {list(self.tasks)} repeat a name; give each task a distinct name")
        if self.head is HeadKind.MMOE and not self.top_mlp:
            raise ConfigError("an MMoE head needs expert layers; give top_mlp at least one hidden size")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout is {self.dropout}; use a value in [0, 1)")

    @property
    def sparse_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.field_rows)

    @property
    def field_names(self) -> tuple[str, ...]:
        """All fields the interaction sees: ``"dense"`` first when there are dense features."""
        return ((DENSE_FIELD,) if self.num_dense > 0 else ()) + self.sparse_names

    @property
    def num_fields(self) -> int:
        return len(self.field_rows) + (1 if self.num_dense > 0 else 0)

    @property
    def interaction_features(self) -> int:
        """Width of the interaction output, the input of the head."""
        pairs = self.num_fields * (self.num_fields - 1) // 2
        if self.interaction is InteractionKind.CONCAT:
            return self.num_fields * self.embedding_dim
        if self.interaction is InteractionKind.DOT_CONCAT:
            return pairs + self.num_fields * self.embedding_dim
        return pairs + (self.embedding_dim if self.num_dense > 0 else 0)

    def dense_shapes(self) -> dict[str, tuple[int, ...]]:
        """State-dict shapes of the :class:`DLRM` weights outside the embedding (bottom MLP, head), built from
        nothing: what an artifact's ``dense.safetensors`` must hold."""
        shapes: dict[str, tuple[int, ...]] = {}
        if self.num_dense > 0:
            shapes.update(mlp_shapes(self.num_dense, (*self.bottom_mlp, self.embedding_dim), prefix="bottom."))
        if self.head is HeadKind.MMOE:
            head = MMoEHead.parameter_shapes(self.interaction_features, self.top_mlp, self.tower_mlp,
                                             len(self.tasks), self.num_experts, dropout=self.dropout)
        else:
            head = SharedBottomHead.parameter_shapes(self.interaction_features, self.top_mlp, self.tower_mlp,
                                                     len(self.tasks), dropout=self.dropout)
        shapes.update({f"head.{name}": shape for name, shape in head.items()})
        return shapes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` reads it back."""
        payload: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif f.name == "field_rows":
                value = [[name, rows] for name, rows in value]
            elif isinstance(value, tuple):
                value = list(value)
            payload[f.name] = value
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> DLRMConfig:
        if not isinstance(payload, Mapping):
            raise ConfigError("a DLRM config must be a JSON object")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - allowed)
        if unknown:
            raise ConfigError(f"DLRM config has unknown keys {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"num_dense", "field_rows"} - set(payload))
        if missing:
            raise ConfigError(f"DLRM config lacks {missing}; add them")
        return cls(**payload)


class DLRM(FieldPathMethods, nn.Module):
    """Bottom MLP for dense features, an embedding per sparse field, dot interaction, a task head.

    Args:
        config: the architecture.
        embedding: the sparse fields' embedding layer; default a :class:`FloatEmbedding` built from
            ``config.field_rows``. Its field names and dim must match the config.
    """

    def __init__(self, config: DLRMConfig, embedding: FieldEmbedding | None = None) -> None:
        super().__init__()
        if embedding is None:
            embedding = FloatEmbedding(dict(config.field_rows), config.embedding_dim)
        if tuple(embedding.field_names) != config.sparse_names:
            raise ConfigError(
                f"embedding fields {list(embedding.field_names)} differ from the config's sparse fields "
                f"{list(config.sparse_names)}; build both from the same schema"
            )
        if embedding.embedding_dim != config.embedding_dim:
            raise ConfigError(
                f"embedding dim {embedding.embedding_dim} differs from the config's embedding_dim "
                f"{config.embedding_dim}; use one dim"
            )
        self.config = config
        self.embedding = embedding
        d = config.embedding_dim
        self.bottom: nn.Module | None = None
        if config.num_dense > 0:
            # ReLU on the output too, as in facebookresearch/dlrm
            self.bottom = mlp(config.num_dense, (*config.bottom_mlp, d))
        num_fields = config.num_fields
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.pair_index: Tensor
        self.register_buffer("pair_index", rows * num_fields + cols, persistent=False)  # (P,) into F*F
        self.head: nn.Module
        if config.head is HeadKind.MMOE:
            self.head = MMoEHead(
                config.interaction_features, config.top_mlp, config.tower_mlp, len(config.tasks),
                config.num_experts, dropout=config.dropout,
            )
        else:
            self.head = SharedBottomHead(
                config.interaction_features, config.top_mlp, config.tower_mlp, len(config.tasks),
                dropout=config.dropout,
            )

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of the F fields of :meth:`field_vectors`: ``"dense"`` first (when present), then sparse."""
        return self.config.field_names

    @property
    def num_fields(self) -> int:
        return self.config.num_fields

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.config.tasks

    @property
    def sparse_names(self) -> tuple[str, ...]:
        return self.config.sparse_names

    @property
    def num_dense(self) -> int:
        return self.config.num_dense

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def field_rows(self) -> dict[str, int]:
        """Rows per sparse field of the tables the model was built with (a pruned field keeps its original rows)."""
        return dict(self.config.field_rows)

    @property
    def num_tasks(self) -> int:
        return len(self.config.tasks)

    def field_vectors(self, batch: Batch) -> Tensor:
        """(B, F, D) vectors: the bottom MLP's output for the dense field, then one per sparse field."""
        parts = []
        if self.bottom is not None:
            if batch.dense.ndim != 2 or batch.dense.shape[1] != self.config.num_dense:
                raise DataError(
                    f"the batch has dense features of shape {tuple(batch.dense.shape)} but the model expects "
                    f"(B, {self.config.num_dense}); build the batch with the model's schema"
                )
            parts.append(self.bottom(batch.dense).unsqueeze(1))  # (B, 1, D)
        if self.embedding.num_fields > 0 or len(batch.sparse) > 0:
            parts.append(self.embedding(batch.sparse))  # (B, S, D)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, F, D)

    def interact(self, vectors: Tensor) -> Tensor:
        """(B, F, D) field vectors → (B, I) interaction features (see :class:`InteractionKind`)."""
        if vectors.ndim != 3 or vectors.shape[1:] != (self.num_fields, self.config.embedding_dim):
            raise DataError(
                f"field vectors have shape {tuple(vectors.shape)}; expected (B, {self.num_fields}, "
                f"{self.config.embedding_dim})"
            )
        if self.config.interaction is InteractionKind.CONCAT:
            return vectors.flatten(1)  # (B, F * D)
        if self.config.interaction is InteractionKind.DOT_CONCAT:
            return torch.cat([vectors.flatten(1), pair_dots(vectors, self.pair_index)], dim=1)
        # with dense features: the dense field's vector, then the dots (B, D + F(F-1)/2); else the dots alone
        return pair_dots(vectors, self.pair_index, dense_first=self.bottom is not None)

    def logits_from_fields(self, vectors: Tensor, batch: Batch | None = None) -> Tensor:
        """(B, F, D) field vectors → (B, T) logits (the head sees nothing else, so ``batch`` is not read)."""
        return self.head(self.interact(vectors))

    def forward(self, batch: Batch) -> Tensor:
        """(B, T) logits, one column per task."""
        return self.logits_from_fields(self.field_vectors(batch))

    def with_embedding(self, embedding: FieldEmbedding) -> DLRM:
        """A new model using ``embedding`` (shared, not copied) and deep copies of every other weight.

        The new embedding must have the same fields and dim (rows may differ, e.g. after clustering);
        the returned model's config records its rows.
        """
        if tuple(embedding.field_names) != tuple(self.embedding.field_names):
            raise ConfigError(
                f"new embedding fields {list(embedding.field_names)} differ from the model's "
                f"{list(self.embedding.field_names)}; keep the fields (a pruned field keeps a constant vector)"
            )
        if embedding.embedding_dim != self.config.embedding_dim:
            raise ConfigError(
                f"new embedding dim {embedding.embedding_dim} differs from the model's {self.config.embedding_dim}"
            )
        config = dataclasses.replace(self.config, field_rows=tuple(embedding.num_rows().items()))
        # deepcopy with the old embedding mapped to the new one: copies the rest, never the old tables
        clone = copy.deepcopy(self, memo={id(self.embedding): embedding})
        clone.config = config
        return clone

    def fresh_copy(self, seed: int) -> DLRM:
        """A new float DLRM of this config, initialised as ``DLRM(config)`` is under ``torch.manual_seed(seed)``
        (the caller's random state is left as it was): the same architecture, none of the trained weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return DLRM(self.config)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {_short(value)}") from None


def _sizes(name: str, value: Any) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a list of layer sizes, got {_short(value)}") from None
    if len(sizes) > MAX_LAYERS:
        raise ConfigError(f"{name} has {len(sizes)} layers; use at most {MAX_LAYERS}")
    if any(s < 1 for s in sizes):
        raise ConfigError(f"{name} {list(sizes)} has a size below 1; use positive layer sizes")
    if any(s > MAX_WIDTH for s in sizes):
        raise ConfigError(f"{name} {list(sizes)} has a size above {MAX_WIDTH}; use layer sizes 1..{MAX_WIDTH}")
    return sizes


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _enum(kind: type[enum.Enum], value: Any, name: str) -> Any:
    return parse_choice(kind, value, name)
