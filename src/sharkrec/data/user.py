"""A user's own data for a :class:`~sharkrec.model.wrapped.FieldModel`: their batches, their labels.

::

    train = from_batches(wrapped, train_loader)            # items (inputs, labels); inputs a tensor, dict or tuple
    data = UserData(train, valid=from_batches(wrapped, valid_loader), test=from_batches(wrapped, test_loader))

The batches are collated into one tree of tensors with the sample axis first (tensors, dicts, lists and tuples
of them; kinds such as TorchRec's ``KeyedJaggedTensor`` register a :class:`Leaf`), so any sample can be
gathered again: shuffled epochs, support samples and reference rows work as on sharkrec's own splits. The ids
each field's lookup sees are recorded once per batch and stored as sparse columns (what Saec and the
F-Quantization frequencies count). Everything is held in memory.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from sharkrec.data.dataset import EncodedSplit, SparseColumn, _gather_bags
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import DataError

if TYPE_CHECKING:
    from sharkrec.model.wrapped import FieldModel, InputBatch


class Leaf(abc.ABC):
    """How one non-tensor input type is joined and indexed along its sample axis."""

    @abc.abstractmethod
    def matches(self, value: Any) -> bool: ...

    @abc.abstractmethod
    def cat(self, values: Sequence[Any]) -> Any: ...

    @abc.abstractmethod
    def take(self, value: Any, index: Tensor) -> Any: ...

    @abc.abstractmethod
    def length(self, value: Any) -> int: ...

    def canonical(self, value: Any) -> Any:
        """The one form of ``value`` an artifact is exported and served with (e.g. a KJT by lengths, never offsets)."""
        return value


LEAVES: list[Leaf] = []


def _leaf(value: Any) -> Leaf | None:
    return next((leaf for leaf in LEAVES if leaf.matches(value)), None)


Path = tuple[Any, ...]


def tree_canonical(tree: Any) -> Any:
    """``tree`` with every registered input type in its canonical form (:meth:`Leaf.canonical`)."""
    return pytree.tree_map(lambda v: leaf.canonical(v) if (leaf := _leaf(v)) is not None else v, tree,
                           is_leaf=lambda v: _leaf(v) is not None)


def tree_cat(trees: Sequence[Any], path: str = "inputs") -> Any:
    """Join batches of one structure along the sample axis (``None`` placeholders stay ``None``)."""
    first = trees[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(list(trees), dim=0)
    if isinstance(first, Mapping):
        return {k: tree_cat([t[k] for t in trees], f"{path}[{k!r}]") for k in first}
    if isinstance(first, (tuple, list)):
        joined = [tree_cat([t[i] for t in trees], f"{path}[{i}]") for i in range(len(first))]
        return tuple(joined) if isinstance(first, tuple) else joined
    leaf = _leaf(first)
    if leaf is not None:
        return leaf.cat(trees)
    raise DataError(f"{path} is a {type(first).__name__}; batches may hold tensors (sample axis first), dicts, "
                    "lists and tuples of them")


def tree_take(tree: Any, index: Tensor) -> Any:
    """The samples at ``index`` of a collated tree."""
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, Mapping):
        return {k: tree_take(v, index) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        taken = [tree_take(v, index) for v in tree]
        return tuple(taken) if isinstance(tree, tuple) else taken
    leaf = _leaf(tree)
    assert leaf is not None  # tree_cat accepted it
    return leaf.take(tree, index)


def tree_leaves(tree: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    """``(path, leaf)`` of every leaf (a path is the keys / positions from the root)."""
    if isinstance(tree, Mapping):
        return [x for k, v in tree.items() for x in tree_leaves(v, (*path, k))]
    if isinstance(tree, (tuple, list)):
        return [x for i, v in enumerate(tree) for x in tree_leaves(v, (*path, i))]
    return [(path, tree)]


def tree_set(tree: Any, path: Path, value: Any) -> Any:
    """A copy of ``tree`` (containers only) with the leaf at ``path`` replaced by ``value``."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(tree, Mapping):
        return {k: (tree_set(v, rest, value) if k == key else v) for k, v in tree.items()}
    items = [tree_set(v, rest, value) if i == key else v for i, v in enumerate(tree)]
    return tuple(items) if isinstance(tree, tuple) else items


