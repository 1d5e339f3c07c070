"""F-Quantization inside the user's own training loop: a mixed-precision drop-in for any model or lookup.

::

    qmodel = quantize(model, example=x, policy=FQuantPolicy(memory_budget=0.5))   # same forward as model
    dense_opt = torch.optim.Adam(qmodel.dense_parameters(), lr=1e-3)   # the network: any torch optimizer
    rows_opt = qmodel.embedding.make_sparse_optimizer("adagrad", 0.05)   # the rows: their tiers' own optimizer
    for x, y in loader:
        qmodel.observe(y)                  # the one extra call: Eq. 7 priorities from this batch's ids and labels
        loss = F.binary_cross_entropy_with_logits(qmodel(x), y)
        dense_opt.zero_grad(); rows_opt.zero_grad()
        loss.backward()
        dense_opt.step(); rows_opt.step()  # rows are updated in fp32 and written back into their tier

``observe(labels)`` goes before the forward of the batch: the forward records the ids its lookups see and
hands ids and labels to the layer (SHARK Eq. 7: positives weigh ``alpha`` times more), which moves rows
between tiers every ``policy.recheck_every`` batches (Eq. 8) before it looks them up. Without a policy the
tiers stay as ``plan`` sets them (one precision, or per field (R,) tier codes).

:func:`from_float` is the same for one lookup module (``nn.Embedding`` / ``nn.EmbeddingBag`` / a TorchRec
collection): the result is called exactly like the module it replaces. :func:`post_training` sets tiers
from counted frequencies for a model that cannot be retrained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from sharkrec.errors import ConfigError
from sharkrec.model.embedding import replace_storage, storage
from sharkrec.model.fieldmap import FieldMap, find_fields
from sharkrec.model.wrapped import FieldModel
from sharkrec.quant.codec import Precision
from sharkrec.quant.embedding import MixedPrecisionEmbedding
from sharkrec.quant.priority import FQuantPolicy


def _wrapped(model: nn.Module, example: Any, fields: FieldMap | None) -> FieldModel:
    if isinstance(model, FieldModel):
        return model
    if fields is None:
        if example is None:
            raise ConfigError("give example=inputs (or fields=...) so sharkrec can find the model's lookups")
        fields = find_fields(model, example)
    return FieldModel.wrap(model, fields)


def quantize(model: nn.Module, plan: Precision | str | Mapping[str, Tensor] = Precision.FP32, *,
             policy: FQuantPolicy | None = None, example: Any = None, fields: FieldMap | None = None,
             **options: Any) -> FieldModel:
    """A copy of ``model`` whose tables are row-wise mixed precision (``model`` itself is not changed).

    ``plan`` is the starting tier of every row (default fp32: F-Quantization moves rows down as their
    priorities settle), or per field (R,) tier codes; ``policy`` makes tiers follow Eq. 7/8 during
    training; ``options`` go to :meth:`MixedPrecisionEmbedding.from_float` (rounding).
    """
    wrapped = _wrapped(model, example, fields)
    rows = storage(wrapped.embedding)
    if rows.kind != "float":
        raise ConfigError(f"quantize starts from fp32 tables; this model's rows are already {rows.kind!r}")
    mixed = MixedPrecisionEmbedding.from_float(rows, plan, policy=policy, **options)  # type: ignore[arg-type]
    return wrapped.with_embedding(replace_storage(wrapped.embedding, mixed))


def from_float(module: nn.Module, plan: Precision | str | Mapping[str, Tensor] = Precision.FP32, *,
               policy: FQuantPolicy | None = None, example: Any = None, **options: Any) -> FieldModel:
    """A mixed-precision drop-in for one lookup module, called with the module's own arguments."""
    return quantize(module, plan, policy=policy, example=example, **options)


def post_training(model: FieldModel, data: Any, *, memory_budget: float, alpha: float = 2.0,
                  use_int4: bool = False, batch_size: int = 512) -> FieldModel:
    """Tiers from counted frequencies (the expected Eq. 7 priority of every row over ``data.train``) for a
    trained fp32 model that cannot be retrained: a copy within ``memory_budget`` of the fp32 bytes."""
    from sharkrec.quant.build import build_embedding, expected_priorities

    rows = storage(model.embedding)
    if rows.kind != "float":
        raise ConfigError(f"post-training tiers start from fp32 tables; this model's rows are {rows.kind!r}")
    kept = list(rows.field_names)
    quantized: Any = build_embedding("f-quant", rows, None, memory_budget=memory_budget,  # type: ignore[arg-type]
                                     use_int4=use_int4, alpha=alpha)
    quantized.set_priorities(expected_priorities(data, alpha, batch_size, kept))
    quantized.retier()
    quantized.rows_moved = 0
    return model.with_embedding(replace_storage(model.embedding, quantized))
