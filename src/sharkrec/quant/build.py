"""One entry point for every precision scheme, so comparing methods is one loop.

``build_embedding(precision, float_embedding, data, **policy)`` returns a :class:`FieldEmbedding`:

==========  ===============================================================================
precision   what it builds
==========  ===============================================================================
fp32        the float embedding itself (the baseline)
fp16        every row fp16 (round-to-nearest; ``stochastic_fp16=True`` for stochastic)
int8        every row int8 with a per-row scale, stochastic rounding on write-back
int4        every row int4 (two values a byte) with a per-row scale, stochastic rounding
f-quant     SHARK F-Quantization: Eq. 7 priorities, Eq. 8 tiers (``FQuantPolicy`` options)
mpe         an fp32 cache of the hottest rows by LFU count (``cache_fraction``), the rest int8
random      control: tiers drawn at random with the tier counts f-quant's budget gives (fixed)
alpt        ALPT: every row int8 with a learned per-row step size (``step_lr``, default 0.1)
==========  ===============================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sharkrec.data.dataset import PreparedData
from sharkrec.errors import ConfigError
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding
from sharkrec.quant.alpt import ALPTEmbedding
from sharkrec.quant.codec import Precision
from sharkrec.quant.embedding import MixedPrecisionEmbedding
from sharkrec.quant.priority import FQuantPolicy, tier_counts_for_budget

PRECISIONS = ("fp32", "fp16", "int8", "int4", "f-quant", "mpe", "random", "alpt")
_ROUNDING = ("stochastic_int", "stochastic_fp16")


def build_embedding(precision: str, float_embedding: FloatEmbedding, data: PreparedData | None = None,
                    **policy: Any) -> FieldEmbedding:
    """The embedding of scheme ``precision`` built from ``float_embedding`` (see the module table).

    ``data`` (optional: PreparedData, or a user model's UserData) warm-starts the priorities of f-quant / mpe
    from the training split:
    each row starts at the fixed point of Eq. 7's expectation, ``E[α·c⁺ + c⁻]`` per batch of
    ``batch_size`` samples (``batch_size`` option, default 512), so the first tiers already follow
    the data. ``policy`` holds :class:`FQuantPolicy` fields, rounding options, and for mpe
    ``cache_fraction`` (default 0.1) and ``recheck_every``.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    rounding = {k: policy.pop(k) for k in _ROUNDING if k in policy}
    batch_size = int(policy.pop("batch_size", 512))
    if precision == "fp32":
        return float_embedding
    if precision in ("fp16", "int8", "int4"):
        if policy:
            raise ConfigError(f"precision {precision} takes no policy options, got {sorted(policy)}")
        return MixedPrecisionEmbedding.from_float(float_embedding, Precision(precision), **rounding)
    if precision == "alpt":
        step_lr = float(policy.pop("step_lr", 0.1))
        if policy:
            raise ConfigError(f"alpt takes step_lr and stochastic_int, got {sorted(policy)}")
        return ALPTEmbedding.from_float(float_embedding, Precision.INT8, step_lr=step_lr, **rounding)
    if precision == "random":
        return random_tiers(float_embedding, int(policy.pop("seed", 0)), rounding, **policy)
    if precision == "mpe":
        cache = float(policy.pop("cache_fraction", 0.1))
        if not 0 <= cache <= 1:
            raise ConfigError(f"cache_fraction is {cache}; use a fraction of rows in [0, 1]")
        if set(policy) - {"recheck_every"}:
            raise ConfigError(f"mpe takes cache_fraction and recheck_every, got {sorted(policy)}")
        rule = FQuantPolicy(alpha=1.0, decay=False, tier_fractions=(cache, 0.0, 1.0 - cache), **policy)
    else:
        try:
            rule = FQuantPolicy(**policy)
        except TypeError as exc:
            raise ConfigError(f"bad f-quant option ({exc}); see FQuantPolicy for the options") from None
    module = MixedPrecisionEmbedding.from_float(float_embedding, rule.lowest, policy=rule, **rounding)
    if data is not None:
        module.set_priorities(expected_priorities(data, rule.alpha, batch_size))
    module.retier()
    module.rows_moved = 0
    return module


def random_tiers(float_embedding: FloatEmbedding, seed: int, rounding: dict[str, Any],
                 **policy: Any) -> MixedPrecisionEmbedding:
    """Fixed tiers drawn uniformly at random over all rows, with the counts f-quant would use.

    The counts come from :func:`tier_counts_for_budget` for the same :class:`FQuantPolicy`
    budget options, so the bytes equal f-quant's exactly; only *which* rows get the precise
    tiers differs (the control for "does the priority matter?"). ``seed`` picks the draw.
    """
    try:
        rule = FQuantPolicy(**policy)
    except TypeError as exc:
        raise ConfigError(f"bad random-tiers option ({exc}); give memory_budget or tier_fractions") from None
    if rule.memory_budget is None and rule.tier_fractions is None:
        raise ConfigError("random tiers need memory_budget or tier_fractions to set the tier counts")
    rows = float_embedding.num_rows()
    counts = tier_counts_for_budget(sum(rows.values()), float_embedding.embedding_dim, rule)
    codes = torch.cat([torch.full((n,), rule.tiers[k].code, dtype=torch.int8) for k, n in enumerate(counts)])
    codes = codes[torch.randperm(codes.shape[0], generator=torch.Generator().manual_seed(seed))]
    plan = dict(zip(rows, torch.split(codes, list(rows.values())), strict=True))
    return MixedPrecisionEmbedding.from_float(float_embedding, plan, **rounding)


def expected_priorities(data: PreparedData, alpha: float, batch_size: int,
                        fields: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Per field (R,) ``(α·positives_r + negatives_r) · batch_size / N`` over the training split.

    This is the expectation of Eq. 7's bracket for one batch, the value Eq. 7 fluctuates around.
    ``fields`` picks (and orders) the fields; default all sparse fields of ``data`` (PreparedData or UserData:
    anything with ``cardinalities`` and a ``train`` split of recorded ids).
    """
    train = data.train
    positive = (train.labels.numpy() > 0.5).any(axis=1)
    sample_weight = np.where(positive, alpha, 1.0)
    scale = batch_size / max(len(train), 1)
    names = list(data.cardinalities)
    unknown = [f for f in (fields or ()) if f not in names]
    if unknown:
        raise ConfigError(f"fields {unknown} are not in the data; known fields: {', '.join(names)}")
    out = []
    for name in fields if fields is not None else names:
        i, rows = names.index(name), data.cardinalities[name]
        column = train.column(i)
        values = np.asarray(column.values, dtype=np.int64)
        if column.offsets is None:
            weights = sample_weight
        else:
            weights = np.repeat(sample_weight, np.diff(np.asarray(column.offsets)))
        counts = np.bincount(values, weights=weights, minlength=rows)[:rows]
        out.append(torch.from_numpy(counts * scale).float())
    return out
