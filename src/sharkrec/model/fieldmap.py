"""The field map of a user's model: which modules look up which sparse fields, found from one example batch.

::

    fmap = sharkrec.fields(model, example_inputs)   # runs the model once, reads the lookups it calls
    print(fmap)                                      # one line per field: name, module, rows, dim
    fmap = fmap.rename({"emb.0": "user", "emb.1": "item"})

Discovery hooks every module of a registered :class:`~sharkrec.model.lookups.LookupKind` (``nn.Embedding``,
``nn.EmbeddingBag``, TorchRec ``EmbeddingBagCollection``) and records the calls one forward pass makes.
A table looked up with (B, F) ids and per-field offsets (pytorch-fm's layout) is F fields, each a row
range of the table; the offsets are found on the module or its parent (an ``offsets`` attribute) or
declared with ``shared={path: [start rows]}``. Lookups can also be named outright with ``modules=[...]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from sharkrec.errors import ConfigError, DataError
from sharkrec.model.lookups import Field, LookupKind, kind_of

#: the kinds TorchRec adds register themselves when sharkrec.interop.torchrec is imported
_OPTIONAL_KINDS = ("sharkrec.interop.torchrec",)


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple or list of positional inputs, ``model(inputs)`` for anything else."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


@dataclass(frozen=True)
class FieldMap:
    """The sparse fields of a model in the order sharkrec holds them (module call order, then key order)."""

    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"the field map names fields more than once: {duplicates}; rename them")
        if not self.fields:
            raise ConfigError("the field map has no fields; a model needs at least one embedding lookup")
        dims = {f.dim for f in self.fields}
        if len(dims) > 1:
            raise ConfigError(f"the model's fields have dims {sorted(dims)}; sharkrec's tables hold one dim per model: "
                              "name the lookups to compress with modules=[...] (e.g. leave out (rows, 1) "
                              "first-order weights) or give every lookup the same embedding_dim")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def modules(self) -> tuple[str, ...]:
        """Lookup module paths, each once, in field order."""
        return tuple(dict.fromkeys(f.module for f in self.fields))

    @property
    def embedding_dim(self) -> int:
        return self.fields[0].dim

    def field_rows(self) -> dict[str, int]:
        return {f.name: f.rows for f in self.fields}

    def of_module(self, path: str) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.module == path)

    def rename(self, names: Mapping[str, str]) -> FieldMap:
        """A map with fields renamed (``{old: new}``); one-line error for a name that is not a field."""
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise ConfigError(f"fields {unknown} are not in the field map; known fields: {', '.join(self.names)}")
        return FieldMap(tuple(replace(f, name=str(names.get(f.name, f.name))) for f in self.fields))

    def to_dict(self) -> dict[str, Any]:
        return {"fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> FieldMap:
        try:
            return cls(tuple(Field(**dict(f)) for f in payload["fields"]))
        except (KeyError, TypeError) as error:
            raise ConfigError(f"a field map must be {{'fields': [{{name, module, rows, dim, ...}}]}}: "
                              f"{error}") from None

    def __str__(self) -> str:
        lines = [f"{len(self.fields)} fields, dim {self.embedding_dim}:"]
        for f in self.fields:
            where = f.module + ("" if f.key is None else f"[{f.key}]")
            extra = f" rows {f.row_start}..{f.row_start + f.rows - 1}" if f.row_start else ""
            lines.append(f"  {f.name:<24} {where:<32} {f.rows:>10} rows  pooling {f.pooling}{extra}")
        return "\n".join(lines)


def lookup_modules(model: nn.Module) -> dict[str, tuple[nn.Module, LookupKind]]:
    """Every module of ``model`` that a registered lookup kind reads, by dotted path (outermost first)."""
    _import_optional_kinds()
    found: dict[str, tuple[nn.Module, LookupKind]] = {}
    for path, module in model.named_modules():
        if any((p == "" and path) or path.startswith(p + ".") for p in found):
            continue  # inside a lookup already found (e.g. the tables of a TorchRec collection)
        kind = kind_of(module)
        if kind is not None:
            found[path] = (module, kind)
    return found


def find_fields(model: nn.Module, example: Any, *, modules: Sequence[str] | None = None,
                shared: Mapping[str, Sequence[int]] | None = None, names: Mapping[str, str] | None = None) -> FieldMap:
    """Discover the sparse fields of ``model`` by running it once on ``example`` (its inputs; a tuple = *args).

    Args:
        modules: only these lookup module paths (default every lookup the forward pass calls).
        shared: per-field start rows of shared tables, ``{module path: [0, rows_0, rows_0 + rows_1, ...]}``.
        names: renames, ``{found name: new name}``.
    """
    lookups = lookup_modules(model)
    if modules is not None:
        missing = [m for m in modules if m not in dict(model.named_modules())]
        if missing:
            raise ConfigError(f"modules {missing} are not in the model; its lookups are: "
                              f"{', '.join(lookups) or 'none'}")
        not_lookups = [m for m in modules if m not in lookups]
        if not_lookups:
            raise ConfigError(f"modules {not_lookups} are not embedding lookups sharkrec reads "
                              "(nn.Embedding, nn.EmbeddingBag, TorchRec EmbeddingBagCollection)")
        lookups = {m: lookups[m] for m in modules}
    shared = dict(shared or {})
    unknown_shared = [m for m in shared if m not in lookups]
    if unknown_shared:
        raise ConfigError(f"shared tables {unknown_shared} are not lookups of the model; its lookups are: "
                          f"{', '.join(lookups) or 'none'}")
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def recorder(path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls.append((path, args, kwargs))
        return hook

    handles = [module.register_forward_pre_hook(recorder(path), with_kwargs=True)
               for path, (module, _) in lookups.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example)
    except Exception as error:  # the user's model rejected the example: say so in one line
        raise DataError(f"the model failed on the example batch ({type(error).__name__}: {error}); pass inputs "
                        "the model's forward accepts (a tuple for several arguments)") from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not calls:
        seen = sorted({type(m).__name__ for m in model.modules()})
        raise ConfigError(
            f"no embedding lookup was called by the model's forward (modules seen: {', '.join(seen[:12])}); "
            "sharkrec reads nn.Embedding, nn.EmbeddingBag and TorchRec EmbeddingBagCollection lookups"
        )
    counts: dict[str, int] = {}
    for path, _, _ in calls:
        counts[path] = counts.get(path, 0) + 1
    repeated = sorted(p for p, c in counts.items() if c > 1)
    if repeated:
        raise ConfigError(f"lookups {repeated} are called more than once per forward pass; give each field its own "
                          "module (or pass modules=[...] without them)")
    parents = dict(model.named_modules())
    fields: list[Field] = []
    for path, args, kwargs in calls:
        module, kind = lookups[path]
        parent = parents.get(path.rpartition(".")[0]) if path else None
        offsets = shared.get(path) or kind.offsets_of(module, parent)
        fields.extend(kind.describe(module, path, args, kwargs, offsets))
    fmap = FieldMap(tuple(fields))
    return fmap.rename(names) if names else fmap


def _import_optional_kinds() -> None:
    """Register TorchRec's kinds once torchrec itself is imported (a TorchRec model exists): plain users never
    pay torchrec's import time."""
    import contextlib
    import importlib
    import sys

    if "torchrec" not in sys.modules:
        return
    for name in _OPTIONAL_KINDS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
