"""Alignment and uniformity of contrastive embeddings (Wang & Isola, ICML 2020) on a fixed held-out batch."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import Config
from ..data.augment import post_crop_transform
from ..data.datasets import balanced_subset, load_images
from ..data.loader import MultiViewDataset
from ..data.views import ViewSampler
from ..models.moco import Encoder


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """E ||f(x) - f(y)||^alpha over positive pairs (rows of x and y); lower is better aligned."""
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E exp(-t ||f(x) - f(x')||^2) over distinct pairs; lower is more uniform on the sphere."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def pair_retrieval(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of the 2n views (rows of x, then of y) whose nearest other view by cosine similarity is their
    partner: held-out instance discrimination, 1 / (2n - 1) by chance; a collapsed embedding scores near chance."""
    z = nn.functional.normalize(torch.cat([x, y]), dim=1)
    similarity = z @ z.T
    similarity.fill_diagonal_(-float("inf"))
    n = x.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return (similarity.argmax(dim=1) == partner).float().mean()


class EmbeddingAnalysis:
    """Two fixed augmented views of a class-balanced held-out set (test split), embedded on demand."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        data = cfg.data
        test = load_images(data.name, data.root, "test")
        test = test.subset(balanced_subset(test.labels, cfg.eval.analysis_samples, cfg.seed))
        post = post_crop_transform(data.augmentation, data.image_size, data.mean, data.std, tuple(data.color_jitter))
        pairs = MultiViewDataset(test, ViewSampler(2, data.image_size, post, tuple(data.crop_scale)), cfg.seed)
        self.views = torch.stack([pairs[(i, 0)].views for i in range(len(test))]).to(device)
        self.batch_size = cfg.eval.batch_size

    @torch.no_grad()
    def evaluate(self, encoder: Encoder) -> dict[str, float]:
        """Alignment, uniformity and view-pair retrieval top-1 of `encoder`'s normalised embeddings (eval mode)."""
        was_training = encoder.training
        encoder.eval()
        try:
            flat = self.views.flatten(0, 1)
            z = torch.cat([encoder(chunk).embedding for chunk in flat.split(self.batch_size)]).float()
        finally:
            encoder.train(was_training)
        z1, z2 = z.view(-1, 2, z.shape[1]).unbind(dim=1)
        return {
            "analysis/alignment": float(alignment(z1, z2)),
            "analysis/uniformity": float(0.5 * (uniformity(z1) + uniformity(z2))),
            "analysis/pair_top1": float(pair_retrieval(z1, z2)),
        }
