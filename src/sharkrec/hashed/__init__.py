"""Embedding layers with no per-value state: QR trick, ROBE-Z, hot/cold hybrid and mixed dimensions.

Each is a :class:`~sharkrec.model.embedding.FieldEmbedding` store trained from scratch (sparse rows,
row-wise optimizers), whose bytes are the tensors it holds; :func:`hashed_embedding` sizes one for a
byte budget.
"""

from sharkrec.hashed.budget import HashedKind, hashed_embedding, hashed_model, split_budget
from sharkrec.hashed.hashing import HASH_PRIME, hash_parameters, universal_hash
from sharkrec.hashed.hybrid import HybridEmbedding, hottest_ids
from sharkrec.hashed.mixed import MixedDimEmbedding
from sharkrec.hashed.qr import Combine, QREmbedding
from sharkrec.hashed.robe import RobeEmbedding

__all__ = [
    "HASH_PRIME",
    "Combine",
    "HashedKind",
    "HybridEmbedding",
    "MixedDimEmbedding",
    "QREmbedding",
    "RobeEmbedding",
    "hash_parameters",
    "hashed_embedding",
    "hashed_model",
    "hottest_ids",
    "split_budget",
    "universal_hash",
]
