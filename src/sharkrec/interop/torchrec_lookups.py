"""TorchRec's lookups and inputs on sharkrec's field path: ``EmbeddingBagCollection``, ``EmbeddingCollection``,
``KeyedJaggedTensor`` and ``torchrec.datasets.utils.Batch``.

Importing this module (``sharkrec.interop.torchrec`` does; :func:`~sharkrec.model.fieldmap.find_fields` imports
that when ``torchrec`` is already imported) registers:

- :class:`EmbeddingBagCollectionKind`: one field per feature of an EBC, in the EBC's output order (table
  order, then each table's ``feature_names``); KJT in → ``KeyedTensor`` out. SUM and MEAN pooling (a mean is
  read as a sum with weights 1 / bag length); a weighted EBC (``is_weighted=True``) gives the KJT's weights as
  ``FieldIds.weights`` (its fields have pooling ``"weighted-sum"``).
- :class:`EmbeddingCollectionKind`: sequence embeddings (``dict[str, JaggedTensor]`` of one vector per id, not
  pooled). sharkrec's fields are one vector per sample, so it reads an EmbeddingCollection only when every
  feature holds exactly one id per sample (each JaggedTensor then has lengths 1); sequences are refused with
  a one-line error (pool them with an EmbeddingBagCollection, or leave the module out: ``modules=[...]``).
- :class:`KJTLeaf` and :class:`BatchLeaf`: collate (samples joined per key) and index (samples taken per key,
  weights kept) KJTs and torchrec ``Batch`` objects, so :func:`~sharkrec.data.user.from_batches` takes them.

A table that serves several features (``feature_names=[a, b]``) shares its rows between fields; sharkrec holds
one table per field, so such a table is refused with a one-line error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection, JaggedTensor, KeyedJaggedTensor, KeyedTensor
from torchrec.datasets.utils import Batch as TorchRecBatch
from torchrec.modules.embedding_configs import PoolingType

from sharkrec.data.batch import FieldIds
from sharkrec.data.user import LEAVES, Leaf, tree_cat, tree_take
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.lookups import Field, LookupKind

_POOLING = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}


def _kjt_argument(args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> KeyedJaggedTensor:
    features = args[0] if args else kwargs.get("features")
    if not isinstance(features, KeyedJaggedTensor):
        raise DataError(f"{what} got {type(features).__name__}; sharkrec reads TorchRec collections called with a "
                        "KeyedJaggedTensor")
    if features.variable_stride_per_key():
        raise DataError(f"{what} got a KeyedJaggedTensor with a variable batch size per key; give every key the "
                        "same batch size")
    return features


def _jagged(features: KeyedJaggedTensor, key: str, what: str) -> JaggedTensor:
    keys = list(features.keys())
    if key not in keys:
        raise DataError(f"{what} needs feature {key!r} but the KeyedJaggedTensor has keys {keys}; "
                        "give every feature the collection's tables read")
    return features[key]


def _feature_of(key: str | int | None) -> str:
    """The KJT key of a field: its output key, without the ``@table`` torchrec adds to a feature read twice."""
    return str(key).split("@")[0]


def _fields_of_tables(module: nn.Module, path: str, configs: Sequence[Any], pooling_of: Any, what: str) -> list[Field]:
    from torchrec.modules.embedding_modules import get_embedding_names_by_table

    fields = []
    for config, keys in zip(configs, get_embedding_names_by_table(list(configs)), strict=True):
        if len(config.feature_names) > 1:
            raise ConfigError(
                f"table {config.name!r} of {what} {path!r} serves features {list(config.feature_names)}; sharkrec "
                "holds one table per field, so shared rows cannot be scored, pruned or quantized per feature: give "
                "each feature its own table (one EmbeddingBagConfig per feature, rows copied)"
            )
        pooling = pooling_of(config)
        for key in keys:
            fields.append(Field(key, path, int(config.num_embeddings), int(config.embedding_dim), key=key,
                                pooling=pooling))
    return fields


def _table_rows(tables: nn.ModuleDict, configs: Sequence[Any], field: Field) -> Tensor:
    feature = _feature_of(field.key)
    table = str(field.key).split("@")[1] if "@" in str(field.key) else next(
        c.name for c in configs if feature in c.feature_names)
    weight = tables[table].weight
    assert isinstance(weight, Tensor)
    return weight.detach().float()


class _KJTKind(LookupKind):
    """What both TorchRec collections share: called with one KeyedJaggedTensor (not registered itself)."""

    def batch_size(self, fields: Sequence[Field], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _kjt_argument(args, kwargs, f"lookup {fields[0].module!r}").stride()  # from shapes: traceable


class EmbeddingBagCollectionKind(_KJTKind):
    """TorchRec ``EmbeddingBagCollection``: KJT → ``KeyedTensor`` of one pooled (B, D) vector per feature."""

    module_type = EmbeddingBagCollection
    name = "torchrec-ebc"

    def describe(self, module: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 offsets: Sequence[int] | None) -> list[Field]:
        assert isinstance(module, EmbeddingBagCollection)
        what = f"EmbeddingBagCollection {path!r}"
        features = _kjt_argument(args, kwargs, what)
        weighted = module.is_weighted()

        def pooling_of(config: Any) -> str:
            if config.pooling not in _POOLING:
                raise ConfigError(f"table {config.name!r} of {what} pools with {config.pooling.name}; sharkrec reads "
                                  "SUM and MEAN tables")
            if weighted and config.pooling != PoolingType.SUM:
                raise ConfigError(f"table {config.name!r} of the weighted {what} pools with {config.pooling.name}; "
                                  "weighted bags are read as weighted sums: use SUM")
            return "weighted-sum" if weighted else _POOLING[config.pooling]

        fields = _fields_of_tables(module, path, module.embedding_bag_configs(), pooling_of, "EmbeddingBagCollection")
        for field in fields:
            _jagged(features, _feature_of(field.key), what)
        if weighted and features.weights_or_none() is None:
            raise DataError(f"{what} is weighted (is_weighted=True) but the KeyedJaggedTensor has no weights; "
                            "give the KJT weights=...")
        return fields

    def field_ids(self, fields: Sequence[Field], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FieldIds]:
        what = f"lookup {fields[0].module!r}"
        features = _kjt_argument(args, kwargs, what)
        out = []
        for field in fields:
            jagged = _jagged(features, _feature_of(field.key), what)
            values, offsets = jagged.values().to(torch.int64), jagged.offsets().to(torch.int64)
            weights = None
            if field.pooling == "weighted-sum":
                weights = jagged.weights().float()
            elif field.pooling == "mean":  # a mean is a weighted sum: each id weighs 1 / its bag's length
                lengths = offsets[1:] - offsets[:-1]
                weights = torch.repeat_interleave(1.0 / lengths.clamp(min=1).float(), lengths,
                                                  output_size=values.numel())
            out.append(FieldIds(values, offsets, weights))
        return out

    def output(self, fields: Sequence[Field], vectors: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        batch, count, dim = vectors.shape
        return KeyedTensor(keys=[str(f.key) for f in fields], values=vectors.reshape(batch, count * dim),
                           length_per_key=[dim] * count)  # (B, k·D), keys in the EBC's order

    def table(self, module: nn.Module, field: Field) -> Tensor:
        assert isinstance(module, EmbeddingBagCollection)
        return _table_rows(module.embedding_bags, module.embedding_bag_configs(), field)


class EmbeddingCollectionKind(_KJTKind):
    """TorchRec ``EmbeddingCollection`` with one id per sample and feature: KJT → ``{key: JaggedTensor}`` of
    (B, D) values with lengths 1. Sequences (several ids per sample, one vector each) are refused: sharkrec's
    fields are one vector per sample."""

    module_type = EmbeddingCollection
    name = "torchrec-ec"

    def describe(self, module: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 offsets: Sequence[int] | None) -> list[Field]:
        assert isinstance(module, EmbeddingCollection)
        what = f"EmbeddingCollection {path!r}"
        features = _kjt_argument(args, kwargs, what)
        if module.need_indices():
            raise ConfigError(f"{what} is built with need_indices=True (ids echoed as JaggedTensor weights); "
                              "sharkrec answers the lookup with vectors only: build it with need_indices=False")
        fields = _fields_of_tables(module, path, module.embedding_configs(), lambda config: "none",
                                   "EmbeddingCollection")
        for field in fields:
            lengths = _jagged(features, _feature_of(field.key), what).lengths()
            if lengths.numel() and not bool((lengths == 1).all()):
                raise ConfigError(
                    f"{what} returns one vector per id (sequence embeddings, not pooled) and feature "
                    f"{_feature_of(field.key)!r} has {int(lengths.min())}..{int(lengths.max())} ids per sample; "
                    "sharkrec's fields are one vector per sample, so it reads an EmbeddingCollection only with one "
                    "id per sample: pool the sequence (EmbeddingBagCollection) or leave the module out (modules=[...])"
                )
        return fields

    def field_ids(self, fields: Sequence[Field], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[FieldIds]:
        what = f"lookup {fields[0].module!r}"
        features = _kjt_argument(args, kwargs, what)
        out = []
        for field in fields:
            jagged = _jagged(features, _feature_of(field.key), what)
            if not bool((jagged.lengths() == 1).all()):
                raise DataError(f"{what} got several ids per sample for feature {_feature_of(field.key)!r}; the field "
                                "map reads this EmbeddingCollection with exactly one id per sample")
            out.append(FieldIds(jagged.values().to(torch.int64)))
        return out

    def output(self, fields: Sequence[Field], vectors: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ones = torch.ones(vectors.shape[0], dtype=torch.int64)  # one id per sample (checked when the map was read)
        return {str(field.key): JaggedTensor(values=vectors[:, j], lengths=ones)  # (B, D)
                for j, field in enumerate(fields)}

    def table(self, module: nn.Module, field: Field) -> Tensor:
        assert isinstance(module, EmbeddingCollection)
        return _table_rows(module.embeddings, module.embedding_configs(), field)


# ---------------------------------------------------------------------- inputs: KJT and Batch leaves
def kjt_cat(parts: Sequence[KeyedJaggedTensor]) -> KeyedJaggedTensor:
    """KJTs of one key list joined along the samples: key k holds every part's samples of k, in part order."""
    keys = list(parts[0].keys())
    for number, part in enumerate(parts):
        if list(part.keys()) != keys:
            raise DataError(f"KeyedJaggedTensor {number} has keys {list(part.keys())}, the first has {keys}; give "
                            "every batch the same keys in the same order")
    weighted = parts[0].weights_or_none() is not None
    if any((p.weights_or_none() is not None) != weighted for p in parts):
        raise DataError("some KeyedJaggedTensors have weights and some do not; give weights in every batch or none")
    jagged = [p.to_dict() for p in parts]
    values = [j[k].values() for k in keys for j in jagged]
    lengths = [j[k].lengths() for k in keys for j in jagged]
    weights = torch.cat([j[k].weights() for k in keys for j in jagged]) if weighted else None
    return KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths), weights=weights)


