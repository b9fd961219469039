"""Evaluators of pretrained backbones (usable inside the training loop and from eval/).

Light to import (the training loop needs only the kNN monitor); the other evaluators live in
`linear`, `semisup` and `detection`, the unsupervised choice of images to label (USL) in `label_selection` (the
algorithm) and `usl` (its data), their settings in mochi_hvs.config.evaluators (the config sections
eval.linear / eval.semisup / eval.select / eval.detection), their commands in `commands` and its plumbing in `cli`.
"""

from .features import extract_features
from .knn import KnnMonitor, KnnResult, knn_scores_by_k, topk_accuracy, weighted_knn_scores
from .search import search

__all__ = ["KnnMonitor", "KnnResult", "extract_features", "knn_scores_by_k", "search", "topk_accuracy",
           "weighted_knn_scores"]
