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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sharkrec.data.dataset import EncodedSplit, SparseColumn
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


LEAVES: list[Leaf] = []


def _leaf(value: Any) -> Leaf | None:
    return next((leaf for leaf in LEAVES if leaf.matches(value)), None)


def tree_cat(trees: Sequence[Any], path: str = "inputs") -> Any:
    """Join batches of one structure along the sample axis."""
    first = trees[0]
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


def tree_lengths(tree: Any, path: str = "inputs") -> list[tuple[str, int]]:
    if isinstance(tree, Tensor):
        return [(path, int(tree.shape[0]) if tree.ndim else -1)]
    if isinstance(tree, Mapping):
        return [x for k, v in tree.items() for x in tree_lengths(v, f"{path}[{k!r}]")]
    if isinstance(tree, (tuple, list)):
        return [x for i, v in enumerate(tree) for x in tree_lengths(v, f"{path}[{i}]")]
    leaf = _leaf(tree)
    if leaf is None:
        raise DataError(f"{path} is a {type(tree).__name__}; batches may hold tensors (sample axis first), dicts, "
                        "lists and tuples of them")
    return [(path, leaf.length(tree))]


def labels_tensor(labels: Any, tasks: Sequence[str]) -> Tensor:
    """(B,), (B, T) or ``{task: (B,)}`` 0/1 labels → (B, T) float32."""
    if isinstance(labels, Mapping):
        missing = [t for t in tasks if t not in labels]
        if missing:
            raise DataError(f"the labels have keys {sorted(labels)} but not the tasks {missing}; give one label per task")
        labels = torch.stack([torch.as_tensor(labels[t]).reshape(-1) for t in tasks], dim=1)
    labels = torch.as_tensor(labels).float()
    labels = labels.reshape(-1, 1) if labels.ndim <= 1 else labels
    if labels.ndim != 2 or labels.shape[1] != len(tasks):
        raise DataError(f"labels of shape {tuple(labels.shape)} do not fit {len(tasks)} tasks {list(tasks)}; give "
                        f"(B,) or (B, {len(tasks)}) labels")
    if not torch.isin(labels, torch.tensor([0.0, 1.0])).all():
        raise DataError("labels must be 0 or 1; map the click / conversion columns to 0/1")
    return labels


class UserSplit(EncodedSplit):
    """N samples of a user's data: the collated inputs, the ids each field's lookup sees, labels (N, T)."""

    def __init__(self, inputs: Any, sparse: Sequence[SparseColumn], labels: np.ndarray) -> None:
        n = len(np.asarray(labels).reshape(len(labels), -1))
        super().__init__(np.zeros((n, 0), dtype=np.float32), sparse, labels)
        lengths = tree_lengths(inputs)
        bad = [(p, k) for p, k in lengths if k != n]
        if bad:
            raise DataError(f"{bad[0][0]} has {bad[0][1]} samples but the labels have {n}; every input tensor needs "
                            "the sample axis first")
        self.inputs = inputs

    def batch(self, index: Tensor) -> InputBatch:
        from sharkrec.model.wrapped import InputBatch

        plain = super().batch(index)
        return InputBatch(plain.dense, plain.sparse, plain.labels, inputs=tree_take(self.inputs, index))

    def subset(self, index: np.ndarray | Tensor) -> UserSplit:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        batch = self.batch(idx)
        return UserSplit(batch.inputs, _columns(batch.sparse), batch.labels.numpy())


def _columns(sparse: Sequence[Any]) -> list[SparseColumn]:
    return [SparseColumn(f.values.numpy(), None if f.offsets is None else f.offsets.numpy(),
                         None if f.weights is None else f.weights.numpy()) for f in sparse]


def from_batches(model: FieldModel, batches: Iterable[Any], *,
                 inputs: Callable[[Any], Any] | None = None, labels: Callable[[Any], Any] | None = None) -> UserSplit:
    """Collect a user's batches for ``model``: each item is ``(inputs, labels)`` unless ``inputs`` / ``labels``
    say how to take them from it. The lookups' ids are recorded once per batch (a forward pass stopped after
    the last lookup)."""
    from sharkrec.data.batch import FieldIds

    taken_inputs, taken_labels, recorded = [], [], []
    for number, item in enumerate(batches):
        if inputs is None or labels is None:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise DataError(f"batch {number} is a {type(item).__name__}, not (inputs, labels); pass inputs=... "
                                "and labels=... to take them from each batch")
        x = inputs(item) if inputs is not None else item[0]
        y = labels_tensor(labels(item) if labels is not None else item[1], model.task_names)
        ids = model.record(x)
        if any(f.batch_size() != len(y) for f in ids):
            raise DataError(f"batch {number} has {len(y)} labels but its lookups saw "
                            f"{ids[0].batch_size()} samples; give one label row per sample")
        taken_inputs.append(x)
        taken_labels.append(y)
        recorded.append(ids)
    if not taken_inputs:
        raise DataError("no batches were given; pass a loader (or list) with at least one batch")
    columns = []
    for position in range(model.num_fields):
        parts: list[FieldIds] = [ids[position] for ids in recorded]
        columns.append(_join_ids(parts))
    return UserSplit(tree_cat(taken_inputs), columns, torch.cat(taken_labels).numpy())


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
