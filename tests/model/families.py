"""Recommendation models written the way users write them (plain torch, nothing from sharkrec), and click data.

Four families, each a different lookup layout sharkrec must read:

- :class:`DeepFM`: one ``nn.Embedding`` (B,) per field, an FM second-order term, a deep MLP and first-order
  ``nn.Embedding(rows, 1)`` weights per field (those have dim 1, so the field map names the D-dim lookups:
  ``modules=DeepFM.vector_lookups()``);
- :class:`DCNv2`: one ``nn.EmbeddingBag`` per field ((B, 1) bags) plus a multi-hot history bag (values +
  offsets, mean), cross layers ``x0 * (W x + b) + x`` and a deep MLP;
- :class:`SharedTableFM`: pytorch-fm's layout, ONE ``nn.Embedding`` indexed with ``x + offsets`` where
  ``offsets`` (a numpy array) lives on the table's parent module;
- :class:`TwoTower`: a user tower and an item tower, each its own lookups and MLP, a dot-product logit;
  its forward takes a dict of (B,) ids.

Every family sees the same synthetic log (:func:`click_log`): 5 categorical fields of which ``f0`` and
``f1`` decide the click and ``f2..f4`` are noise, plus a noise multi-hot history field for DCN-v2.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROWS = (40, 30, 20, 20, 20)
SIGNAL_FIELDS = (0, 1)
HISTORY_ROWS = 25
DIM = 8


def click_log(n: int, seed: int) -> dict[str, torch.Tensor]:
    """A synthetic click log: ids (n, 5) int64, a history bag per sample (values (nnz,), offsets (n,) bag
    starts, 0 to 3 ids each, possibly empty) and labels (n,) float 0/1.

    P(click) = sigmoid(2 s), s = 2·[f0 % 4 = 0] + 1.5·[f1 % 3 = 0] − 1.2: only f0 and f1 carry signal.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, r, (n,), generator=g) for r in ROWS], dim=1)
    lengths = torch.randint(0, 4, (n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    history = torch.randint(0, HISTORY_ROWS, (int(lengths.sum()),), generator=g)
    signal = (ids[:, 0] % 4 == 0).float() * 2.0 + (ids[:, 1] % 3 == 0).float() * 1.5 - 1.2
    labels = (torch.rand(n, generator=g) < torch.sigmoid(2 * signal)).float()
    return {"ids": ids, "history": history, "offsets": offsets, "labels": labels}


class DeepFM(nn.Module):
    """Per-field nn.Embedding (B,) → (B, D), FM second-order term, deep MLP; optional first-order weights."""

    def __init__(self, first_order: bool = True) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(r, DIM) for r in ROWS)
        for e in self.embeddings:
            nn.init.xavier_uniform_(e.weight)  # as pytorch-fm: N(0, 1) rows make the FM term explode
        self.linear = nn.ModuleList(nn.Embedding(r, 1) for r in ROWS) if first_order else None
        self.bias = nn.Parameter(torch.zeros(()))
        self.deep = nn.Sequential(nn.Linear(len(ROWS) * DIM, 32), nn.ReLU(), nn.Linear(32, 1))

    @staticmethod
    def vector_lookups() -> list[str]:
        """The D-dim lookups (the field map's modules; the (rows, 1) first-order weights stay dense)."""
        return [f"embeddings.{i}" for i in range(len(ROWS))]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids (B, F) → (B,) logits
        v = torch.stack([e(ids[:, i]) for i, e in enumerate(self.embeddings)], dim=1)  # (B, F, D)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)  # (B,)
        logit = self.bias + fm + self.deep(v.flatten(1)).squeeze(1)
        if self.linear is not None:
            logit = logit + torch.cat([w(ids[:, i]) for i, w in enumerate(self.linear)], dim=1).sum(1)
        return logit


class DCNv2(nn.Module):
    """Per-field nn.EmbeddingBag (one multi-hot history bag with offsets), two cross layers, a deep MLP."""

    def __init__(self, cross_layers: int = 2) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(r, DIM, mode="sum") for r in ROWS)
        self.history = nn.EmbeddingBag(HISTORY_ROWS, DIM, mode="mean")
        width = (len(ROWS) + 1) * DIM
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(cross_layers))
        self.deep = nn.Sequential(nn.Linear(width, 32), nn.ReLU())
        self.out = nn.Linear(32 + width, 1)

    def forward(self, ids: torch.Tensor, history: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        fields = [bag(ids[:, i:i + 1]) for i, bag in enumerate(self.bags)]  # (B, 1) bags of one id → (B, D)
        x0 = torch.cat([*fields, self.history(history, offsets)], dim=1)  # (B, (F + 1) D)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x  # DCN-v2 cross: x_{l+1} = x0 ⊙ (W x_l + b) + x_l
        return self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)


