"""What a dataset's columns are: sparse fields, dense features and labels.

A :class:`Schema` is the contract between a reader and the rest of sharkrec. It is written as JSON
so that a user can describe any CSV/TSV/Parquet file, and it travels inside checkpoints and
artifacts so a model can check that it is given data of the shape it was trained on.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sharkrec.errors import SchemaError


class FieldKind(str, enum.Enum):
    """The role a column plays in a sample."""

    SPARSE = "sparse"
    DENSE = "dense"
    LABEL = "label"


@dataclass(frozen=True)
class FieldSpec:
    """One column of the input.

    Attributes:
        name: field name as it appears in reports (``C1``, ``user``, ``click``).
        kind: sparse (categorical ids), dense (a number) or label (a 0/1 target).
        column: the source column (a name for CSV/Parquet, a position for headerless files);
            ``None`` means the column has the field's name.
        separator: for multi-hot sparse fields, the separator between ids in one cell
            (``"|"`` for genres); ``None`` means exactly one id per sample.
        min_count: ids seen fewer times than this in the training split map to the OOV row.
        positive: for labels, the raw values that mean 1 (others mean 0); ``None`` means the raw
            value is parsed as a number and ``> 0`` is positive.
    """

    name: str
    kind: FieldKind
    column: str | int | None = None
    separator: str | None = None
    min_count: int = 1
    positive: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise SchemaError("a field has an empty name; give every field a name")
        if not isinstance(self.kind, FieldKind):
            try:
                object.__setattr__(self, "kind", FieldKind(self.kind))
            except ValueError:
                raise SchemaError(
                    f"field {self.name!r} has kind {self.kind!r}; use one of sparse, dense, label"
                ) from None
        if self.min_count < 1:
            raise SchemaError(f"field {self.name!r} has min_count {self.min_count}; use 1 or more")
        if self.separator is not None and self.kind is not FieldKind.SPARSE:
            raise SchemaError(f"field {self.name!r} has a separator but is not sparse; remove it")
        if self.positive is not None and not isinstance(self.positive, tuple):
            object.__setattr__(self, "positive", tuple(str(v) for v in self.positive))

    @property
    def is_multi_hot(self) -> bool:
        return self.separator is not None

    @property
    def source(self) -> str | int:
        return self.name if self.column is None else self.column


@dataclass(frozen=True)
class Schema:
    """An ordered list of fields. Sparse, dense and label fields keep their relative order."""

    fields: tuple[FieldSpec, ...]
    name: str = "custom"
    delimiter: str | None = None
    has_header: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        duplicates = duplicate_names(f.name for f in self.fields)
        if duplicates:
            raise SchemaError(f"schema names fields more than once: {duplicates}; rename them")
        if not self.labels:
            raise SchemaError("schema has no label field; mark at least one field kind 'label'")
        if not self.sparse and not self.dense:
            raise SchemaError("schema has no sparse or dense features; add at least one")

    @property
    def sparse(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.kind is FieldKind.SPARSE)

    @property
    def dense(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.kind is FieldKind.DENSE)

    @property
    def labels(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.kind is FieldKind.LABEL)

    @property
    def sparse_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.sparse)

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.dense)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.labels)

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise SchemaError(
            f"field {name!r} is not in the schema; known fields: {describe_names(f.name for f in self.fields)}"
        )

    def require_fields(self, names: Sequence[str], kind: FieldKind | None = None) -> None:
        """Raise a one-line error naming every entry of ``names`` the schema lacks."""
        pool = self.fields if kind is None else tuple(f for f in self.fields if f.kind is kind)
        known = [f.name for f in pool]
        missing = [n for n in names if n not in known]
        if missing:
            what = "fields" if kind is None else f"{kind.value} fields"
            raise SchemaError(f"{what} {missing} are not in the schema; known {what}: {describe_names(known)}")

    def with_fields(self, fields: Sequence[FieldSpec]) -> Schema:
        return replace(self, fields=tuple(fields))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "delimiter": self.delimiter,
            "has_header": self.has_header,
            "fields": [
                {
                    k: (v.value if isinstance(v, FieldKind) else (list(v) if isinstance(v, tuple) else v))
                    for k, v in asdict(spec).items()
                    if v is not None and not (k == "min_count" and v == 1)
                }
                for spec in self.fields
            ],
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Schema:
        if not isinstance(payload, dict) or "fields" not in payload:
            raise SchemaError("schema JSON must be an object with a 'fields' list")
        raw_fields = payload["fields"]
        if not isinstance(raw_fields, list) or not raw_fields:
            raise SchemaError("schema 'fields' must be a non-empty list of {name, kind, ...} objects")
        allowed = {"name", "kind", "column", "separator", "min_count", "positive"}
        specs = []
        for i, item in enumerate(raw_fields):
            if not isinstance(item, dict) or "name" not in item or "kind" not in item:
                raise SchemaError(f"schema field #{i} needs at least 'name' and 'kind'")
            unknown = sorted(set(item) - allowed)
            if unknown:
                raise SchemaError(
                    f"schema field {item['name']!r} has unknown keys {unknown}; allowed: {sorted(allowed)}"
                )
            specs.append(FieldSpec(**item))
        return cls(
            fields=tuple(specs),
            name=str(payload.get("name", "custom")),
            delimiter=payload.get("delimiter"),
            has_header=bool(payload.get("has_header", True)),
        )

    def save(self, path: str | Path) -> None:
        from sharkrec.io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        from sharkrec.io import read_json

        return cls.from_dict(read_json(path, "schema file", SchemaError, "pass an existing JSON file to --schema"))


def duplicate_names(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted; one pass over ``names`` (linear, not pairwise)."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def describe_names(names: Any, limit: int = 12) -> str:
    """``C1, C2, ..., C26`` style listing for error messages."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit - 2]) + f", ..., {names[-1]} ({len(names)} in all)"
