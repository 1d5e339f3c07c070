"""The field path every compression stage runs on: what a model must offer, whoever built it.

sharkrec's own :class:`~sharkrec.model.dlrm.DLRM` and a user's network wrapped as a
:class:`~sharkrec.model.wrapped.FieldModel` both implement it, so importance, pruning, F-Quantization, Saec
and compress check for the protocol, never for a class::

    vectors = model.field_vectors(batch)              # (B, F, D), one row per field
    logits = model.logits_from_fields(vectors)        # (B, T)
    smaller = model.with_embedding(new_embedding)     # a new model around another FieldEmbedding
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

    @property
    def field_names(self) -> tuple[str, ...]: ...

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
