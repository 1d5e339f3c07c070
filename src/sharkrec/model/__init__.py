"""Models: DLRM with shared-bottom / MMoE heads over a swappable per-field embedding layer."""

from sharkrec.model.dlrm import DENSE_FIELD, DLRM, DLRMConfig, HeadKind, InteractionKind
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding

__all__ = ["DENSE_FIELD", "DLRM", "DLRMConfig", "FieldEmbedding", "FloatEmbedding", "HeadKind", "InteractionKind"]
