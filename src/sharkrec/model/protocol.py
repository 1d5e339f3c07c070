"""The field path every compression stage runs on: what a model must offer, whoever built it.

sharkrec's own :class:`~sharkrec.model.dlrm.DLRM` and a user's network wrapped as a
:class:`~sharkrec.model.wrapped.FieldModel` both implement it, so importance, pruning, F-Quantization, Saec
and compress check for the protocol, never for a class::

    vectors = model.field_vectors(batch)              # (B, F, D), one row per field
    logits = model.logits_from_fields(vectors)        # (B, T)
    smaller = model.with_embedding(new_embedding)     # a new model around another FieldEmbedding
    fresh = model.fresh_copy(seed)                    # same architecture, every weight drawn afresh (seeded)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from sharkrec.errors import ConfigError
from sharkrec.model.embedding import FieldEmbedding

#: the attributes :func:`check_field_path` looks for
MEMBERS = ("embedding", "field_vectors", "logits_from_fields", "with_embedding", "field_rows", "field_names",
           "sparse_names", "task_names", "num_dense", "embedding_dim")


@runtime_checkable
class FieldPathModel(Protocol):
    """A model whose sparse inputs pass through one :class:`FieldEmbedding` (``embedding``)."""

    embedding: FieldEmbedding
    training: bool  # nn.Module's mode, like the three methods below

    @property
    def field_names(self) -> tuple[str, ...]: ...

    @property
    def num_fields(self) -> int: ...

    @property
    def num_tasks(self) -> int: ...

    @property
    def sparse_names(self) -> tuple[str, ...]: ...

    @property
    def task_names(self) -> tuple[str, ...]: ...

    @property
    def num_dense(self) -> int: ...

    @property
    def embedding_dim(self) -> int: ...

    def field_vectors(self, batch: Any) -> Tensor: ...

    def logits_from_fields(self, vectors: Tensor, batch: Any = None) -> Tensor: ...

    def with_embedding(self, embedding: FieldEmbedding) -> Any: ...

    def field_rows(self) -> dict[str, int]: ...

    def fresh_copy(self, seed: int) -> Any:
        """The same architecture with every weight re-initialised as the model's own init does, seeded by
        ``seed`` (the caller's random state untouched); what a search "from scratch" trains."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


def reset_network(network: nn.Module) -> None:
    """Re-initialise every parameter of ``network`` the way torch modules initialise
    themselves: ``reset_parameters()`` of every module that has one (nn.Linear, nn.LayerNorm, ...). A parameter
    no such module covers is set to 0 when it is a scalar or a vector (a free bias, as DeepFM's global bias
    starts); a matrix nobody resets is a one-line :class:`ConfigError`, since its init is unknown.

    Draws from torch's global random stream: seed it (under ``torch.random.fork_rng``) for a reproducible copy.
    """
    covered: set[int] = set()
    for module in network.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            covered.update(id(p) for p in module.parameters())
    for name, parameter in network.named_parameters():
        if id(parameter) in covered:
            continue
        if parameter.ndim > 1:
            raise ConfigError(f"parameter {name!r} {tuple(parameter.shape)} belongs to no module with "
                              "reset_parameters(), so a fresh copy cannot re-initialise it; give its module a "
                              "reset_parameters() method or search from the trained weights (from_scratch=False)")
        with torch.no_grad():
            parameter.zero_()


def check_field_path(model: Any, action: str) -> None:
    """One-line :class:`ConfigError` when ``model`` lacks the field path (``action``: "compress", ...)."""
    missing = [name for name in MEMBERS if not hasattr(model, name)]
    if missing or not isinstance(getattr(model, "embedding", None), FieldEmbedding):
        what = ", ".join(missing) if missing else "a sharkrec FieldEmbedding as .embedding"
        raise ConfigError(f"cannot {action} a {type(model).__name__}: it lacks {what}; wrap your model first: "
                          "FieldModel.wrap(model, find_fields(model, example_inputs)) (sharkrec.model.wrapped)")


class FieldPathMethods:
    """What every field-path model derives from its ``embedding`` and ``__call__`` (mixed into ``nn.Module``s)."""

    embedding: FieldEmbedding

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Embedding parameters with sparse gradients (for SparseAdam / sparse Adagrad)."""
        return self.embedding.sparse_parameters()

    def named_dense_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every other trainable parameter, by name (for a dense optimizer such as Adam)."""
        sparse = {id(p) for p in self.sparse_parameters()}
        module: Any = self
        return ((n, p) for n, p in module.named_parameters() if id(p) not in sparse)

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_dense_parameters()]

    @torch.no_grad()
    def predict_proba(self, batch: Any) -> Tensor:
        """(B, T) click probabilities, computed in eval mode (no dropout); the mode is restored."""
        module: Any = self
        was_training = module.training
        module.eval()
        try:
            return torch.sigmoid(module(batch))
        finally:
            module.train(was_training)