def _describe(path: Path) -> str:
    return "inputs" + "".join(f"[{k!r}]" for k in path)


def tree_lengths(tree: Any) -> list[tuple[str, int]]:
    """``(path, samples)`` of every leaf that has a sample axis."""
    out = []
    for path, value in tree_leaves(tree):
        if value is None:
            continue
        if isinstance(value, Tensor):
            out.append((_describe(path), int(value.shape[0]) if value.ndim else -1))
            continue
        leaf = _leaf(value)
        if leaf is None:
            raise DataError(f"{_describe(path)} is a {type(value).__name__}; batches may hold tensors (sample axis "
                            "first), dicts, lists and tuples of them")
        out.append((_describe(path), leaf.length(value)))
    return out


@dataclass(frozen=True)
class Jagged:
    """Ragged ids of a bag lookup inside a user's inputs: where the values, offsets and weights sit, and the
    samples' bags joined (``offsets`` (N + 1,) always end with the total)."""

    values_path: Path
    offsets_path: Path
    weights_path: Path | None
    last_offset: bool
    values: Tensor
    offsets: Tensor
    weights: Tensor | None

    def take(self, index: Tensor) -> Jagged:
        bags = _gather_bags(self.values, self.offsets, index, self.weights)
        assert bags.offsets is not None
        return Jagged(self.values_path, self.offsets_path, self.weights_path, self.last_offset, bags.values,
                      bags.offsets, bags.weights)

    def place(self, tree: Any) -> Any:
        """``tree`` with these bags put back at their paths, offsets in the lookup's own convention."""
        tree = tree_set(tree, self.values_path, self.values)
        tree = tree_set(tree, self.offsets_path, self.offsets if self.last_offset else self.offsets[:-1])
        return tree if self.weights_path is None else tree_set(tree, self.weights_path, self.weights)

    @staticmethod
    def join(parts: Sequence[Jagged]) -> Jagged:
        first = parts[0]
        offsets, base = [torch.zeros(1, dtype=torch.int64)], 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        weights = None if first.weights is None else torch.cat([p.weights for p in parts if p.weights is not None])
        return Jagged(first.values_path, first.offsets_path, first.weights_path, first.last_offset,
                      torch.cat([p.values for p in parts]), torch.cat(offsets), weights)

    def layout(self) -> tuple[Any, ...]:
        return (self.values_path, self.offsets_path, self.weights_path, self.last_offset)


def split_jagged(model: FieldModel, inputs: Any, calls: Sequence[Any], samples: int) -> tuple[Any, list[Jagged]]:
    """Take the ragged bag inputs out of one batch's ``inputs`` (found by identity among the lookups' calls)."""
    leaves = tree_leaves(inputs)
    path_of = {id(v): p for p, v in leaves if isinstance(v, Tensor)}
    found: list[Jagged] = []
    for slot, args, kwargs in calls:
        for values, offsets, weights, last in slot.kind.jagged_inputs(slot.fields, args, kwargs):
            if id(values) not in path_of or id(offsets) not in path_of:
                continue  # computed inside forward: the inputs that made it have the sample axis (or fail below)
            full = offsets.to(torch.int64)
            if not last:
                full = torch.cat([full, full.new_tensor([values.numel()])])
            if full.numel() != samples + 1:
                raise DataError(f"{_describe(path_of[id(offsets)])} has {full.numel() - (1 if not last else 0)} bag "
                                f"offsets but the batch has {samples} samples; give one bag per sample")
            weights_path = path_of.get(id(weights)) if weights is not None else None
            found.append(Jagged(path_of[id(values)], path_of[id(offsets)], weights_path, last,
                                values.to(torch.int64), full, None if weights is None else weights.float()))
    for jagged in found:
        inputs = tree_set(inputs, jagged.values_path, None)
        inputs = tree_set(inputs, jagged.offsets_path, None)
        if jagged.weights_path is not None:
            inputs = tree_set(inputs, jagged.weights_path, None)
    return inputs, found