class FeaturesEmbedding(nn.Module):
    """pytorch-fm's ``FeaturesEmbedding``: one table for every field, ids shifted by per-field offsets."""

    def __init__(self, field_dims: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(sum(field_dims), dim)
        nn.init.xavier_uniform_(self.embedding.weight)
        self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) local ids → (B, F, D)
        return self.embedding(x + x.new_tensor(self.offsets).unsqueeze(0))


class SharedTableFM(nn.Module):
    """A factorisation machine plus an MLP over one shared table (pytorch-fm's DeepFM without its linear part)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = FeaturesEmbedding(ROWS, DIM)
        self.mlp = nn.Sequential(nn.Linear(len(ROWS) * DIM, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.features(ids)  # (B, F, D)
        return 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1) + self.mlp(v.flatten(1)).squeeze(1)


class TwoTower(nn.Module):
    """A user tower (f0, f2, f4) and an item tower (f1, f3), each lookups + MLP; the logit is their dot product."""

    USER, ITEM = (0, 2, 4), (1, 3)

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.ModuleDict({f"f{i}": nn.Embedding(ROWS[i], DIM) for i in self.USER})
        self.item = nn.ModuleDict({f"f{i}": nn.Embedding(ROWS[i], DIM) for i in self.ITEM})
        self.user_mlp = nn.Sequential(nn.Linear(len(self.USER) * DIM, 16), nn.ReLU(), nn.Linear(16, 8))
        self.item_mlp = nn.Sequential(nn.Linear(len(self.ITEM) * DIM, 16), nn.ReLU(), nn.Linear(16, 8))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.user_mlp(torch.cat([e(features[k]) for k, e in self.user.items()], dim=1))  # (B, 8)
        v = self.item_mlp(torch.cat([e(features[k]) for k, e in self.item.items()], dim=1))  # (B, 8)
        return (u * v).sum(1) + self.bias


FAMILIES = {"deepfm": DeepFM, "dcn-v2": DCNv2, "shared-table": SharedTableFM, "two-tower": TwoTower}


def inputs_of(model: nn.Module, log: dict[str, torch.Tensor], rows: slice) -> tuple:
    """The positional inputs of ``model``'s forward for the samples ``rows`` (a contiguous slice) of ``log``."""
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
    """``(inputs, labels)`` items of ``size`` samples, in order (what a user's DataLoader yields)."""
    n = len(log["labels"])
    return [(inputs_of(model, log, slice(s, min(s + size, n))), log["labels"][s:s + size]) for s in range(0, n, size)]


def train(model: nn.Module, log: dict[str, torch.Tensor], epochs: int = 4, lr: float = 0.02,
          batch_size: int = 256, seed: int = 0) -> nn.Module:
    """A plain user training loop (Adam, BCE on the logits, shuffled batch order); returns the model in eval."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    items = batches(model, log, batch_size)
    model.train()
    for _ in range(epochs):
        for k in torch.randperm(len(items)).tolist():
            x, y = items[k]
            loss = F.binary_cross_entropy_with_logits(model(*x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