def kjt_take(features: KeyedJaggedTensor, index: Tensor) -> KeyedJaggedTensor:
    """The samples at ``index`` (B',) of every key (their ids and weights), keys kept."""
    keys = list(features.keys())
    weighted = features.weights_or_none() is not None
    values, lengths, weights = [], [], []
    for key in keys:
        jagged = features[key]
        offsets = jagged.offsets().to(torch.int64)
        taken = (offsets[1:] - offsets[:-1]).index_select(0, index)  # (B',)
        starts = offsets[:-1].index_select(0, index)
        total = int(taken.sum())
        # position of every taken id: its bag's start + its place in the bag
        within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(taken, 0) - taken, taken,
                                                                output_size=total)
        positions = torch.repeat_interleave(starts, taken, output_size=total) + within
        values.append(jagged.values().index_select(0, positions))
        lengths.append(taken.to(jagged.lengths().dtype))
        if weighted:
            weights.append(jagged.weights().index_select(0, positions))
    return KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths),
                             weights=torch.cat(weights) if weighted else None)


class KJTLeaf(Leaf):
    """``KeyedJaggedTensor`` inputs: joined and indexed per key along the samples (weights kept)."""

    def matches(self, value: Any) -> bool:
        return isinstance(value, KeyedJaggedTensor)

    def cat(self, values: Sequence[Any]) -> Any:
        return kjt_cat(values)

    def take(self, value: Any, index: Tensor) -> Any:
        return kjt_take(value, index)

    def length(self, value: Any) -> int:
        if value.variable_stride_per_key():
            raise DataError("a KeyedJaggedTensor has a variable batch size per key; give every key the same "
                            "batch size")
        return int(value.stride())

    def canonical(self, value: Any) -> Any:
        """Keys, values, lengths and weights only: a KJT built from offsets, or with cached offsets, serves alike."""
        keys, lengths, values = value.keys(), value.lengths(), value.values()
        negative = lengths.numel() > 0 and int(lengths.min()) < 0
        if not keys or lengths.numel() % len(keys) or int(lengths.sum()) != values.numel() or negative:
            raise DataError(f"a KeyedJaggedTensor has {lengths.numel()} lengths summing to {int(lengths.sum())} for "
                            f"{len(keys)} keys and {values.numel()} values; give each key one length per sample, "
                            "summing to the number of values")
        weights = value.weights_or_none()
        if weights is not None and weights.numel() != values.numel():
            raise DataError(f"a KeyedJaggedTensor has {weights.numel()} weights for {values.numel()} values; give one "
                            "weight per value")
        return KeyedJaggedTensor(keys=value.keys(), values=value.values(), lengths=value.lengths(),
                                 weights=value.weights_or_none())


class BatchLeaf(Leaf):
    """``torchrec.datasets.utils.Batch`` (dense_features, sparse_features KJT, labels) as one input."""

    def matches(self, value: Any) -> bool:
        return isinstance(value, TorchRecBatch)

    def cat(self, values: Sequence[Any]) -> Any:
        dense, sparse, labels = tree_cat([(v.dense_features, v.sparse_features, v.labels) for v in values])
        return TorchRecBatch(dense, sparse, labels)

    def take(self, value: Any, index: Tensor) -> Any:
        dense, sparse, labels = tree_take((value.dense_features, value.sparse_features, value.labels), index)
        return TorchRecBatch(dense, sparse, labels)

    def length(self, value: Any) -> int:
        return int(value.dense_features.shape[0])


def _register() -> None:
    for leaf in (KJTLeaf(), BatchLeaf()):
        if not any(type(known) is type(leaf) for known in LEAVES):
            LEAVES.append(leaf)


_register()