def stack_tasks(per_task: Mapping[str, Any], tasks: Sequence[str], what: str, fix: str) -> Tensor:
    """``{task: (B,) or (B, 1)}`` → (B, T) in ``tasks`` order; one-line error naming the missing tasks."""
    missing = [t for t in tasks if t not in per_task]
    if missing:
        raise DataError(f"{what} has keys {sorted(per_task)} but not the tasks {missing}; {fix}")
    return torch.stack([torch.as_tensor(per_task[t]).reshape(-1) for t in tasks], dim=1)


def labels_tensor(labels: Any, tasks: Sequence[str]) -> Tensor:
    """(B,), (B, T) or ``{task: (B,)}`` 0/1 labels → (B, T) float32."""
    if isinstance(labels, Mapping):
        labels = stack_tasks(labels, tasks, "the labels", "give one label per task")
    labels = torch.as_tensor(labels).float()
    labels = labels.reshape(-1, 1) if labels.ndim <= 1 else labels
    if labels.ndim != 2 or labels.shape[1] != len(tasks):
        raise DataError(f"labels of shape {tuple(labels.shape)} do not fit {len(tasks)} tasks {list(tasks)}; give "
                        f"(B,) or (B, {len(tasks)}) labels")
    if not torch.isin(labels, torch.tensor([0.0, 1.0])).all():
        raise DataError("labels must be 0 or 1; map the click / conversion columns to 0/1")
    return labels


class UserSplit(EncodedSplit):
    """N samples of a user's data: the collated inputs, the ids each field's lookup sees, labels (N, T).

    ``inputs`` holds every input with a sample axis; ragged bag inputs (1-D ids + offsets of an
    ``nn.EmbeddingBag`` call) are kept apart in ``jagged`` and put back, re-based, in every batch.
    """

    def __init__(self, inputs: Any, sparse: Sequence[SparseColumn], labels: np.ndarray,
                 jagged: Sequence[Jagged] = ()) -> None:
        n = int(np.asarray(labels).shape[0])
        super().__init__(np.zeros((n, 0), dtype=np.float32), sparse, labels)
        bad = [(p, k) for p, k in tree_lengths(inputs) if k != n]
        if bad:
            raise DataError(f"{bad[0][0]} has {bad[0][1]} rows but the batch has {n} samples; every input needs the "
                            "sample axis first (ragged ids: pass them with their offsets to the nn.EmbeddingBag call)")
        self.inputs = inputs
        self.jagged = tuple(jagged)

    def batch(self, index: Tensor) -> InputBatch:
        from sharkrec.model.wrapped import InputBatch

        plain = super().batch(index)
        inputs = tree_take(self.inputs, index)
        for jagged in self.jagged:
            inputs = jagged.take(index).place(inputs)
        return InputBatch(plain.dense, plain.sparse, plain.labels, inputs=inputs)

    def subset(self, index: np.ndarray | Tensor) -> UserSplit:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        plain = EncodedSplit.batch(self, idx)
        return UserSplit(tree_take(self.inputs, idx), _columns(plain.sparse), plain.labels.numpy(),
                         [j.take(idx) for j in self.jagged])


def _columns(sparse: Sequence[Any]) -> list[SparseColumn]:
    return [SparseColumn(f.values.numpy(), None if f.offsets is None else f.offsets.numpy(),
                         None if f.weights is None else f.weights.numpy()) for f in sparse]


