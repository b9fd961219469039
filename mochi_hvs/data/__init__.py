"""Datasets, view sampling and augmentation."""

from .datasets import DatasetError, ImageSet, balanced_subset, load_images
from .loader import EpochSampler, eval_loader, pretrain_loader
from .views import ViewSampler

__all__ = [
    "DatasetError", "EpochSampler", "ImageSet", "ViewSampler",
    "balanced_subset", "eval_loader", "load_images", "pretrain_loader",
]
