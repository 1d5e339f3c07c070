"""TorchRec interop: score, prune and export the tables of a torchrec DLRM (EmbeddingBagCollection + KJT).

Works on models of torchrec's DLRM family (``torchrec.models.dlrm.DLRM`` and subclasses): a
``dense_arch`` (B, n_dense) → (B, D), a ``sparse_arch`` whose ``embedding_bag_collection`` pools one
(B, D) vector per feature of a ``KeyedJaggedTensor``, an ``inter_arch`` and an ``over_arch``. The
model's fields are then ``("dense", *features)`` and

- :func:`field_scores`: SHARK F-Permutation (any sharkrec importance method) through
  :class:`TorchRecFields`, which exposes the field vectors (B, F, D) and logits of the torchrec model;
- :func:`prune_tables` / :func:`prune_to_memory`: a copy of the model whose EBC holds only the kept
  tables; removed features are answered by their mean field vector (the constant SHARK prunes to).
  Both run on the model's :class:`~sharkrec.model.wrapped.FieldModel` (:func:`field_model`): the removal is
  :func:`sharkrec.prune.plan.remove_fields` and the search is Algorithm 1, :func:`sharkrec.prune.loop.prune`
  (fine-tune and T_accuracy stop included); :func:`from_field_model` turns the result back into a torchrec DLRM;
- :func:`to_sharkrec` / :func:`export_artifact`: the same network as a sharkrec DLRM (identical logits),
  tables in F-Quantization tiers, written as a sharkrec serving artifact.

Data is given as torchrec batches (``dense_features``, ``sparse_features`` KJT, ``labels``) or as an
:class:`~sharkrec.data.dataset.EncodedSplit` (:func:`split_from_torchrec` converts). Install with the
``sharkrec[torchrec]`` extra (see README, "TorchRec").
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.data.dataset import EncodedSplit, SparseColumn
from sharkrec.errors import ConfigError, DataError
from sharkrec.importance.base import FieldImportance, field_importance
from sharkrec.model.embedding import layers, replace_storage, storage

with contextlib.suppress(ImportError):  # registers TorchRec's lookup kinds and input leaves (KJT, Batch)
    from sharkrec.interop import torchrec_lookups as _lookups  # noqa: F401

INSTALL = ("pip install --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0 && pip install 'sharkrec[torchrec]' "
           "(see README, TorchRec)")


def _torchrec() -> Any:
    try:
        import torchrec
    except ImportError:
        raise ConfigError(f"TorchRec interop needs torchrec; install it with: {INSTALL}") from None
    return torchrec


def split_from_torchrec(batches: Iterable[Any]) -> EncodedSplit:
    """One :class:`EncodedSplit` from torchrec batches (``dense_features`` (B, n), ``sparse_features`` KJT,
    ``labels`` (B,) or (B, T)); features keep the first batch's key order, bags keep their ids."""
    dense, labels = [], []
    columns: dict[str, list[tuple[Tensor, Tensor]]] = {}
    keys: list[str] | None = None
    for batch in batches:
        kjt = batch.sparse_features
        if keys is None:
            keys = list(kjt.keys())
        elif list(kjt.keys()) != keys:
            raise DataError(f"batch features {list(kjt.keys())} differ from the first batch's {keys}; "
                            "give every batch the same KJT keys")
        for key, jagged in kjt.to_dict().items():
            columns.setdefault(key, []).append((jagged.values().long(), jagged.lengths().long()))
        dense.append(batch.dense_features.detach().float())
        labels.append(batch.labels.detach().float().reshape(len(batch.dense_features), -1))
    if keys is None:
        raise DataError("no batches given; pass at least one torchrec Batch")
    sparse = []
    for key in keys:
        values = torch.cat([v for v, _ in columns[key]])
        lengths = torch.cat([n for _, n in columns[key]])
        if bool((lengths == 1).all()):
            sparse.append(SparseColumn(values.numpy()))
        else:
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
            torch.cumsum(lengths, 0, out=offsets[1:])
            sparse.append(SparseColumn(values.numpy(), offsets.numpy()))
    return EncodedSplit(torch.cat(dense).numpy(), sparse, torch.cat(labels).numpy())


