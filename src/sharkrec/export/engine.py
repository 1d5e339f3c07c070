"""Serving engine: lookups that read every row in its stored precision, and the inference model.

Ids arrive as *slots* (see :mod:`sharkrec.export.tables`): per field the fp32 rows first, then
fp16, int8, int4, each hottest first. A tier is a slot range, so routing needs no remap table.

Kernels. ``kernel="fused"`` (the default) packs every kept field into shared pools
(:mod:`sharkrec.export.fused`) and reads all single-hot fields in one pass, written straight into
the network's (B, F, D) matrix, and each multi-hot field's bags in one more pass (a C++ kernel, or
the same layout read with PyTorch ops where no compiler is available).
``kernel="fbgemm"`` looks every field up on its own:

=========  ===========================================================================
fp32       ``F.embedding`` / ``F.embedding_bag`` on the (n32, D) float32 pool
fp16       the same ops on the (n16, D) float16 pool (fp16 output, cast when combined)
int8       ``quantized::embedding_bag_byte_rowwise_offsets`` on rows packed as FBGEMM's
           byte layout: D uint8 codes, then float32 scale and float32 bias. Our symmetric
           row ``scale · q`` (q in [-127, 127]) is stored as ``u = q + 128``,
           ``bias = -128 · scale``; no requantization, values equal up to float rounding.
int4       ``quantized::embedding_bag_4bit_rowwise_offsets`` (D even): our nibbles ``q + 8``
           with fp16 scale and bias ``-8 · scale`` (the fp16 scale rounds: ≤ 5e-4 relative);
           odd D falls back to dequantize-then-gather.
=========  ===========================================================================

Routing, single-hot field: the tier with most training traffic (usually fp32, the hot rows) is
looked up densely for the whole batch with clamped local ids; the minority of ids outside its
range is found with one mask + ``nonzero`` and patched with ``index_copy_`` (each other tier
looked up with clamped ids on that small subset, selected with ``torch.where``). Multi-hot
field: each tier's bag is computed with clamped ids and a 0/1 per-sample weight, and summed; a
batch's per-id bag weights (``FieldIds.weights``, e.g. 1 / length for mean bags) multiply those.
``kernel="reference"`` dequantizes every pool into one fp32 table and gathers from it (pure
PyTorch; the tests check both agree).

A hashed embedding (a store that computes its rows: :mod:`sharkrec.export.layer`) is served by the
rebuilt layer itself, under every kernel: its fields' slots are vocabulary rows, the ids it hashes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.export.fused import PackedPools, extension
from sharkrec.export.tables import FieldTables, TierPool
from sharkrec.model.dlrm import DLRM
from sharkrec.model.embedding import FieldEmbedding
from sharkrec.quant import codec
from sharkrec.quant.codec import Precision

KERNELS = ("fused", "fbgemm", "reference")
_QUANTIZED = torch.ops.quantized


def pack_int8(codes: Tensor, scale: Tensor) -> Tensor:
    """(n, D) int8 codes + (n,) scales → (n, D + 8) uint8 in FBGEMM's byte layout (codes, f32 scale, f32 bias)."""
    unsigned = (codes.to(torch.int16) + 128).to(torch.uint8)  # (n, D)
    words = torch.stack([scale.float(), -128.0 * scale.float()], dim=1).contiguous()  # (n, 2) float32
    return torch.cat([unsigned, words.view(torch.uint8)], dim=1).contiguous()


def pack_int4(packed: Tensor, scale: Tensor) -> Tensor:
    """(n, D/2) uint8 nibbles (q + 8) + (n,) scales → (n, D/2 + 4) uint8 in FBGEMM's 4-bit layout."""
    half_scale = scale.to(torch.float16)
    words = torch.stack([half_scale, -8.0 * half_scale], dim=1).contiguous()  # (n, 2) float16
    return torch.cat([packed, words.view(torch.uint8)], dim=1).contiguous()


def dequantize(pool: TierPool, dim: int) -> Tensor:
    """(n, D) float32 values of a pool (the pure-PyTorch reference)."""
    if pool.precision is Precision.FP32:
        return pool.payload.float()
    if pool.precision is Precision.FP16:
        return pool.payload.float()
    assert pool.scale is not None
    if pool.precision is Precision.INT8:
        return codec.dequantize_symmetric(pool.payload, pool.scale)
    return codec.dequantize_int4(pool.payload, pool.scale, dim)


