"""Optimizers that update embedding rows sparsely and the dense network densely.

Embedding tables receive sparse gradients; updating them with a dense optimizer touches every row
every step (about 500 samples/s on a Criteo-shaped DLRM instead of 20k+). So each optimizer kind
pairs a dense torch optimizer with a sparse one over the tables:

=========  ==========================  ==================================
kind       dense parameters            embedding tables (sparse gradients)
=========  ==========================  ==================================
sgd        torch.optim.SGD             torch.optim.SGD (sparse-aware)
adagrad    torch.optim.Adagrad         RowWiseAdagrad (one accumulator per row)
adam       torch.optim.Adam            LazyAdam (torch.optim.SparseAdam's lazy Adam)
=========  ==========================  ==================================
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from sharkrec.errors import ConfigError
from sharkrec.model.kernels import extension


class OptimizerKind(str, enum.Enum):
    SGD = "sgd"
    ADAGRAD = "adagrad"
    ADAM = "adam"


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per embedding row (FBGEMM's default for tables).

    For a row r with gradient g_r (D,): ``G_r += mean(g_r ** 2)``; ``e_r -= lr * g_r / (sqrt(G_r) + eps)``.
    Only the rows present in the sparse gradient are read or written. State: (rows,) float32.
    All tables' sparse gradients are applied in one kernel call (:mod:`sharkrec.model.kernels`; duplicate ids
    summed per row, no coalesced copy of each gradient), else table by table with PyTorch ops.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 0.01,
        eps: float = 1e-8,
        initial_accumulator_value: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ConfigError(f"learning rate {lr} must be positive")
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value})

    @torch.no_grad()
    def step(self, closure: Any = None, *, use_extension: bool = True) -> None:  # type: ignore[override]
        module = extension() if use_extension else None
        for group in self.param_groups:
            fused: list[tuple[nn.Parameter, Tensor, Tensor, Tensor]] = []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "sum" not in state:
                    state["sum"] = torch.full(
                        (param.shape[0],), group["initial_accumulator_value"], dtype=torch.float32
                    )
                if module is not None and _fusable(param, state["sum"]):
                    fused.append((param, state["sum"], param.grad))
                else:
                    self._step_torch(param, state["sum"], group["lr"], group["eps"])
            if fused:
                params, sums, grads = (list(column) for column in zip(*fused, strict=True))
                module.rowwise_adagrad(params, sums, grads, float(group["lr"]), float(group["eps"]))

    @staticmethod
    def _step_torch(param: nn.Parameter, accumulator_state: Tensor, lr: float, eps: float) -> None:
        grad = param.grad
        assert grad is not None
        if grad.is_sparse:
            grad = grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
        else:
            rows = torch.nonzero(grad.abs().sum(1) > 0).squeeze(1)
            values = grad.index_select(0, rows)
        if rows.numel() == 0:
            return
        accumulator = accumulator_state.index_select(0, rows) + values.pow(2).mean(1)
        accumulator_state.index_copy_(0, rows, accumulator)
        step = values / (accumulator.sqrt().unsqueeze(1) + eps)
        param.index_add_(0, rows, step, alpha=-lr)


class LazyAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` (lazy Adam: only the rows in the sparse gradient move; same state and state
    dict), with all tables' gradients applied in one kernel call when :mod:`sharkrec.model.kernels` is built.

    For a row r with gradient g_r: ``m_r += (1 - b1)(g_r - m_r)``, ``v_r += (1 - b2)(g_r² - v_r)``,
    ``e_r -= lr · sqrt(1 - b2^t) / (1 - b1^t) · m_r / (sqrt(v_r) + eps)``, t = the table's step count.
    """

    @torch.no_grad()
    def step(self, closure: Any = None, *, use_extension: bool = True) -> Any:  # type: ignore[override]
        module = extension() if use_extension else None
        if module is None or closure is not None or any(g.get("maximize", False) for g in self.param_groups):
            return super().step(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            fused: list[tuple[Any, ...]] = []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
                state = self.state[param]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]
                step_size = float(group["lr"]) * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                if not _fusable(param, state["exp_avg"], state["exp_avg_sq"]):  # an odd layout: torch's own update
                    torch.optim._functional.sparse_adam([param], [param.grad], [state["exp_avg"]],
                                                        [state["exp_avg_sq"]], [step], eps=group["eps"], beta1=beta1,
                                                        beta2=beta2, lr=float(group["lr"]), maximize=False)
                    continue
                fused.append((param, state["exp_avg"], state["exp_avg_sq"], param.grad, step_size))
            if fused:
                params, means, squares, grads, sizes = (list(c) for c in zip(*fused, strict=True))
                module.lazy_adam(params, means, squares, grads, sizes, float(beta1), float(beta2), float(group["eps"]))
        return None


def _fusable(param: nn.Parameter, *states: Tensor) -> bool:
    """Whether the kernels can apply ``param``'s gradient: a sparse COO gradient of a contiguous float32 (rows, D)
    CPU table whose ``states`` are contiguous float32 too."""
    grad = param.grad
    return (grad is not None and grad.layout is torch.sparse_coo and grad.dtype is torch.float32
            and param.dtype is torch.float32 and param.ndim == 2 and param.device.type == "cpu"
            and param.is_contiguous() and all(s.dtype is torch.float32 and s.is_contiguous() for s in states))


class SplitOptimizer:
    """A dense optimizer for the network and a sparse one for the embedding tables, stepped together."""

    def __init__(
        self,
        model: nn.Module,
        sparse_params: list[nn.Parameter],
        kind: OptimizerKind,
        lr: float,
        embedding_lr: float | None = None,
        weight_decay: float = 0.0,
        sparse_optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        if lr <= 0:
            raise ConfigError(f"learning rate {lr} must be positive; the paper uses 0.01")
        sparse_ids = {id(p) for p in sparse_params}
        dense_params = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
        sparse_params = [p for p in sparse_params if p.requires_grad]
        table_lr = lr if embedding_lr is None else embedding_lr
        self.dense: torch.optim.Optimizer | None = None
        self.sparse: torch.optim.Optimizer | None = None
        if kind is OptimizerKind.SGD:
            if dense_params:
                self.dense = torch.optim.SGD(dense_params, lr=lr, weight_decay=weight_decay)
            if sparse_params:
                self.sparse = torch.optim.SGD(sparse_params, lr=table_lr)
        elif kind is OptimizerKind.ADAGRAD:
            if dense_params:
                self.dense = torch.optim.Adagrad(dense_params, lr=lr, weight_decay=weight_decay)
            if sparse_params:
                self.sparse = RowWiseAdagrad(sparse_params, lr=table_lr)
        elif kind is OptimizerKind.ADAM:
            if dense_params:
                self.dense = torch.optim.Adam(dense_params, lr=lr, weight_decay=weight_decay)
            if sparse_params:
                self.sparse = LazyAdam(sparse_params, lr=table_lr)
        else:  # pragma: no cover - enum is closed
            raise ConfigError(f"unknown optimizer {kind!r}; use sgd, adagrad or adam")
        if sparse_optimizer is not None:  # the embedding layer updates its own storage
            self.sparse = sparse_optimizer

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.dense, self.sparse) if o is not None]

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "dense": None if self.dense is None else self.dense.state_dict(),
            "sparse": None if self.sparse is None else self.sparse.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.dense is not None and state.get("dense") is not None:
            self.dense.load_state_dict(state["dense"])
        if self.sparse is not None and state.get("sparse") is not None:
            self.sparse.load_state_dict(state["sparse"])
