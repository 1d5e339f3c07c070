"""Prediction heads on top of the feature interaction: shared-bottom and MMoE, one logit per task.

Both take the interaction output (B, I) and return logits (B, T). With one task, a shared-bottom
head with an empty tower is the plain DLRM top: the top MLP, then ``Linear(→ 1)``.

Each builder has a ``*_shapes`` twin that lists the parameter shapes it would create, named as in
its state dict, without building anything: an artifact's stored tensors are checked against them
before a single layer is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(in_features: int, hidden: Sequence[int], *, dropout: float = 0.0) -> nn.Sequential:
    """``Linear → ReLU (→ Dropout)`` for each hidden size; an empty ``hidden`` is the identity."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0.0:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers)


def mlp_shapes(in_features: int, hidden: Sequence[int], *, dropout: float = 0.0, prefix: str = ""
               ) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``mlp(in_features, hidden, dropout=dropout)``, state-dict names after ``prefix``."""
    step = 3 if dropout > 0.0 else 2  # Linear, ReLU (, Dropout) per hidden size
    shapes: dict[str, tuple[int, ...]] = {}
    width = in_features
    for i, size in enumerate(hidden):
        shapes[f"{prefix}{i * step}.weight"] = (size, width)
        shapes[f"{prefix}{i * step}.bias"] = (size,)
        width = size
    return shapes


def mlp_out_features(in_features: int, hidden: Sequence[int]) -> int:
    return int(hidden[-1]) if hidden else in_features


def _tower(in_features: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    """One task's tower: hidden layers, then ``Linear(→ 1)``."""
    body = mlp(in_features, hidden, dropout=dropout)
    body.append(nn.Linear(mlp_out_features(in_features, hidden), 1))
    return body


def _tower_shapes(in_features: int, hidden: Sequence[int], dropout: float, prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = mlp_shapes(in_features, hidden, dropout=dropout, prefix=prefix)
    last = len(hidden) * (3 if dropout > 0.0 else 2)
    shapes[f"{prefix}{last}.weight"] = (1, mlp_out_features(in_features, hidden))
    shapes[f"{prefix}{last}.bias"] = (1,)
    return shapes


class SharedBottomHead(nn.Module):
    """A shared MLP, then one tower per task (hard parameter sharing).

    Shapes: input (B, I) → shared (B, H) → logits (B, T).
    """

    def __init__(
        self,
        in_features: int,
        shared: Sequence[int],
        tower: Sequence[int],
        num_tasks: int,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.shared = mlp(in_features, shared, dropout=dropout)
        width = mlp_out_features(in_features, shared)
        self.towers = nn.ModuleList(_tower(width, tower, dropout) for _ in range(num_tasks))

    @staticmethod
    def parameter_shapes(in_features: int, shared: Sequence[int], tower: Sequence[int], num_tasks: int, *,
                         dropout: float = 0.0) -> dict[str, tuple[int, ...]]:
        """The state-dict shapes of ``SharedBottomHead(...)`` with the same arguments (nothing is built)."""
        shapes = mlp_shapes(in_features, shared, dropout=dropout, prefix="shared.")
        width = mlp_out_features(in_features, shared)
        for t in range(num_tasks):
            shapes.update(_tower_shapes(width, tower, dropout, f"towers.{t}."))
        return shapes

    def forward(self, interaction: Tensor) -> Tensor:
        hidden = self.shared(interaction)  # (B, H)
        return torch.cat([tower(hidden) for tower in self.towers], dim=1)  # (B, T)


class MMoEHead(nn.Module):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    ``num_experts`` expert MLPs read the interaction; each task mixes their outputs with its own
    softmax gate and feeds the mixture to its tower.

    Shapes: input (B, I) → experts (B, E, H), gates (B, T, E) → mixtures (B, T, H) → logits (B, T).
    """

    def __init__(
        self,
        in_features: int,
        expert: Sequence[int],
        tower: Sequence[int],
        num_tasks: int,
        num_experts: int,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.num_experts = num_experts
        self.experts = nn.ModuleList(mlp(in_features, expert, dropout=dropout) for _ in range(num_experts))
        self.gates = nn.Linear(in_features, num_tasks * num_experts)  # all task gates in one matmul
        width = mlp_out_features(in_features, expert)
        self.towers = nn.ModuleList(_tower(width, tower, dropout) for _ in range(num_tasks))

    @staticmethod
    def parameter_shapes(in_features: int, expert: Sequence[int], tower: Sequence[int], num_tasks: int,
                         num_experts: int, *, dropout: float = 0.0) -> dict[str, tuple[int, ...]]:
        """The state-dict shapes of ``MMoEHead(...)`` with the same arguments (nothing is built)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for e in range(num_experts):
            shapes.update(mlp_shapes(in_features, expert, dropout=dropout, prefix=f"experts.{e}."))
        shapes["gates.weight"] = (num_tasks * num_experts, in_features)
        shapes["gates.bias"] = (num_tasks * num_experts,)
        width = mlp_out_features(in_features, expert)
        for t in range(num_tasks):
            shapes.update(_tower_shapes(width, tower, dropout, f"towers.{t}."))
        return shapes

    def gate_weights(self, interaction: Tensor) -> Tensor:
        """Softmax gate weights (B, T, E); each task's weights sum to 1."""
        scores = self.gates(interaction).view(-1, self.num_tasks, self.num_experts)
        return torch.softmax(scores, dim=-1)

    def forward(self, interaction: Tensor) -> Tensor:
        experts = torch.stack([expert(interaction) for expert in self.experts], dim=1)  # (B, E, H)
        mixtures = torch.bmm(self.gate_weights(interaction), experts)  # (B, T, H)
        return torch.cat([tower(mixtures[:, t]) for t, tower in enumerate(self.towers)], dim=1)  # (B, T)
