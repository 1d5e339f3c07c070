"""Lookup kinds: how sharkrec reads, answers and replaces one kind of embedding module in a user's model.

A *lookup* is a module of the user's network that turns ids into vectors (``nn.Embedding``,
``nn.EmbeddingBag``, TorchRec's ``EmbeddingBagCollection``). Each kind is one :class:`LookupKind`
registered for its module class; it knows four things and nothing else in sharkrec looks inside the
module:

- :meth:`LookupKind.describe`: the fields one call of the module looks up (from the call's arguments);
- :meth:`LookupKind.field_ids`: a call's arguments → one :class:`FieldIds` per field (local row ids);
- :meth:`LookupKind.output`: field vectors (B, k, D) → what the module would have returned;
- :meth:`LookupKind.table`: the (rows, D) weights of one field (to build sharkrec's tables from it).

Adding a lookup kind is one subclass (see ``sharkrec.interop.torchrec`` for TorchRec's).
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError


@dataclass(frozen=True)
class Field:
    """One sparse field of a user's model: which lookup answers it, and which rows of its table it owns.

    Attributes:
        name: the field's name in reports, plans and artifacts.
        module: dotted path of the lookup module in the model (``""`` for the model itself).
        rows: rows of the field's table.
        dim: D, the length of the field's vector.
        key: where the field sits in the module's call: the feature name of a TorchRec collection, the
            column of a shared table indexed with per-field offsets, or ``None`` for a one-field module.
        row_start: first row of the field in the module's table (shared tables: the field's offset).
        pooling: ``"none"`` (one id per sample), ``"sum"``, ``"mean"`` or ``"weighted-sum"`` (bags; a mean and
            a weighted sum look up with per-id ``FieldIds.weights``).
        last_offset: bag offsets end with the total id count (``nn.EmbeddingBag(include_last_offset=True)``).
    """

    name: str
    module: str
    rows: int
    dim: int
    key: str | int | None = None
    row_start: int = 0
    pooling: str = "none"
    last_offset: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LookupKind(abc.ABC):
    """How one module class is read and answered; subclasses register by setting ``module_type``."""

    module_type: ClassVar[type[nn.Module] | tuple[type[nn.Module], ...] | None] = None
    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            LOOKUP_KINDS[cls.name] = cls()

    @abc.abstractmethod
    def describe(self, module: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 offsets: Sequence[int] | None) -> list[Field]:
        """The fields one call looks up (``offsets``: declared or found per-field offsets of a shared table)."""

    @abc.abstractmethod
    def field_ids(self, fields: Sequence[Field], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FieldIds]:
        """One :class:`FieldIds` of local row ids (0..rows-1) per field of ``fields``, for the call's arguments."""

    @abc.abstractmethod
    def output(self, fields: Sequence[Field], vectors: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The module's return value built from the field vectors (B, k, D) of ``fields``."""

    @abc.abstractmethod
    def table(self, module: nn.Module, field: Field) -> Tensor:
        """The (rows, D) fp32 rows of ``field`` held by ``module``."""

    def jagged_inputs(self, fields: Sequence[Field], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> list[tuple[Tensor, Tensor, Tensor | None, bool]]:
        """Ragged arguments of a call: ``(values, offsets, weights or None, offsets end with the total)`` per bag
        input whose first axis is not the sample axis (so a user's batches can be indexed by sample)."""
        return []

    def batch_size(self, fields: Sequence[Field], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """B of one call, read from shapes only (an int, or a symbolic size while torch.export traces)."""
        ids = self.field_ids(fields, args, kwargs)[0]
        return ids.values.shape[0] if ids.offsets is None else ids.offsets.shape[0] - 1

    def offsets_of(self, module: nn.Module, parent: nn.Module | None) -> list[int] | None:
        """Per-field offsets a module (or its parent) keeps for a shared table, if any (pytorch-fm style)."""
        for owner in (module, parent):
            value = getattr(owner, "offsets", None) if owner is not None else None
            if value is None or isinstance(value, nn.Module):
                continue
            try:
                found = [int(v) for v in torch.as_tensor(value).reshape(-1).tolist()]
            except (TypeError, ValueError, RuntimeError):
                continue
            if found and found[0] == 0 and all(b >= a for a, b in itertools.pairwise(found)):
                return found
        return None


LOOKUP_KINDS: dict[str, LookupKind] = {}


def kind_of(module: nn.Module) -> LookupKind | None:
    """The registered kind that reads ``module`` (an exact class match first, then subclasses)."""
    for kind in LOOKUP_KINDS.values():
        if kind.module_type is not None and type(module) is kind.module_type:
            return kind
    for kind in LOOKUP_KINDS.values():
        if kind.module_type is not None and isinstance(module, kind.module_type):
            return kind
    return None


def _ids_tensor(value: Any, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise DataError(f"{what} got {type(value).__name__} ids; pass an integer tensor")
    if value.dtype not in (torch.int64, torch.int32):
        raise DataError(f"{what} got ids of dtype {value.dtype}; pass int64 or int32 ids")
    return value.to(torch.int64)


def _shared_fields(path: str, rows: int, dim: int, columns: int, offsets: Sequence[int] | None,
                   pooling: str, what: str) -> list[Field]:
    if offsets is None:
        raise ConfigError(
            f"{what} {path!r} is looked up with (B, {columns}) ids and no per-field offsets were found; declare "
            f"them: fields(model, example, shared={{{path!r}: [0, ...]}}) (one start row per column)"
        )
    starts = [int(o) for o in offsets]
    if len(starts) != columns:
        raise ConfigError(
            f"{what} {path!r} has {len(starts)} field offsets but is looked up with {columns} columns; "
            "give one start row per column"
        )
    ends = [*starts[1:], rows]
    if any(e <= s for s, e in zip(starts, ends, strict=True)) or ends[-1] > rows:
        raise ConfigError(f"offsets {starts} of {path!r} do not split its {rows} rows into non-empty ranges; "
                          "give increasing start rows below the table size")
    return [Field(f"{path}.{j}" if path else str(j), path, e - s, dim, key=j, row_start=s, pooling=pooling)
            for j, (s, e) in enumerate(zip(starts, ends, strict=True))]


class EmbeddingKind(LookupKind):
    """``nn.Embedding``: (B,) ids → (B, D), one field; (B, F) ids of a shared table with per-field offsets →
    (B, F, D), one field per column (the offsets are added before the call, as in pytorch-fm)."""

    module_type = nn.Embedding
    name = "embedding"

    def describe(self, module: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 offsets: Sequence[int] | None) -> list[Field]:
        assert isinstance(module, nn.Embedding)
        ids = _ids_tensor(args[0] if args else kwargs.get("input"), f"nn.Embedding {path!r}")
        rows, dim = int(module.num_embeddings), int(module.embedding_dim)
        if module.max_norm is not None:
            raise ConfigError(f"nn.Embedding {path!r} uses max_norm (it rewrites rows in forward); "
                              "sharkrec's tables do not: train without max_norm")
        if ids.ndim == 1:
            return [Field(path or "embedding", path, rows, dim)]
        if ids.ndim == 2:
            return _shared_fields(path, rows, dim, int(ids.shape[1]), offsets, "none", "nn.Embedding")
        raise ConfigError(f"nn.Embedding {path!r} is looked up with ids of shape {tuple(ids.shape)}; sharkrec reads "
                          "(B,) ids (one field) or (B, F) ids of a shared table with per-field offsets")

    def field_ids(self, fields: Sequence[Field], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FieldIds]:
        ids = _ids_tensor(args[0] if args else kwargs.get("input"), f"lookup {fields[0].module!r}")
        if ids.ndim == 1:
            return [FieldIds(ids)]
        if ids.ndim != 2 or ids.shape[1] != len(fields):
            raise DataError(f"lookup {fields[0].module!r} got ids of shape {tuple(ids.shape)}; the field map expects "
                            f"(B, {len(fields)})")
        return [FieldIds(ids[:, f.key] - f.row_start) for f in fields]  # type: ignore[index]

    def output(self, fields: Sequence[Field], vectors: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ids = args[0] if args else kwargs.get("input")
        return vectors[:, 0] if isinstance(ids, Tensor) and ids.ndim == 1 else vectors  # (B, D) | (B, F, D)

    def table(self, module: nn.Module, field: Field) -> Tensor:
        weight: Tensor = module.weight  # type: ignore[assignment]
        return weight.detach()[field.row_start: field.row_start + field.rows].float()


class EmbeddingBagKind(LookupKind):
    """``nn.EmbeddingBag`` (sum / mean): 1-D ids with offsets, or (B, L) bags; ``per_sample_weights`` (sum).

    A bag module is one field; a mean bag is looked up as a sum with weights 1 / bag length.
    """

    module_type = nn.EmbeddingBag
    name = "embedding-bag"

    def describe(self, module: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 offsets: Sequence[int] | None) -> list[Field]:
        assert isinstance(module, nn.EmbeddingBag)
        if module.mode not in ("sum", "mean"):
            raise ConfigError(f"nn.EmbeddingBag {path!r} pools with mode {module.mode!r}; sharkrec reads 'sum' "
                              "and 'mean' bags")
        if module.max_norm is not None:
            raise ConfigError(f"nn.EmbeddingBag {path!r} uses max_norm; train without it")
        if module.padding_idx is not None:
            raise ConfigError(f"nn.EmbeddingBag {path!r} has padding_idx; drop it (empty bags pool to zeros)")
        return [Field(path or "embedding_bag", path, int(module.num_embeddings), int(module.embedding_dim),
                      pooling=str(module.mode), last_offset=bool(module.include_last_offset))]

    @staticmethod
    def _call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
        names = ("input", "offsets", "per_sample_weights")
        values = dict(zip(names, args, strict=False))
        values.update({k: v for k, v in kwargs.items() if k in names})
        return values.get("input"), values.get("offsets"), values.get("per_sample_weights")

    def field_ids(self, fields: Sequence[Field], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FieldIds]:
        (field,) = fields
        ids, offsets, weights = self._call(args, kwargs)
        ids = _ids_tensor(ids, f"lookup {field.module!r}")
        if ids.ndim == 2:  # (B, L) fixed-size bags
            batch, length = ids.shape
            offsets = torch.arange(0, batch * length + 1, length, dtype=torch.int64)
            ids = ids.reshape(-1)
            weights = None if weights is None else weights.reshape(-1)
        else:
            if offsets is None:
                raise DataError(f"lookup {field.module!r} got 1-D ids without offsets; pass offsets")
            offsets = _ids_tensor(offsets, f"lookup {field.module!r} (its offsets)")
            if not field.last_offset:  # B starts: append the end
                offsets = torch.cat([offsets, offsets.new_tensor([ids.numel()])])
        if field.pooling == "mean":  # a mean is a weighted sum: each id weighs 1 / its bag's length
            lengths = (offsets[1:] - offsets[:-1]).clamp(min=1)
            weights = torch.repeat_interleave(1.0 / lengths.float(), offsets[1:] - offsets[:-1],
                                              output_size=ids.numel())
        return [FieldIds(ids, offsets, None if weights is None else weights.float())]

    def batch_size(self, fields: Sequence[Field], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """B from shapes: (B, L) bags, or 1-D ids with B offsets (B + 1 with ``include_last_offset=True``)."""
        ids, offsets, _ = self._call(args, kwargs)
        if isinstance(ids, Tensor) and ids.ndim == 2:
            return ids.shape[0]
        if not isinstance(offsets, Tensor):
            raise DataError(f"lookup {fields[0].module!r} got 1-D ids without offsets; pass offsets")
        return offsets.shape[0] - 1 if fields[0].last_offset else offsets.shape[0]

    def output(self, fields: Sequence[Field], vectors: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return vectors[:, 0]  # (B, D)

    def jagged_inputs(self, fields: Sequence[Field], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> list[tuple[Tensor, Tensor, Tensor | None, bool]]:
        ids, offsets, weights = self._call(args, kwargs)
        if isinstance(ids, Tensor) and ids.ndim == 1 and isinstance(offsets, Tensor):
            return [(ids, offsets, weights if isinstance(weights, Tensor) else None, fields[0].last_offset)]
        return []

    def table(self, module: nn.Module, field: Field) -> Tensor:
        weight: Tensor = module.weight  # type: ignore[assignment]
        return weight.detach().float()


def dummy_vectors(batch: int, count: int, dim: int) -> Tensor:
    """Zeros (B, k, D) a lookup answers with while its ids are being recorded."""
    return torch.zeros(batch, count, dim)
