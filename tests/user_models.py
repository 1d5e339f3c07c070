"""Small user models written the way users write them (plain nn.Module, their own lookups) and data for them.

- :class:`DeepFM`: one ``nn.Embedding`` per field, an FM term and an MLP; input (B, F) int64 ids.
- :class:`BagModel`: a user id ``nn.Embedding`` and a mean ``nn.EmbeddingBag`` of tags; input (users (B,),
  tags (B, L)).

Ids are Zipf-distributed (each field's hottest ids at random positions, so "low id" never means "frequent")
and the label is a noisy function of a few fields' ids.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharkrec.data.user import UserData, from_batches
from sharkrec.model.fieldmap import find_fields
from sharkrec.model.wrapped import FieldModel
from sharkrec.train.metrics import task_metrics

ROWS = (200, 100, 50, 30)
DIM = 16
USERS, TAGS, TAGS_PER_SAMPLE = 120, 60, 3


class DeepFM(nn.Module):
    def __init__(self, rows: tuple[int, ...] = ROWS, dim: int = DIM, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embs = nn.ModuleList(nn.Embedding(r, dim) for r in rows)
        for emb in self.embs:
            nn.init.normal_(emb.weight, std=0.05)
        self.mlp = nn.Sequential(nn.Linear(len(rows) * dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: Tensor) -> Tensor:  # x (B, F) -> logits (B,)
        v = torch.stack([e(x[:, i]) for i, e in enumerate(self.embs)], 1)  # (B, F, D)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return fm + self.mlp(v.flatten(1)).squeeze(1)


class BagModel(nn.Module):
    def __init__(self, dim: int = DIM, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.user = nn.Embedding(USERS, dim)
        self.tags = nn.EmbeddingBag(TAGS, dim, mode="mean")
        nn.init.normal_(self.user.weight, std=0.05)
        nn.init.normal_(self.tags.weight, std=0.05)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, users: Tensor, tags: Tensor) -> Tensor:  # (B,), (B, L) -> (B,)
        return self.mlp(torch.cat([self.user(users), self.tags(tags)], 1)).squeeze(1)


def _zipf(rows: int, n: int, generator: torch.Generator, order: Tensor) -> Tensor:
    weights = 1.0 / torch.arange(1, rows + 1).float() ** 1.1
    return order[torch.multinomial(weights, n, replacement=True, generator=generator)]


_ORDERS = [torch.randperm(r, generator=torch.Generator().manual_seed(100 + i)) for i, r in enumerate(ROWS)]
_EFFECT = [torch.randn(r, generator=torch.Generator().manual_seed(200 + i)) for i, r in enumerate(ROWS)]


def deepfm_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """(N, F) ids and (N,) 0/1 labels: logit = 1.5·(effect of field 0 + effect of field 1)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.stack([_zipf(r, n, generator, _ORDERS[i]) for i, r in enumerate(ROWS)], 1)
    logit = 1.5 * (_EFFECT[0][x[:, 0]] + _EFFECT[1][x[:, 1]])
    y = (torch.rand(n, generator=generator) < torch.sigmoid(logit)).float()
    return x, y


_USER_ORDER = torch.randperm(USERS, generator=torch.Generator().manual_seed(300))
_TAG_ORDER = torch.randperm(TAGS, generator=torch.Generator().manual_seed(301))
_USER_EFFECT = torch.randn(USERS, generator=torch.Generator().manual_seed(302))
_TAG_EFFECT = torch.randn(TAGS, generator=torch.Generator().manual_seed(303))


def bag_data(n: int, seed: int) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """((N,) users, (N, L) tags) and (N,) labels: logit = 1.5·user effect + 1.5·mean tag effect."""
    generator = torch.Generator().manual_seed(seed)
    users = _zipf(USERS, n, generator, _USER_ORDER)
    tags = _zipf(TAGS, n * TAGS_PER_SAMPLE, generator, _TAG_ORDER).reshape(n, TAGS_PER_SAMPLE)
    logit = 1.5 * _USER_EFFECT[users] + 1.5 * _TAG_EFFECT[tags].mean(1)
    y = (torch.rand(n, generator=generator) < torch.sigmoid(logit)).float()
    return (users, tags), y


def take(inputs: Tensor | tuple[Tensor, ...], index: slice) -> Tensor | tuple[Tensor, ...]:
    return tuple(t[index] for t in inputs) if isinstance(inputs, tuple) else inputs[index]


def call(model: nn.Module, inputs: Tensor | tuple[Tensor, ...]) -> Tensor:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def train_plain(model: nn.Module, inputs: Tensor | tuple[Tensor, ...], y: Tensor, epochs: int = 3,
                lr: float = 1e-2, batch: int = 256) -> nn.Module:
    """The user's own training loop (Adam on everything)."""
    optimizer = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        for start in range(0, len(y), batch):
            part = slice(start, start + batch)
            loss = F.binary_cross_entropy_with_logits(call(model, take(inputs, part)), y[part])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def train_fquant(qmodel: nn.Module, items, dense_lr: float, rows_lr: float) -> nn.Module:
    """The README's F-Quantization loop in the user's hands: ``observe`` labels, then an ordinary step with
    Adam on the dense part and the embedding's own row optimizer. ``items``: ``(inputs tuple, labels (B,))``."""
    dense_opt = torch.optim.Adam(qmodel.dense_parameters(), lr=dense_lr)
    rows_opt = qmodel.embedding.make_sparse_optimizer("adagrad", rows_lr)
    qmodel.train()
    for x, y in items:
        qmodel.observe(y)
        logits = qmodel(*x)
        loss = F.binary_cross_entropy_with_logits(logits.reshape(len(y), -1)[:, 0], y.float())
        dense_opt.zero_grad()
        rows_opt.zero_grad()
        loss.backward()
        dense_opt.step()
        rows_opt.step()
    return qmodel.eval()


def auc(model: nn.Module, inputs: Tensor | tuple[Tensor, ...], y: Tensor) -> float:
    with torch.no_grad():
        scores = torch.sigmoid(call(model.eval(), inputs))
    return float(task_metrics(y[:, None].numpy(), scores[:, None].numpy().astype(np.float64), ("label",))
                 ["label"]["auc"])


def batches(inputs: Tensor | tuple[Tensor, ...], y: Tensor, size: int = 500) -> list:
    return [(take(inputs, slice(i, i + size)), y[i:i + size]) for i in range(0, len(y), size)]


def wrapped_with_data(model: nn.Module, make_data, n: int = 3000) -> tuple[FieldModel, UserData]:
    """The user's model wrapped, and its train / valid / test splits recorded through it."""
    x, _ = make_data(n, 1)
    wrapped = FieldModel.wrap(model, find_fields(model, take(x, slice(0, 8))))
    splits = [from_batches(wrapped, batches(*make_data(size, seed))) for size, seed in ((n, 1), (1000, 2), (1000, 3))]
    return wrapped, UserData(wrapped, *splits)
