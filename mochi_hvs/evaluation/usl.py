"""The work of `mochi-select`: the training images to choose from, their L2-normalised features (a backbone's or the
raw pixels) and USL's choice among them, as indices of the labelled training set (the indices eval.semisup.split_file
reads). No label is read before the choice is made."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, ConfigError
from ..config.evaluators import SelectSettings
from ..data.datasets import labelled_training_images
from ..data.loader import eval_loader
from ..data.subsets import random_subset
from .features import extract_features
from .label_selection import usl_select
from .pixel_cache import pixel_features


class LabelSelection:
    """The labelled training set of a config's dataset, the pool to select from (all of it unless eval.select.pool)
    and the checked settings."""

    def __init__(self, cfg: Config, settings: SelectSettings, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.cfg = cfg
        self.settings = settings
        self.device = device
        self.amp_dtype = amp_dtype
        self.images = labelled_training_images(cfg.data.name, cfg.data.root)
        if settings.budget is None:
            raise ConfigError("'eval.select.budget' is not set: how many images to select, e.g. --budget 40")
        if settings.pool is not None and settings.pool > len(self.images):
            raise ConfigError(f"'eval.select.pool' = {settings.pool} exceeds the {len(self.images)} training images "
                              f"of {cfg.data.name}")
        self.pool = (np.arange(len(self.images)) if settings.pool is None else
                     random_subset(len(self.images), settings.pool, settings.seed))
        where = f"the {len(self.pool)} training images to select from"
        if settings.budget > len(self.pool):
            raise ConfigError(f"'eval.select.budget' = {settings.budget} exceeds {where}")
        if settings.knn_k >= len(self.pool):
            raise ConfigError(f"'eval.select.knn_k' = {settings.knn_k} needs more than {where}")

    def features(self, backbone: nn.Module | None) -> torch.Tensor:
        """L2-normalised features of the pool in pool order: the backbone's, or the raw pixels' when it is None."""
        images = self.images.subset(self.pool)
        if backbone is None:
            features, _ = pixel_features(images, self.cfg.data, self.cfg.eval.batch_size, self.device)
            return F.normalize(features, dim=1)
        loader = eval_loader(images, self.cfg.data, self.cfg.eval.batch_size)
        features, _ = extract_features(backbone, loader, self.device, self.amp_dtype)
        return features

    def select(self, backbone: nn.Module | None) -> np.ndarray:
        """Sorted indices into the labelled training set of the `budget` images USL chooses from the pool."""
        return self.pool[usl_select(self.features(backbone), self.settings)]