class _TierLookup:
    """One tier of one field, held in the layout its kernel reads; ``bag`` pools (nnz,) local ids."""

    def __init__(self, pool: TierPool, start: int, dim: int) -> None:
        self.precision = pool.precision
        self.start, self.end, self.last = start, start + pool.rows, pool.rows - 1
        self.traffic = pool.traffic
        assert pool.scale is not None or pool.precision in (Precision.FP32, Precision.FP16)
        if pool.precision in (Precision.FP32, Precision.FP16):
            self.table, self.op = pool.payload.contiguous(), None
        elif pool.precision is Precision.INT8:
            self.table, self.op = pack_int8(pool.payload, pool.scale), _QUANTIZED.embedding_bag_byte_rowwise_offsets  # type: ignore[arg-type]
        elif dim % 2 == 0:
            self.table, self.op = pack_int4(pool.payload, pool.scale), _QUANTIZED.embedding_bag_4bit_rowwise_offsets  # type: ignore[arg-type]
        else:  # FBGEMM's 4-bit op needs an even D: keep fp32 values (no speed, same numbers)
            self.table, self.op = dequantize(pool, dim), None

    @property
    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size()

    def local(self, slots: Tensor) -> Tensor:
        """Slots → ids in this pool, clamped into range (ids of other tiers land on a valid row)."""
        return (slots - self.start).clamp_(0, self.last)

    def gather(self, slots: Tensor) -> Tensor:
        """(N, D) rows of (N,) slots (out-of-tier slots give some valid row; the caller masks them)."""
        local = self.local(slots)
        if self.op is None:
            return F.embedding(local, self.table)
        offsets = torch.arange(local.shape[0], dtype=local.dtype)
        return self.op(self.table, local, offsets, False, 0, False, None, None, False)

    def bag(self, slots: Tensor, offsets: Tensor, weights: Tensor | None) -> Tensor:
        """(B, D) sums of bags; ``offsets`` (B + 1,); ``weights`` (nnz,) 0/1 selects this tier's ids."""
        local = self.local(slots)
        if self.op is None:
            if weights is not None:
                weights = weights.to(self.table.dtype)
            return F.embedding_bag(local, self.table, offsets, mode="sum", per_sample_weights=weights,
                                   include_last_offset=True)
        if weights is not None and self.precision is Precision.INT4:
            weights = weights.to(torch.float16)
        return self.op(self.table, local, offsets, False, 0, False, weights, None, True)


class _FieldLookup:
    """Routing over the tiers of one field (see the module docstring)."""

    def __init__(self, tables: FieldTables, dim: int) -> None:
        self.name = tables.name
        self.tiers = [_TierLookup(pool, start, dim) for pool, (_, start, _) in zip(tables.tiers, tables.bounds(),
                                                                                   strict=True)]
        self.rows = tables.rows
        main = max(range(len(self.tiers)),
                   key=lambda k: (self.tiers[k].traffic, self.tiers[k].end - self.tiers[k].start))
        self.main = self.tiers[main]
        self.others = [tier for k, tier in enumerate(self.tiers) if k != main]

    def single(self, slots: Tensor) -> Tensor:
        """(B, D) rows of (B,) slots."""
        out = self.main.gather(slots).float()
        if not self.others:
            return out
        outside = ((slots < self.main.start) | (slots >= self.main.end)).nonzero().squeeze(1)  # (M,)
        if outside.numel():
            cold = slots.index_select(0, outside)
            patch = self.others[0].gather(cold).float()
            for tier in self.others[1:]:
                inside = ((cold >= tier.start) & (cold < tier.end)).unsqueeze(1)
                patch = torch.where(inside, tier.gather(cold).float(), patch)
            out.index_copy_(0, outside, patch)
        return out

    def bags(self, slots: Tensor, offsets: Tensor, weights: Tensor | None = None) -> Tensor:
        """(B, D) sums of the bags of (nnz,) slots cut by (B + 1,) offsets, each id weighed by ``weights``
        (nnz,) when given."""
        if len(self.tiers) == 1:
            return self.tiers[0].bag(slots, offsets, None if weights is None else weights.float()).float()
        total: Tensor | None = None
        for tier in self.tiers:
            selected = ((slots >= tier.start) & (slots < tier.end)).float()
            part = tier.bag(slots, offsets, selected if weights is None else selected * weights.float()).float()
            total = part if total is None else total + part
        assert total is not None
        return total


