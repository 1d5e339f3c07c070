"""Saec: similarity-aware clustering of feature values (value → shared row), with fast frequency-based k-means."""

from sharkrec.cluster.embedding import ClusteredEmbedding, FoldedVocabulary, fold_vocabulary
from sharkrec.cluster.kmeans import KMeansResult, Metric, kmeans, nearest_centroid, weighted_error
from sharkrec.cluster.run import cluster_model, run_cluster
from sharkrec.cluster.saec import ClusterMethod, Saec, SaecConfig, allocate_clusters, quantize_clusters

__all__ = [
    "ClusterMethod",
    "ClusteredEmbedding",
    "FoldedVocabulary",
    "KMeansResult",
    "Metric",
    "Saec",
    "SaecConfig",
    "allocate_clusters",
    "cluster_model",
    "fold_vocabulary",
    "kmeans",
    "nearest_centroid",
    "quantize_clusters",
    "run_cluster",
    "weighted_error",
]
