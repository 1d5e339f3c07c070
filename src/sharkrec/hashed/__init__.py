"""Embedding layers with no per-value state: QR trick, ROBE-Z, hot/cold hybrid and mixed dimensions.

Each is a :class:`~sharkrec.model.embedding.FieldEmbedding` store trained from scratch (sparse rows,
row-wise optimizers), whose bytes are the tensors it holds; :func:`hashed_embedding` sizes one for a
byte budget. :class:`HashedTailEmbedding` is the wrapper ``sharkrec compress`` puts over a trained
model's rows: hot values keep theirs, the rest share hashed rows (:func:`hash_tail`).
"""

from sharkrec.hashed.budget import HashedKind, hashed_embedding, hashed_model, split_budget
from sharkrec.hashed.hashing import HASH_PRIME, hash_parameters, universal_hash
from sharkrec.hashed.hybrid import HybridEmbedding, hottest_ids
from sharkrec.hashed.mixed import MixedDimEmbedding
from sharkrec.hashed.qr import Combine, QREmbedding
from sharkrec.hashed.robe import RobeEmbedding
from sharkrec.hashed.tail import HashedTailEmbedding, TailLayout, hash_tail, tail_layout

__all__ = [
    "HASH_PRIME",
    "Combine",
    "HashedKind",
    "HashedTailEmbedding",
    "HybridEmbedding",
    "MixedDimEmbedding",
    "QREmbedding",
    "RobeEmbedding",
    "TailLayout",
    "hash_parameters",
    "hash_tail",
    "hashed_embedding",
    "hashed_model",
    "hottest_ids",
    "split_budget",
    "tail_layout",
    "universal_hash",
]
