"""User-written models for benchmarks/any_model.py: plain torch, nothing from sharkrec.model.

Each model takes what a user's data loader gives it: ``forward(ids, *bags)`` with ``ids`` (B, S) int64
(one column per single-hot field) and, per multi-hot field, its bag ``values`` (nnz,) and ``offsets``
(B,) bag starts (``nn.EmbeddingBag``'s call). :class:`Layout` says which fields are which and turns a
sharkrec :class:`~sharkrec.data.batch.Batch` of an encoded split into those inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Layout:
    """The sparse fields of a dataset, in schema order, and which of them are multi-hot bags."""

    names: tuple[str, ...]
    rows: tuple[int, ...]
    multi_hot: tuple[bool, ...]

    @property
    def single(self) -> list[int]:
        return [i for i, m in enumerate(self.multi_hot) if not m]

    @property
    def bags(self) -> list[int]:
        return [i for i, m in enumerate(self.multi_hot) if m]

    def inputs(self, batch) -> tuple[Tensor, ...]:
        """A sharkrec batch → ``(ids (B, S), values_0, offsets_0, values_1, ...)``, the models' inputs."""
        ids = torch.stack([batch.sparse[i].values for i in self.single], dim=1)
        out = [ids]
        for i in self.bags:
            field = batch.sparse[i]
            out += [field.values, field.offsets[:-1]]  # (nnz,), (B,) bag starts
        return tuple(out)


def _lookups(embeddings: nn.ModuleDict, layout: Layout, ids: Tensor, bags: Sequence[Tensor], *,
             one_id_bags: bool = False) -> list[Tensor]:
    """One (B, D) vector per field, in schema order (``one_id_bags``: single-hot ids go in as (B, 1) bags)."""
    single = iter(range(ids.shape[1]))
    bag = iter(range(0, len(bags), 2))
    out = []
    for name, multi in zip(layout.names, layout.multi_hot, strict=True):
        if multi:
            k = next(bag)
            out.append(embeddings[name](bags[k], bags[k + 1]))
        else:
            j = next(single)
            out.append(embeddings[name](ids[:, j:j + 1] if one_id_bags else ids[:, j]))
    return out


def _tables(layout: Layout, dim: int, bag_mode: str) -> nn.ModuleDict:
    tables = nn.ModuleDict()
    for name, rows, multi in zip(layout.names, layout.rows, layout.multi_hot, strict=True):
        tables[name] = nn.EmbeddingBag(rows, dim, mode=bag_mode) if multi else nn.Embedding(rows, dim)
        nn.init.normal_(tables[name].weight, std=0.01)
    return tables


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class DeepFM(nn.Module):
    """Per-field lookups (nn.Embedding; nn.EmbeddingBag mean for multi-hot), an FM second-order term, a deep MLP.

    logit = b + ½ Σ_d [(Σ_f v_fd)² − Σ_f v_fd²] + MLP(concat v_f)
    """

    def __init__(self, layout: Layout, dim: int = 16, hidden: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        self.layout = layout
        self.embeddings = _tables(layout, dim, "mean")
        self.deep = nn.Sequential(mlp((len(layout.names) * dim, *hidden)), nn.Linear(hidden[-1], 1))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, ids: Tensor, *bags: Tensor) -> Tensor:
        v = torch.stack(_lookups(self.embeddings, self.layout, ids, bags), dim=1)  # (B, F, D)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)  # (B,)
        return self.bias + fm + self.deep(v.flatten(1)).squeeze(1)


class DCNv2(nn.Module):
    """Per-field nn.EmbeddingBag ((B, 1) bags for single-hot fields, values + offsets for multi-hot), full-rank
    cross layers x_{l+1} = x0 ⊙ (W x_l + b) + x_l in parallel with a deep MLP."""

    def __init__(self, layout: Layout, dim: int = 16, cross_layers: int = 2, hidden: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        self.layout = layout
        self.embeddings = nn.ModuleDict({name: nn.EmbeddingBag(rows, dim, mode="mean" if multi else "sum")
                                         for name, rows, multi in zip(layout.names, layout.rows, layout.multi_hot,
                                                                      strict=True)})
        for table in self.embeddings.values():
            nn.init.normal_(table.weight, std=0.01)
        width = len(layout.names) * dim
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(cross_layers))
        self.deep = mlp((width, *hidden))
        self.out = nn.Linear(width + hidden[-1], 1)

    def forward(self, ids: Tensor, *bags: Tensor) -> Tensor:
        x0 = torch.cat(_lookups(self.embeddings, self.layout, ids, bags, one_id_bags=True), dim=1)  # (B, F D)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)


class PlainDLRM(nn.Module):
    """A DLRM as a user writes it (no dense features): one nn.Embedding per field, pairwise dots, a top MLP.

    :meth:`copy_from` loads the weights of sharkrec's own DLRM with the same shapes, so both compute the same.
    """

    def __init__(self, layout: Layout, dim: int = 16, top: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        self.layout = layout
        self.embeddings = _tables(layout, dim, "sum")
        fields = len(layout.names)
        rows, cols = torch.triu_indices(fields, fields, offset=1)
        self.register_buffer("pairs", rows * fields + cols, persistent=False)
        self.top = nn.Sequential(mlp((fields * (fields - 1) // 2, *top)), nn.Linear(top[-1], 1))

    def forward(self, ids: Tensor, *bags: Tensor) -> Tensor:
        v = torch.stack(_lookups(self.embeddings, self.layout, ids, bags), dim=1)  # (B, F, D)
        dots = torch.bmm(v, v.transpose(1, 2)).flatten(1).index_select(1, self.pairs)  # (B, F(F-1)/2)
        return self.top(dots).squeeze(1)

    @torch.no_grad()
    def copy_from(self, native: nn.Module) -> PlainDLRM:
        """Take the tables and the head's linear layers of a sharkrec DLRM (shared-bottom head, one task)."""
        for name in self.layout.names:
            self.embeddings[name].weight.copy_(native.embedding.table(name))
        mine = [m for m in self.top.modules() if isinstance(m, nn.Linear)]
        theirs = [m for m in native.head.modules() if isinstance(m, nn.Linear)]
        if [tuple(m.weight.shape) for m in mine] != [tuple(m.weight.shape) for m in theirs]:
            raise ValueError("the native DLRM's head does not match this top MLP; build both with the same sizes")
        for a, b in zip(mine, theirs, strict=True):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        return self


MODELS = {"deepfm": DeepFM, "dcn-v2": DCNv2}