class TorchRecFields(nn.Module):
    """A torchrec DLRM seen as sharkrec fields: ``field_vectors`` (B, F, D) and ``logits_from_fields`` (B, T).

    Field 0 is ``"dense"`` (``dense_arch`` output), then one field per sparse feature in the sparse
    arch's order. ``forward(batch)`` equals ``model(batch.dense, kjt)`` for the same inputs.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        parts = ("dense_arch", "sparse_arch", "inter_arch", "over_arch")
        missing = [name for name in parts if not hasattr(model, name)]
        if missing:
            raise ConfigError(f"{type(model).__name__} has no {', '.join(missing)}; TorchRec interop takes models of "
                              "torchrec's DLRM family (torchrec.models.dlrm.DLRM)")
        self.model = model
        self.features = tuple(model.sparse_arch.sparse_feature_names)
        self.field_names = ("dense", *self.features)
        self.task_names = tuple(f"task{t}" for t in range(self._num_outputs())) if self._num_outputs() > 1 \
            else ("label",)

    def _num_outputs(self) -> int:
        linears = [m for m in self.model.over_arch.modules() if isinstance(m, nn.Linear)]
        return int(linears[-1].out_features)

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def kjt(self, sparse: Sequence[FieldIds]) -> Any:
        """A ``KeyedJaggedTensor`` (keys = the model's features) of one :class:`FieldIds` per feature."""
        torchrec = _torchrec()
        if len(sparse) != len(self.features):
            raise DataError(f"the batch has {len(sparse)} sparse fields but the model has {len(self.features)} "
                            f"features ({', '.join(self.features)}); give one per feature, in that order")
        lengths = [torch.ones(ids.values.shape[0], dtype=torch.int64) if ids.offsets is None
                   else ids.offsets[1:] - ids.offsets[:-1] for ids in sparse]
        weights = None
        if any(ids.weights is not None for ids in sparse):  # a weighted EBC: ids without weights weigh 1
            weights = torch.cat([torch.ones(ids.values.shape[0]) if ids.weights is None else ids.weights.float()
                                 for ids in sparse])
        return torchrec.KeyedJaggedTensor(keys=list(self.features), values=torch.cat([ids.values for ids in sparse]),
                                          lengths=torch.cat(lengths), weights=weights)

    def field_vectors(self, batch: Batch) -> Tensor:
        """(B, F, D): the dense arch's output, then the pooled vector of every feature."""
        dense = self.model.dense_arch(batch.dense).unsqueeze(1)  # (B, 1, D)
        return torch.cat([dense, self.model.sparse_arch(self.kjt(batch.sparse))], dim=1)

    def logits_from_fields(self, vectors: Tensor, batch: Any = None) -> Tensor:
        """(B, F, D) field vectors → (B, T) logits (interaction and over arch of the torchrec model)."""
        interaction = self.model.inter_arch(dense_features=vectors[:, 0], sparse_features=vectors[:, 1:])
        return self.model.over_arch(interaction)

    def forward(self, batch: Batch) -> Tensor:
        return self.logits_from_fields(self.field_vectors(batch))


def _as_split(data: EncodedSplit | Iterable[Any]) -> EncodedSplit:
    return data if isinstance(data, EncodedSplit) else split_from_torchrec(data)


def field_scores(model: Any, data: EncodedSplit | Iterable[Any], method: str = "default",
                 **options: Any) -> FieldImportance:
    """F-Permutation (default ``taylor2``) or another sharkrec method's scores of a torchrec DLRM's fields.

    ``data``: torchrec batches or an :class:`EncodedSplit`; ``options`` as for
    :func:`sharkrec.importance.field_importance` (``batch_size``, ``max_samples``, ``seed`` ...).
    """
    fields = TorchRecFields(model)
    return field_importance(cast(Any, fields), _as_split(data), method, **options)


def _tables(model: Any) -> list[Any]:
    ebc = model.sparse_arch.embedding_bag_collection
    configs = list(ebc.embedding_bag_configs())
    torchrec = _torchrec()
    for config in configs:
        if config.pooling != torchrec.PoolingType.SUM:
            raise ConfigError(f"table {config.name!r} pools with {config.pooling.name}; sharkrec fields sum their "
                              "bags, so only SUM pooling converts")
    return configs


def table_bytes(model: Any) -> int:
    """Bytes of the model's embedding tables plus the constant vectors of removed features."""
    sparse_arch = model.sparse_arch
    held = sum(p.numel() * p.element_size() for p in sparse_arch.embedding_bag_collection.parameters())
    constants = getattr(sparse_arch, "constants", None)
    return int(held + (0 if constants is None else constants.numel() * constants.element_size()))


class PrunedSparseArch(nn.Module):
    """torchrec's SparseArch over the kept tables only; a removed feature's vector is a constant (D,).

    ``forward(kjt)`` → (B, F, D) in the original feature order, like the SparseArch it replaces.
    """

    def __init__(self, feature_names: Sequence[str], embedding_bag_collection: nn.Module,
                 constants: Mapping[str, Tensor]) -> None:
        super().__init__()
        self._sparse_feature_names = list(feature_names)
        self.embedding_bag_collection = embedding_bag_collection
        self.removed = tuple(constants)
        self.constants: Tensor
        dim = int(next(iter(constants.values())).numel()) if constants else 0
        self.register_buffer("constants", torch.stack([c.float().reshape(-1) for c in constants.values()])
                             if constants else torch.zeros(0, dim))

    @property
    def sparse_feature_names(self) -> list[str]:
        return self._sparse_feature_names

    def forward(self, features: Any) -> Tensor:
        torchrec = _torchrec()
        jagged = features.to_dict()
        kept_keys = [k for k in self._sparse_feature_names if k not in self.removed]
        batch = int(features.stride())
        pooled: dict[str, Tensor] = {}
        if kept_keys:
            kept = torchrec.KeyedJaggedTensor.from_jt_dict({k: jagged[k] for k in kept_keys})
            pooled = self.embedding_bag_collection(kept).to_dict()
        for r, name in enumerate(self.removed):
            pooled[name] = self.constants[r].expand(batch, -1)
        return torch.stack([pooled[name] for name in self._sparse_feature_names], dim=1)  # (B, F, D)


def from_torchrec_batches(model: Any, batches: Iterable[Any]) -> Any:
    """A :class:`~sharkrec.data.user.UserSplit` for a :class:`~sharkrec.model.wrapped.FieldModel` whose network is
    called ``network(dense_features, sparse_features)`` (torchrec's DLRM family), from torchrec ``Batch`` objects."""
    from sharkrec.data.user import from_batches

    return from_batches(model, batches, inputs=lambda b: (b.dense_features, b.sparse_features),
                        labels=lambda b: b.labels)


def _items(model: Any, data: EncodedSplit | Iterable[Any], batch_size: int) -> list[tuple[Any, Any]]:
    """``((dense (B, n), KJT), labels)`` per batch of torchrec batches or of an :class:`EncodedSplit` (whose
    columns follow the sparse arch's features)."""
    if isinstance(data, EncodedSplit):
        view = TorchRecFields(model)
        return [((b.dense, view.kjt(b.sparse)), b.labels) for b in data.batches(batch_size)]
    return [((b.dense_features, b.sparse_features), b.labels) for b in data]


def field_model(model: Any, data: EncodedSplit | Iterable[Any], *, batch_size: int = 4096) -> tuple[Any, Any]:
    """(a :class:`~sharkrec.model.wrapped.FieldModel` of the torchrec DLRM, a
    :class:`~sharkrec.data.user.UserSplit` of ``data``): the DLRM on sharkrec's field path, one field per EBC
    feature (the dense arch is no field: it owns no table)."""
    from sharkrec.data.user import from_batches
    from sharkrec.model.fieldmap import find_fields
    from sharkrec.model.wrapped import FieldModel

    items = _items(model, data, batch_size)
    if not items:
        raise DataError("no batches given; pass at least one torchrec Batch")
    wrapped = FieldModel.wrap(model, find_fields(model, items[0][0]), tasks=TorchRecFields(model).task_names)
    return wrapped, from_batches(wrapped, items)


def _user_split(model: Any, wrapped: Any, data: EncodedSplit | Iterable[Any], batch_size: int) -> Any:
    from sharkrec.data.user import from_batches

    return from_batches(wrapped, _items(model, data, batch_size))


def from_field_model(model: Any, pruned: Any) -> Any:
    """The torchrec DLRM ``model`` rebuilt from its (pruned, fine-tuned) FieldModel ``pruned``: the network's
    weights, an EBC of the kept tables and a :class:`PrunedSparseArch` answering removed features with their
    constants E[v_i]. ``model`` is not changed."""

    torchrec = _torchrec()
    sparse_arch = model.sparse_arch
    already = tuple(getattr(sparse_arch, "removed", ()))
    constants = dict(zip(already, sparse_arch.constants, strict=True)) if already else {}
    embedding = pruned.embedding
    kept = storage(embedding)
    for layer in layers(embedding):
        constants.update(layer.constant_vectors())
    old = sparse_arch.embedding_bag_collection
    configs = [copy.deepcopy(c) for c in old.embedding_bag_configs() if c.feature_names[0] not in constants]
    ebc = torchrec.EmbeddingBagCollection(tables=configs, is_weighted=old.is_weighted(), device=torch.device("cpu"))
    with torch.no_grad():
        for config in configs:
            ebc.embedding_bags[config.name].weight.copy_(cast(Any, kept).table(config.feature_names[0]))
    network = copy.deepcopy(pruned.network)  # the dense weights (fine-tuned by Algorithm 1)
    network.sparse_arch = PrunedSparseArch(list(sparse_arch.sparse_feature_names), ebc, constants)
    return network.train(model.training)


def prune_tables(model: Any, remove: Sequence[str], data: EncodedSplit | Iterable[Any],
                 batch_size: int = 4096) -> Any:
    """A copy of ``model`` without the tables of the ``remove`` features, each answered by its mean vector
    E[v_i] over ``data`` (:func:`sharkrec.prune.plan.remove_fields` on the model's FieldModel)."""
    from sharkrec.prune.plan import remove_fields

    features = list(model.sparse_arch.sparse_feature_names)
    already = tuple(getattr(model.sparse_arch, "removed", ()))
    unknown = [name for name in remove if name not in features or name in already]
    if unknown:
        raise ConfigError(f"cannot remove {unknown}: not a kept feature; kept features: "
                          f"{', '.join(f for f in features if f not in already)}")
    wrapped, split = field_model(model, data, batch_size=batch_size)
    if len(split) == 0:
        raise DataError("no samples to compute the removed features' mean vectors; give data")
    return from_field_model(model, remove_fields(wrapped, list(remove), split, batch_size))


def prune_to_memory(model: Any, data: EncodedSplit | Iterable[Any], target_memory: float, *,
                    method: str = "default", keep: Sequence[str] = (), batch_size: int = 4096, seed: int = 0,
                    train: EncodedSplit | Iterable[Any] | None = None, test: EncodedSplit | Iterable[Any] | None = None,
                    **settings: Any) -> tuple[Any, Any]:
    """SHARK Algorithm 1 (:func:`sharkrec.prune.loop.prune`) on a torchrec DLRM: score, remove the weakest
    table, fine-tune on a support sample, stop at ``target_memory`` or T_accuracy.

    Args:
        data: batches the fields are scored on and E[v_i] measured on (the loop's valid split).
        target_memory: share of table bytes (constants included) to keep at least, in (0, 1).
        train: the fine-tune's support samples are drawn from it (default ``data``).
        test: the T_accuracy stop reads its AUC (default ``data``).
        settings: more :class:`~sharkrec.prune.loop.PruneConfig` fields (``t_accuracy``,
            ``fine_tune_fraction`` (0: no fine-tune), ``fields_per_step`` ...).

    Returns:
        the pruned torchrec model (see :func:`from_field_model`) and the loop's
        :class:`~sharkrec.prune.loop.PruneResult` (plan, history, why it stopped).
    """
    from sharkrec.data.user import UserData
    from sharkrec.prune.loop import PruneConfig, prune

    config = PruneConfig(target_memory=target_memory, keep=tuple(keep), batch_size=batch_size, seed=seed, **settings)
    wrapped, valid = field_model(model, data, batch_size=batch_size)
    splits = {name: valid if given is None else _user_split(model, wrapped, given, batch_size)
              for name, given in (("train", train), ("test", test))}
    user = UserData(wrapped, splits["train"], valid, splits["test"])
    result = prune(wrapped, cast(Any, user), method, config=config)
    return from_field_model(model, result.model), result


def to_sharkrec(model: Any, data: EncodedSplit | Iterable[Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(sharkrec DLRM with the same logits, its Schema, identity vocabularies with counts from ``data``).

    Needs torchrec's plain DLRM (dot ``InteractionArch``, sum-pooled tables of one dim).
    """
    from sharkrec.data.schema import FieldKind, FieldSpec, Schema
    from sharkrec.data.vocab import Vocabulary
    from sharkrec.model.dlrm import DLRM, DLRMConfig
    from sharkrec.model.embedding import FloatEmbedding
    from sharkrec.prune.embedding import PrunedEmbedding

    _torchrec()  # a clear error when torchrec is missing
    from torchrec.models.dlrm import InteractionArch

    if not isinstance(model.inter_arch, InteractionArch):
        raise ConfigError(f"the model's interaction is {type(model.inter_arch).__name__}; only torchrec's DLRM with "
                          "the dot InteractionArch converts to a sharkrec DLRM")
    split = _as_split(data)
    fields = TorchRecFields(model)
    sparse_arch = model.sparse_arch
    removed = tuple(getattr(sparse_arch, "removed", ()))
    table_of = {f: c for c in _tables(model) for f in c.feature_names}
    bags = sparse_arch.embedding_bag_collection.embedding_bags
    dims = {int(c.embedding_dim) for c in table_of.values()}
    if len(dims) != 1:
        raise ConfigError(f"tables have dims {sorted(dims)}; a DLRM needs one embedding dim")
    dim = dims.pop()
    field_rows = {f: int(table_of[f].num_embeddings) if f in table_of else 1 for f in fields.features}
    dense_linears = [m for m in model.dense_arch.modules() if isinstance(m, nn.Linear)]
    over_linears = [m for m in model.over_arch.modules() if isinstance(m, nn.Linear)]
    config = DLRMConfig(num_dense=dense_linears[0].in_features, field_rows=tuple(field_rows.items()),
                        embedding_dim=dim, bottom_mlp=tuple(m.out_features for m in dense_linears[:-1]),
                        top_mlp=tuple(m.out_features for m in over_linears[:-1]), tasks=fields.task_names)
    network = DLRM(config)
    kept = [f for f in fields.features if f not in removed]
    tables = FloatEmbedding.from_tables({f: bags[table_of[f].name].weight.detach() for f in kept})
    if removed:
        constants = {name: sparse_arch.constants[r] for r, name in enumerate(removed)}
        network = network.with_embedding(PrunedEmbedding(fields.features, tables, constants))
    else:
        network = network.with_embedding(tables)
    assert network.bottom is not None  # the torchrec DLRM always has dense inputs
    ours = [m for m in [*network.bottom.modules(), *network.head.modules()] if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for target, source in zip(ours, dense_linears + over_linears, strict=True):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
    specs = [FieldSpec(f, FieldKind.SPARSE, separator=None if f in _single_hot(split, fields.features) else "|")
             for f in fields.features]
    specs += [FieldSpec(f"dense{i}", FieldKind.DENSE) for i in range(config.num_dense)]
    specs += [FieldSpec(t, FieldKind.LABEL) for t in fields.task_names]
    vocabularies = {}
    positive = split.labels.numpy().max(axis=1) > 0.5
    for i, name in enumerate(fields.features):
        column = split.column(i)
        sample_of = np.arange(len(split)) if column.offsets is None else np.repeat(
            np.arange(len(split)), np.diff(column.offsets))
        rows = field_rows[name]
        ids = np.clip(column.values, 0, rows - 1)
        counts = np.bincount(ids, minlength=rows)
        vocabularies[name] = Vocabulary.identity(name, counts, np.bincount(ids[positive[sample_of]], minlength=rows))
    return network.eval(), Schema(tuple(specs), name="torchrec"), vocabularies


def _single_hot(split: EncodedSplit, features: Sequence[str]) -> set[str]:
    return {name for i, name in enumerate(features) if split.column(i).offsets is None}


def export_artifact(model: Any, data: EncodedSplit | Iterable[Any], out: Any, *, memory_budget: float = 0.5,
                    alpha: float = 2.0, use_int4: bool = False) -> dict[str, Any]:
    """Write the torchrec DLRM as a sharkrec artifact with its tables in F-Quantization tiers; returns the manifest.

    Row priority is Eq. 7's bracket summed over ``data`` (α·positives + negatives per row, no decay);
    the hottest rows get fp32/fp16 and the rest int8 (int4 too with ``use_int4``) so that the table
    bytes are ≤ ``memory_budget`` x fp32 (Eq. 8 with budget-derived thresholds).
    """
    from sharkrec.export.artifact import save_artifact
    from sharkrec.model.embedding import FloatEmbedding
    from sharkrec.quant.embedding import MixedPrecisionEmbedding
    from sharkrec.quant.priority import FQuantPolicy, tier_counts_for_budget, tiers_by_rank

    network, schema, vocabularies = to_sharkrec(model, data)
    embedding = network.embedding
    kept = storage(embedding)
    policy = FQuantPolicy(memory_budget=memory_budget, alpha=alpha, use_int4=use_int4)
    rows = kept.num_rows()
    priorities = [torch.from_numpy(alpha * vocabularies[name].positive_counts_
                                   + (vocabularies[name].counts_ - vocabularies[name].positive_counts_)).float()
                  for name in kept.field_names]
    counts = tier_counts_for_budget(sum(rows.values()), kept.embedding_dim, policy)
    plan = dict(zip(kept.field_names, tiers_by_rank(priorities, counts), strict=True))
    mixed = MixedPrecisionEmbedding.from_float(cast(FloatEmbedding, kept), plan)
    layer: Any = replace_storage(embedding, mixed)  # the same pruning around the quantized rows
    return save_artifact(network.with_embedding(layer), schema, vocabularies, out)
