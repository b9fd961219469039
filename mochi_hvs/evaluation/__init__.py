"""Evaluators of pretrained backbones (usable inside the training loop and from eval/)."""

from .features import extract_features
from .knn import KnnMonitor, KnnResult, topk_accuracy, weighted_knn_scores

__all__ = ["KnnMonitor", "KnnResult", "extract_features", "topk_accuracy", "weighted_knn_scores"]
