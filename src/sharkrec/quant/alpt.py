"""ALPT baseline: int8 embeddings with a learned per-row step size (Li et al., AAAI 2023).

ALPT ("Adaptive Low-Precision Training for Embeddings in Click-Through Rate Prediction",
arXiv 2212.05735) keeps every embedding row as integers ``q_r`` (D,) during training, with a
step size ``s_r`` that is *learned by gradient descent* instead of being set from the row's
range, and writes updated rows back with stochastic rounding (their analysis: stochastic
rounding converges faster and to a smaller error than deterministic rounding in low-precision
training). It alternates a weight step and a step-size step.

What this module implements, per training step and per touched row r (all of it in
:class:`ALPTOptimizer`, from the one backward pass of the batch)::

    ê_r  = s_r · q_r                                   forward: dequantized row        (D,)
    g_r  = ∂L/∂ê_r                                     backward                        (D,)
    e'_r = ê_r − lr · precondition(g_r)                weight step (SGD / row-wise Adagrad)
    x_j  = e'_rj / s_r                                  position on the current grid    (D,)
    ∂ê'/∂s = round(x_j) − x_j   if |x_j| ≤ 127          LSQ straight-through estimator
           = sign(x_j) · 127    otherwise               (Esser et al. 2020, used by ALPT)
    ∂L/∂s_r ≈ Σ_j g_rj · ∂ê'_rj/∂s                       g_r stands in for the gradient at the
                                                          re-quantized row (saves ALPT's second
                                                          forward/backward pass)
    u_r = log s_r;  ∂L/∂u_r = s_r · ∂L/∂s_r            step-size step in log space with a
    A_r += (∂L/∂u_r)²;  s_r ← s_r · exp(−lr_s · ∂L/∂u_r / (√A_r + ε))   row-wise Adagrad
    q_r = clamp(SR(e'_r / s_r), −127, 127)             write-back, stochastic rounding (SR)

Reading the estimator: an update smaller than the grid spacing gives ``round(x) − x ≈ lr·g/s``
so ``Σ g·(round(x) − x) > 0`` and the step size shrinks (finer grid, small updates survive);
entries pushed past ±127·s clip and give ``±127·g``, which grows the step size when the loss
wants those entries larger. The log-space Adagrad step makes the update scale-free (LSQ's
gradient scale 1/√(D·Q_p) would cancel under Adagrad, so it is not applied). Step sizes start
at the symmetric ``max|e_r| / 127`` of the fp32 row (a row whose step is 0 gets that value at
its first update). Storage: the int8 pool of :class:`MixedPrecisionEmbedding` with its per-row
fp32 scale buffer holding ``s_r``; the step-size accumulators ``A`` are optimizer state.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from sharkrec.errors import ConfigError
from sharkrec.model.embedding import FloatEmbedding
from sharkrec.quant.codec import Precision
from sharkrec.quant.embedding import MixedPrecisionEmbedding, TierGroups, TierOptimizer
from sharkrec.quant.priority import FQuantPolicy

INT8_LEVEL = Precision.INT8.max_level


class ALPTEmbedding(MixedPrecisionEmbedding):
    """Every row int8 with a learned fp32 step size per row (kind ``"alpt"``).

    Args:
        field_rows, embedding_dim, check_ids: as :class:`MixedPrecisionEmbedding`.
        step_lr: learning rate of the log step sizes (row-wise Adagrad; 0 freezes them). The
            default 0.1 was chosen on ``tests/toy.py`` (init std 0.01, Adagrad lr 0.05, 4 epochs):
            frozen steps (``max|e|/127`` of the tiny initial rows) clip half the trained entries
            and give test AUC 0.69 (fp32 0.83, int8 with max-abs scales 0.83); step_lr 0.02
            gives 0.71, 0.1 gives 0.84 (steps grow ~4x, 11% of entries at ±127).
        stochastic_int: stochastic rounding on write-back (ALPT's choice; default on).
    """

    kind: ClassVar[str] = "alpt"
    trains_data_parallel: ClassVar[bool] = False
    single_process_reason: ClassVar[str] = ("ALPT's learned step sizes are updated per process; run it without "
                                            "torchrun or pick f-quant")

    def __init__(self, field_rows: Mapping[str, int], embedding_dim: int, *, step_lr: float = 0.1,
                 policy: FQuantPolicy | None = None, initial: Precision | str = Precision.INT8,
                 stochastic_int: bool = True, stochastic_fp16: bool = False, check_ids: bool = True) -> None:
        if policy is not None:
            raise ConfigError("ALPT keeps every row int8 and takes no tier policy; use precision f-quant for tiers")
        if not (step_lr >= 0 and math.isfinite(step_lr)):
            raise ConfigError(f"step_lr is {step_lr}; use a finite value >= 0 such as 0.1")
        super().__init__(field_rows, embedding_dim, initial=initial, stochastic_int=stochastic_int,
                         stochastic_fp16=stochastic_fp16, check_ids=check_ids)
        self.step_lr = float(step_lr)

    @classmethod
    def from_float(cls, embedding: FloatEmbedding, plan: Precision | str | Mapping[str, Tensor] = Precision.INT8,
                   policy: FQuantPolicy | None = None, **options: Any) -> ALPTEmbedding:
        """Quantize ``embedding`` to int8 rows with initial step sizes ``max|e_r| / 127``."""
        if isinstance(plan, Mapping) or Precision.parse(plan) is not Precision.INT8:
            raise ConfigError("ALPT stores every row in int8; build it with plan 'int8'")
        module = super().from_float(embedding, Precision.INT8, policy, **options)
        assert isinstance(module, ALPTEmbedding)
        return module

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "step_lr": self.step_lr}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ALPTEmbedding:
        return cls(dict(spec["field_rows"]), int(spec["embedding_dim"]), step_lr=float(spec.get("step_lr", 0.1)),
                   stochastic_int=bool(spec.get("stochastic_int", True)), check_ids=bool(spec.get("check_ids", True)))

    def step_sizes(self, field: int) -> Tensor:
        """(R,) float32 learned step sizes of field ``field`` (rows are in row order in the int8 pool)."""
        return self._buffer(f"int8_scale_{field}")[self._buffer(f"slot_{field}").long()]

    def write_rows(self, field: int, rows: Tensor, values: Tensor, groups: TierGroups | None = None) -> None:
        """Store (U, D) ``values`` on each row's current grid (step sizes unchanged, clipped at ±127)."""
        slots = self._buffer(f"slot_{field}").index_select(0, rows).long()
        self.write_codes(field, slots, values, self._buffer(f"int8_scale_{field}").index_select(0, slots))

    def write_codes(self, field: int, slots: Tensor, values: Tensor, steps: Tensor) -> None:
        """``q = clamp(SR(values / steps), ±127)`` into int8 ``slots`` (U,) with new ``steps`` (U,)."""
        safe = torch.where(steps > 0, steps, torch.ones_like(steps)).unsqueeze(1)  # (U, 1)
        scaled = values / safe
        rounded = torch.floor(scaled + torch.rand_like(scaled)) if self.stochastic_int else torch.round(scaled)
        codes = rounded.clamp_(-INT8_LEVEL, INT8_LEVEL).to(torch.int8)
        self._buffer(f"int8_{field}").index_copy_(0, slots, codes)
        self._buffer(f"int8_scale_{field}").index_copy_(0, slots, steps)

    def make_sparse_optimizer(self, kind: str, lr: float) -> ALPTOptimizer:
        if any(bool((self._buffer(f"tier_{i}") != Precision.INT8.code).any()) for i in range(self.num_fields)):
            raise ConfigError("ALPT trains int8 rows only; build the layer with ALPTEmbedding.from_float")
        optimizer = ALPTOptimizer(self, kind, lr, self.step_lr)
        self._optimizer_ref = weakref.ref(optimizer)
        return optimizer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, step_lr={self.step_lr}"


class ALPTOptimizer(TierOptimizer):
    """:class:`TierOptimizer`'s weight step, then the ALPT step-size step (module docstring).

    State beyond the weight optimizer's: ``step_sum_i`` (R,) float32 Adagrad accumulators of the
    log step sizes, indexed by row id.
    """

    def __init__(self, embedding: ALPTEmbedding, kind: str, lr: float, step_lr: float, eps: float = 1e-10) -> None:
        super().__init__(embedding, kind, lr)
        self.step_lr = step_lr
        self.step_eps = eps
        state = self.state[self._anchor]
        for i, rows in enumerate(embedding.num_rows().values()):
            state[f"step_sum_{i}"] = torch.zeros(rows)

    def _store(self, field: int, rows: Tensor, values: Tensor, grad: Tensor) -> None:
        embedding = self.embedding
        assert isinstance(embedding, ALPTEmbedding)
        slots = embedding._buffer(f"slot_{field}").index_select(0, rows).long()
        steps = embedding._buffer(f"int8_scale_{field}").index_select(0, slots)  # (U,)
        fresh = steps <= 0
        if bool(fresh.any()):  # rows without a step yet (all-zero rows) start at max|e| / 127
            steps = torch.where(fresh, values.abs().amax(1) / INT8_LEVEL, steps)
        if self.step_lr > 0:
            steps = self._learn_steps(field, rows, values, grad, steps)
        embedding.write_codes(field, slots, values, steps)

    def _learn_steps(self, field: int, rows: Tensor, values: Tensor, grad: Tensor, steps: Tensor) -> Tensor:
        """(U,) step sizes after one log-space Adagrad step on the LSQ gradient."""
        live = steps > 0
        x = values / torch.where(live, steps, torch.ones_like(steps)).unsqueeze(1)  # (U, D)
        inside = x.abs() <= INT8_LEVEL
        dvalue_dstep = torch.where(inside, torch.round(x) - x, torch.sign(x) * INT8_LEVEL)  # (U, D)
        grad_log_step = steps * (grad * dvalue_dstep).sum(1)  # (U,) ∂L/∂u, u = log s
        grad_log_step = torch.where(live, grad_log_step, torch.zeros_like(grad_log_step))
        state = self.state[self._anchor]
        accumulator = state[f"step_sum_{field}"].index_select(0, rows) + grad_log_step.pow(2)
        state[f"step_sum_{field}"].index_copy_(0, rows, accumulator)
        change = grad_log_step / (accumulator.sqrt() + self.step_eps)
        return steps * torch.exp(-self.step_lr * change)
