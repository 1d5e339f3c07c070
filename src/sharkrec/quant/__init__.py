"""F-Quantization (SHARK §3.2): row-wise mixed-precision embedding storage and its baselines."""

from sharkrec.quant.alpt import ALPTEmbedding, ALPTOptimizer
from sharkrec.quant.build import PRECISIONS, build_embedding, expected_priorities
from sharkrec.quant.codec import Precision
from sharkrec.quant.dropin import from_float, post_training, quantize
from sharkrec.quant.embedding import MemoryReport, MixedPrecisionEmbedding, TierOptimizer
from sharkrec.quant.priority import FQuantPolicy

__all__ = [
    "PRECISIONS",
    "ALPTEmbedding",
    "ALPTOptimizer",
    "FQuantPolicy",
    "MemoryReport",
    "MixedPrecisionEmbedding",
    "Precision",
    "TierOptimizer",
    "build_embedding",
    "expected_priorities",
    "from_float",
    "post_training",
    "quantize",
]
