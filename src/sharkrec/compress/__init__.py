"""The compression pipeline (SHARK §4): F-Permutation pruning + F-Quantization, budget split searched."""

from sharkrec.compress.pipeline import CANDIDATE_FINE_TUNE, DEFAULT_FINE_TUNE, CompressConfig, CompressResult, compress
from sharkrec.compress.run import run_compress
from sharkrec.compress.search import Candidate, Prediction, enumerate_candidates, predict_candidates

__all__ = [
    "CANDIDATE_FINE_TUNE",
    "DEFAULT_FINE_TUNE",
    "Candidate",
    "CompressConfig",
    "CompressResult",
    "Prediction",
    "compress",
    "enumerate_candidates",
    "predict_candidates",
    "run_compress",
]