def from_batches(model: FieldModel, batches: Iterable[Any], *,
                 inputs: Callable[[Any], Any] | None = None, labels: Callable[[Any], Any] | None = None) -> UserSplit:
    """Collect a user's batches for ``model``: each item is ``(inputs, labels)`` unless ``inputs`` / ``labels``
    say how to take them from it. The lookups' ids are recorded once per batch (a forward pass stopped after
    the last lookup)."""
    from sharkrec.data.batch import FieldIds

    taken_inputs: list[Any] = []
    taken_labels: list[Tensor] = []
    recorded: list[list[FieldIds]] = []
    jagged: list[list[Jagged]] = []
    for number, item in enumerate(batches):
        if (inputs is None or labels is None) and not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"batch {number} is a {type(item).__name__}, not (inputs, labels); pass inputs=... "
                            "and labels=... to take them from each batch")
        x = inputs(item) if inputs is not None else item[0]
        y = labels_tensor(labels(item) if labels is not None else item[1], model.task_names)
        calls: list[Any] = []
        ids = model.record(x, calls)
        wrong = [(f.name, i.batch_size()) for f, i in zip(model.fields.fields, ids, strict=True)
                 if i.batch_size() != len(y)]
        if wrong:
            raise DataError(f"batch {number} has {len(y)} labels but field {wrong[0][0]!r}'s lookup saw "
                            f"{wrong[0][1]} samples; give one label row (and one bag) per sample")
        x, ragged = split_jagged(model, x, calls, len(y))
        if jagged and [j.layout() for j in ragged] != [j.layout() for j in jagged[0]]:
            raise DataError(f"batch {number} passes its ragged ids differently from batch 0; give every batch the "
                            "same structure")
        jagged.append(ragged)
        taken_inputs.append(x)
        taken_labels.append(y)
        recorded.append(ids)
    if not taken_inputs:
        raise DataError("no batches were given; pass a loader (or list) with at least one batch")
    columns = []
    for position in range(model.num_fields):
        parts: list[FieldIds] = [ids[position] for ids in recorded]
        columns.append(_join_ids(parts))
    joined = [Jagged.join([batch[k] for batch in jagged]) for k in range(len(jagged[0]))]
    return UserSplit(tree_cat(taken_inputs), columns, torch.cat(taken_labels).numpy(), joined)


def _join_ids(parts: Sequence[Any]) -> SparseColumn:
    if all(p.offsets is None for p in parts):
        return SparseColumn(torch.cat([p.values for p in parts]).numpy())
    values, offsets, weights, base = [], [np.zeros(1, dtype=np.int64)], [], 0
    for p in parts:
        p_offsets = p.offsets if p.offsets is not None else torch.arange(p.values.numel() + 1)
        values.append(p.values.numpy())
        offsets.append(p_offsets[1:].numpy() + base)
        weights.append(p.weights.numpy() if p.weights is not None else np.ones(p.values.numel(), dtype=np.float32))
        base += int(p_offsets[-1])
    weighted = any(p.weights is not None for p in parts)
    return SparseColumn(np.concatenate(values), np.concatenate(offsets),
                        np.concatenate(weights).astype(np.float32) if weighted else None)


class UserData:
    """train / valid / test splits of a user's data, shaped like :class:`~sharkrec.data.dataset.PreparedData`
    for every stage (its ``schema`` lists the model's fields and tasks; its vocabularies are the identity)."""

    def __init__(self, model: FieldModel, train: UserSplit, valid: UserSplit | None = None,
                 test: UserSplit | None = None) -> None:
        self.train = train
        self.valid = valid if valid is not None else train.subset(np.arange(0))
        self.test = test if test is not None else train.subset(np.arange(0))
        for name, split in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            if len(split) and split.num_tasks != model.num_tasks:
                raise DataError(f"the {name} split has {split.num_tasks} label columns but the model has "
                                f"{model.num_tasks} tasks; give labels for tasks {list(model.task_names)}")
        specs = [FieldSpec(name, FieldKind.SPARSE) for name in model.field_names]
        specs += [FieldSpec(name, FieldKind.LABEL) for name in model.task_names]
        self.schema = Schema(tuple(specs), name="user-model")
        self._rows = dict(model.field_rows())
        self.report: dict[str, Any] = {}

    @property
    def cardinalities(self) -> dict[str, int]:
        return dict(self._rows)

    @property
    def vocabularies(self) -> dict[str, Vocabulary]:
        out = {}
        for position, (name, rows) in enumerate(self._rows.items()):
            column = self.train.column(position)
            counts = np.bincount(np.asarray(column.values, dtype=np.int64), minlength=rows)[:rows]
            out[name] = Vocabulary.identity(name, counts, np.zeros(rows, dtype=np.int64))
        return out

    @property
    def num_tasks(self) -> int:
        return len(self.schema.labels)

    def split(self, name: str) -> UserSplit:
        if name not in ("train", "valid", "test"):
            raise DataError(f"unknown split {name!r}; use train, valid or test")
        split: UserSplit = getattr(self, name)
        return split
