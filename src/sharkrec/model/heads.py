"""Prediction heads on top of the feature interaction: shared-bottom and MMoE, one logit per task.

Both take the interaction output (B, I) and return logits (B, T). With one task, a shared-bottom
head with an empty tower is the plain DLRM top: the top MLP, then ``Linear(→ 1)``.
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


def mlp_out_features(in_features: int, hidden: Sequence[int]) -> int:
    return int(hidden[-1]) if hidden else in_features


def _tower(in_features: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    """One task's tower: hidden layers, then ``Linear(→ 1)``."""
    body = mlp(in_features, hidden, dropout=dropout)
    body.append(nn.Linear(mlp_out_features(in_features, hidden), 1))
    return body


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

    def gate_weights(self, interaction: Tensor) -> Tensor:
        """Softmax gate weights (B, T, E); each task's weights sum to 1."""
        scores = self.gates(interaction).view(-1, self.num_tasks, self.num_experts)
        return torch.softmax(scores, dim=-1)

    def forward(self, interaction: Tensor) -> Tensor:
        experts = torch.stack([expert(interaction) for expert in self.experts], dim=1)  # (B, E, H)
        mixtures = torch.bmm(self.gate_weights(interaction), experts)  # (B, T, H)
        return torch.cat([tower(mixtures[:, t]) for t, tower in enumerate(self.towers)], dim=1)  # (B, T)