class ServingEmbedding(FieldEmbedding):
    """Read-only embedding over tier-ordered slots; removed (pruned) fields give their constant vector.

    Args:
        field_names: every sparse field of the model, in batch order.
        tables: the kept fields' :class:`FieldTables`.
        constants: ``{removed field: (D,) float32}``.
        embedding_dim: D.
        kernel: ``"fused"`` (one pass over packed pools), ``"fbgemm"`` (per-field stored-precision
            kernels) or ``"reference"`` (dequantize, then gather).
        check_ids: raise :class:`DataError` for slots outside a field's range (one min/max per field;
            the fused kernel always checks, in its pass).
        multi_hot: kept fields whose ids come in bags (summed by the bag kernel under ``fused``).
        pools: the kept fields' :class:`PackedPools`, already built (``fused`` only; e.g. mapped from a
            serving cache, :mod:`sharkrec.export.shared`); default: built from ``tables``.
        layer: the store that computes the rows of the kept fields whose tables have no tiers (a hashed
            layer, frozen), in its field order; those fields' slots are the ids it takes.

    Shapes: ``forward`` takes one :class:`FieldIds` of slots per field and returns (B, F, D) float32.
    """

    kind: ClassVar[str] = ""  # never saved as a model file; artifacts rebuild it

    def __init__(self, field_names: Sequence[str], tables: Sequence[FieldTables], constants: Mapping[str, Tensor],
                 embedding_dim: int, *, kernel: str = "fused", check_ids: bool = True,
                 multi_hot: Sequence[str] = (), pools: PackedPools | None = None,
                 layer: FieldEmbedding | None = None) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ConfigError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
        if pools is not None and kernel != "fused":
            raise ConfigError(f"packed pools are read by the fused kernel only, not {kernel!r}")
        self.field_names = tuple(field_names)
        self.embedding_dim = int(embedding_dim)
        self.kernel = kernel
        self.check_ids = check_ids
        self.tables = {t.name: t for t in tables}
        self.constants = {name: torch.as_tensor(v, dtype=torch.float32).reshape(self.embedding_dim)
                          for name, v in constants.items()}
        unknown = sorted((set(self.tables) | set(self.constants)) - set(self.field_names))
        missing = [n for n in self.field_names if n not in self.tables and n not in self.constants]
        # (the packed fields' tables move into the shared pools below; ``_rows`` keeps their sizes)
        if unknown or missing:
            raise ConfigError(f"serving tables do not match the fields: unknown {unknown}, missing {missing}")
        self._lookups: dict[str, _FieldLookup] = {}
        self._reference: dict[str, Tensor] = {}
        self._packed: PackedPools | None = None  # the single-hot fields' view of the pools
        self._pools: PackedPools | None = None  # every kept field (multi-hot ones read with ``bag``)
        self._packed_positions: Tensor | None = None  # (K,) positions of the packed fields in the batch
        self._packed_names: frozenset[str] = frozenset()
        computed = [name for name in self.field_names if name in self.tables and not self.tables[name].tiers]
        if computed != list(() if layer is None else layer.field_names):
            raise ConfigError(f"fields {computed} have no tiers but the layer computing rows serves "
                              f"{[] if layer is None else list(layer.field_names)}")
        if layer is not None:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
            layer.eval()
        # held outside the module tree: the network's state_dict stays its dense weights (loaded strictly)
        self.layer: FieldEmbedding | None
        object.__setattr__(self, "layer", layer)
        self._layer_positions = [self.field_names.index(name) for name in computed]
        self._layer_names = frozenset(computed)
        for name in computed:
            self.tables.pop(name)
        self._rows = {name: table.rows for name, table in self.tables.items()}
        if layer is not None:
            self._rows.update(layer.num_rows())
        if kernel == "fused" and self.tables:
            kept = [name for name in self.field_names if name in self.tables]
            single = [name for name in kept if name not in set(multi_hot)]
            packed = [self.tables.pop(name) for name in kept]
            if pools is not None and pools.names != tuple(kept):
                raise ConfigError(f"the given pools hold fields {list(pools.names)}, not the kept fields {kept}")
            self._pools = pools if pools is not None else PackedPools.build(packed, self.embedding_dim)
            self._packed = self._pools.select(single)
            self._packed_positions = torch.tensor([self.field_names.index(n) for n in single], dtype=torch.int64)
            self._packed_names = frozenset(single)  # their tables now live only in the packed pools
        for name, field in self.tables.items():
            if kernel in ("fbgemm", "fused"):
                self._lookups[name] = _FieldLookup(field, self.embedding_dim)
            else:
                self._reference[name] = torch.cat([dequantize(pool, self.embedding_dim) for pool in field.tiers])

    def forward(self, sparse: Sequence[FieldIds], out: Tensor | None = None) -> Tensor:
        """(B, F, D) float32 field vectors for one :class:`FieldIds` of slots per field.

        ``out``: a (B, F, D) float32 tensor (or view, last dimension contiguous) to fill and return.
        """
        if len(sparse) != len(self.field_names):
            raise DataError(f"the batch has {len(sparse)} sparse fields but the model has {len(self.field_names)} "
                            f"({', '.join(self.field_names)}); build the batch with the artifact's schema")
        batch_size = sparse[0].batch_size() if sparse else 0
        if out is None:
            out = torch.empty(batch_size, len(self.field_names), self.embedding_dim)  # (B, F, D)
        if self.layer is not None:
            out[:, self._layer_positions] = self.layer([sparse[p] for p in self._layer_positions])  # (B, F', D)
        if self._packed is not None and len(self._packed_names) == len(self.field_names):
            self._packed.gather(self._packed_slots(sparse), out)  # every field in one pass, written in place
            return out
        if self._packed is not None and self._packed_names:
            assert self._packed_positions is not None
            self._packed.gather(self._packed_slots(sparse), out, self._packed_positions)  # in place, by column
        for k, (name, ids) in enumerate(zip(self.field_names, sparse, strict=True)):
            if name in self._packed_names or name in self._layer_names:
                continue
            if name in self.constants:
                out[:, k] = self.constants[name]
                continue
            if self._pools is not None:  # a multi-hot field of the fused kernel
                if ids.offsets is None:
                    raise DataError(f"field {name!r} takes bags of values in this artifact but the batch has one "
                                    "value per sample without offsets; encode raw values with ServingModel.encode")
                self._pools.bag(ids.values, ids.offsets, self._pools.names.index(name), out=out[:, k],
                                weights=ids.weights)
                continue
            slots = ids.values.long()
            if self.check_ids and slots.numel():
                low, high = torch.aminmax(slots)
                if int(low) < 0 or int(high) >= self._rows[name]:
                    raise DataError(f"field {name!r} has slots outside 0..{self._rows[name] - 1}; "
                                    "encode raw values with the artifact's vocabularies (ServingModel.encode)")
            out[:, k] = self._vectors(name, slots, ids.offsets, ids.weights)
        return out

    @property
    def backend(self) -> str:
        """What reads the rows: ``c++`` (fused kernel), ``pytorch`` (fused layout, no compiler), or the kernel name."""
        if self.layer is not None:  # the hashed layers' fused lookups (sharkrec.hashed.kernels) when built
            from sharkrec.hashed import kernels as hashed_kernels

            fused = self.layer.kind in hashed_kernels.KINDS and hashed_kernels.extension() is not None
            return f"{'c++' if fused else 'pytorch'} {self.layer.kind} layer"
        if self.kernel != "fused":
            return self.kernel
        return "c++" if extension() is not None else "pytorch"

    def _packed_slots(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, K) slots of the K packed single-hot fields."""
        assert self._packed_positions is not None
        columns = []
        for position in self._packed_positions.tolist():
            ids = sparse[position]
            if ids.offsets is not None:
                raise DataError(f"field {self.field_names[position]!r} takes one value per sample in this artifact "
                                "but the batch has bags; encode raw values with ServingModel.encode")
            columns.append(ids.values)
        return torch.stack(columns, dim=1).long()  # (B, K)

    def _vectors(self, name: str, slots: Tensor, offsets: Tensor | None, weights: Tensor | None = None) -> Tensor:
        """(B, D) vectors of one field (bags weighed by ``weights`` when given)."""
        if self.kernel == "reference":
            table = self._reference[name]
            if offsets is None:
                return F.embedding(slots, table)
            return F.embedding_bag(slots, table, offsets, mode="sum", include_last_offset=True,
                                   per_sample_weights=None if weights is None else weights.float())
        lookup = self._lookups[name]
        return lookup.single(slots) if offsets is None else lookup.bags(slots, offsets.long(), weights)

    def num_rows(self) -> dict[str, int]:
        return {name: self._rows.get(name, 1) for name in self.field_names}

    def embedding_bytes(self) -> int:
        """Bytes resident for lookups (packed pools, or the reference path's fp32 tables) plus constants."""
        resident = sum(tier.nbytes for lookup in self._lookups.values() for tier in lookup.tiers)
        resident += sum(t.numel() * t.element_size() for t in self._reference.values())
        resident += self._pools.nbytes if self._pools is not None else 0
        resident += 0 if self.layer is None else int(self.layer.embedding_bytes())
        return resident + 4 * self.embedding_dim * len(self.constants)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return []


class ServingModel(nn.Module):
    """An exported model: the DLRM network over a :class:`ServingEmbedding`, for inference only.

    No optimizer, no priorities, no gradients: every parameter has ``requires_grad=False`` and
    :meth:`predict_proba` runs under ``torch.inference_mode``. :meth:`encode` turns raw rows into
    a batch of slots (see :mod:`sharkrec.export.rows`).

    Attributes:
        network: the DLRM (bottom MLP, interaction, head) reading the serving embedding.
        schema: the training schema (raw field names, kinds, separators).
        vocabularies: per kept sparse field, raw value → slot.
        manifest: the artifact's manifest (format, tiers, checksums, ...).
    """

    def __init__(self, network: DLRM, schema: Any, vocabularies: Mapping[str, Any],
                 manifest: Mapping[str, Any]) -> None:
        super().__init__()
        self.network = network.eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.schema = schema
        self.vocabularies = dict(vocabularies)
        self.manifest = dict(manifest)

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.network.task_names

    @property
    def embedding(self) -> ServingEmbedding:
        embedding = self.network.embedding
        assert isinstance(embedding, ServingEmbedding)
        return embedding

    def field_vectors(self, batch: Batch) -> Tensor:
        """(B, F, D): the bottom MLP's vector, then the sparse fields' vectors written in place (no concat copy)."""
        network = self.network
        if network.bottom is None:
            return self.embedding(batch.sparse)
        size = batch.dense.shape[0] if batch.dense.ndim == 2 else -1
        if batch.dense.ndim != 2 or batch.dense.shape[1] != network.config.num_dense:
            raise DataError(f"the batch has dense features of shape {tuple(batch.dense.shape)} but the model expects "
                            f"(B, {network.config.num_dense}); build the batch with the artifact's schema")
        if any(ids.batch_size() != size for ids in batch.sparse):
            raise DataError(f"the batch has {size} dense rows but sparse fields of "
                            f"{sorted({ids.batch_size() for ids in batch.sparse})} samples; every field needs B rows")
        vectors = torch.empty(size, network.num_fields, self.embedding.embedding_dim)  # (B, F, D)
        vectors[:, 0] = network.bottom(batch.dense)
        self.embedding(batch.sparse, out=vectors[:, 1:])
        return vectors

    def forward(self, batch: Batch) -> Tensor:
        """(B, T) logits of a batch of slots."""
        return self.network.logits_from_fields(self.field_vectors(batch))

    def predict_proba(self, batch: Batch) -> Tensor:
        """(B, T) probabilities of a batch of slots."""
        with torch.inference_mode():
            return torch.sigmoid(self(batch))

    def encode(self, rows: Any) -> Batch:
        """A batch of slots from checked raw rows (:class:`sharkrec.data.encode.ParsedRows`)."""
        from sharkrec.export.rows import encode_parsed

        return encode_parsed(self, rows)
