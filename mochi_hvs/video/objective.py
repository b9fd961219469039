"""The video objective: temporal InfoNCE between two clips of one video taken at different times (the other
videos' clips are the negatives), plus distillation of a frozen image model: a head regresses, at every time step,
the image model's feature of that frame from the video encoder's feature of it (normalised regression, 2 - 2 cos).

    loss = InfoNCE(g(f(clip_a)), g(f(clip_b))) + distill_weight * mean_t (2 - 2 cos(h(f_t(clip)), teacher(frame_t)))

f: the video encoder (its clip feature, the mean over time steps, and its per-step features f_t), g: the
projection head, h: the distillation head; both clips of a pair are distilled."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .encoder import VideoEncoder


def temporal_info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of (B, D) embeddings: row i of `first` has `second`'s row i as its positive and the other
    rows as negatives, and the other way round; the mean of both cross-entropies."""
    a, b = F.normalize(first, dim=1), F.normalize(second, dim=1)
    logits = a @ b.T / temperature
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def distillation_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised regression, 2 - 2 cos(predicted, target), averaged over every leading index (clip, time step)."""
    return (2 - 2 * F.cosine_similarity(predicted, target, dim=-1)).mean()


def _mlp(width: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


class VideoSsl(nn.Module):
    """The trained modules: the video encoder, its projection head and, when distilling, the head that predicts the
    image model's per-frame features (`target_width` of them)."""

    def __init__(self, encoder: VideoEncoder, projection_dim: int, target_width: int | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = _mlp(encoder.width, encoder.width, projection_dim)
        self.distill_head = None if target_width is None else _mlp(encoder.width, encoder.width, target_width)

    def losses(self, pairs: torch.Tensor, targets: torch.Tensor | None, temperature: float,
               distill_weight: float) -> dict[str, torch.Tensor]:
        """`loss`, `contrastive` and, with targets, `distill` of (B, 2, T, 3, S, S) clip pairs; `targets`: the image
        model's features of the same frames (B, 2, T, D)."""
        batch = pairs.shape[0]
        steps = self.encoder.time_steps(pairs.flatten(0, 1))  # (2B, C, T)
        z = self.projector(steps.mean(dim=2)).view(batch, 2, -1)
        out = {"contrastive": temporal_info_nce(z[:, 0], z[:, 1], temperature)}
        out["loss"] = out["contrastive"]
        if targets is not None:
            if self.distill_head is None:
                raise ValueError("distillation targets given to a model built without a distillation head")
            per_step = steps.transpose(1, 2)  # (2B, T, C)
            predicted = self.distill_head(per_step.flatten(0, 1)).view(*per_step.shape[:2], -1)
            out["distill"] = distillation_loss(predicted, targets.flatten(0, 1))
            out["loss"] = out["loss"] + distill_weight * out["distill"]
        return out
