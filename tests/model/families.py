"""Recommendation models written the way users write them (plain torch, nothing from sharkrec), and click data.

Every family sees the same synthetic log: 5 categorical fields of which ``f0`` and ``f1`` decide the
click, plus one multi-hot "history" field for the bag models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROWS = (40, 30, 20, 20, 20)
HISTORY_ROWS = 25
DIM = 8


def click_log(n: int, seed: int) -> dict[str, torch.Tensor]:
    """ids (n, 5), a history bag per sample (values, offsets of B starts), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, r, (n,), generator=g) for r in ROWS], dim=1)
    lengths = torch.randint(0, 4, (n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    history = torch.randint(0, HISTORY_ROWS, (int(lengths.sum()),), generator=g)
    signal = (ids[:, 0] % 4 == 0).float() * 2.0 + (ids[:, 1] % 3 == 0).float() * 1.5 - 1.2
    labels = (torch.rand(n, generator=g) < torch.sigmoid(2 * signal)).float()
    return {"ids": ids, "history": history, "offsets": offsets, "labels": labels}


class DeepFM(nn.Module):
    """Per-field nn.Embedding, an FM second-order term and a deep MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(r, DIM) for r in ROWS)
        self.deep = nn.Sequential(nn.Linear(len(ROWS) * DIM, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = torch.stack([e(ids[:, i]) for i, e in enumerate(self.embeddings)], dim=1)  # (B, F, D)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return fm + self.deep(v.flatten(1)).squeeze(1)


class DCNv2(nn.Module):
    """Per-field nn.EmbeddingBag (one multi-hot history field with offsets), two cross layers, a deep MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(r, DIM, mode="sum") for r in ROWS)
        self.history = nn.EmbeddingBag(HISTORY_ROWS, DIM, mode="mean")
        width = (len(ROWS) + 1) * DIM
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(2))
        self.deep = nn.Sequential(nn.Linear(width, 32), nn.ReLU())
        self.out = nn.Linear(32 + width, 1)

    def forward(self, ids: torch.Tensor, history: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        fields = [bag(ids[:, i:i + 1]) for i, bag in enumerate(self.bags)]  # (B, 1) bags of one id
        x0 = torch.cat([*fields, self.history(history, offsets)], dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)


class FeaturesEmbedding(nn.Module):
    """pytorch-fm's layout: one table for all fields, ids shifted by per-field offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(sum(ROWS), DIM)
        self.offsets = torch.tensor([0, *torch.tensor(ROWS).cumsum(0)[:-1].tolist()])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids + self.offsets.unsqueeze(0))  # (B, F, D)


class SharedTableFM(nn.Module):
    """A factorisation machine over one shared table."""

    def __init__(self) -> None:
        super().__init__()
        self.features = FeaturesEmbedding()
        self.mlp = nn.Sequential(nn.Linear(len(ROWS) * DIM, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.features(ids)
        return 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1) + self.mlp(v.flatten(1)).squeeze(1)


class TwoTower(nn.Module):
    """A user tower (f0, f2, f4) and an item tower (f1, f3), a dot product of the two."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.ModuleDict({f"f{i}": nn.Embedding(ROWS[i], DIM) for i in (0, 2, 4)})
        self.item = nn.ModuleDict({f"f{i}": nn.Embedding(ROWS[i], DIM) for i in (1, 3)})
        self.user_mlp = nn.Sequential(nn.Linear(3 * DIM, 16), nn.ReLU(), nn.Linear(16, 8))
        self.item_mlp = nn.Sequential(nn.Linear(2 * DIM, 16), nn.ReLU(), nn.Linear(16, 8))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.user_mlp(torch.cat([e(features[k]) for k, e in self.user.items()], dim=1))
        v = self.item_mlp(torch.cat([e(features[k]) for k, e in self.item.items()], dim=1))
        return (u * v).sum(1) + self.bias


def inputs_of(model: nn.Module, log: dict[str, torch.Tensor], rows: slice) -> tuple:
    """The positional inputs of ``model``'s forward for samples ``rows`` of ``log``."""
    ids = log["ids"][rows]
    if isinstance(model, DCNv2):
        start, stop, _ = rows.indices(len(log["ids"]))
        ends = torch.cat([log["offsets"][1:], torch.tensor([len(log["history"])])])
        lo, hi = int(log["offsets"][start]), int(ends[stop - 1])
        return ids, log["history"][lo:hi], log["offsets"][start:stop] - lo
    if isinstance(model, TwoTower):
        return ({f"f{i}": ids[:, i] for i in range(len(ROWS))},)
    return (ids,)


def batches(model: nn.Module, log: dict[str, torch.Tensor], size: int) -> list[tuple[tuple, torch.Tensor]]:
    n = len(log["labels"])
    return [(inputs_of(model, log, slice(s, min(s + size, n))), log["labels"][s:s + size]) for s in range(0, n, size)]


def train(model: nn.Module, log: dict[str, torch.Tensor], epochs: int = 4, lr: float = 0.02) -> nn.Module:
    """A plain user training loop (Adam, BCE)."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for x, y in batches(model, log, 256):
            loss = F.binary_cross_entropy_with_logits(model(*x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


FAMILIES = {"deepfm": DeepFM, "dcn-v2": DCNv2, "shared-table": SharedTableFM, "two-tower": TwoTower}
