"""Training a video encoder on a clip set: seeded batches of videos, two clips of each at different times, the
objective of objective.py (with or without distillation), AdamW on a cosine schedule."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .clips import ClipSet, ClipSpec, centre_batch, check_clips, normalised, pair_batch
from .encoder import VideoEncoder
from .objective import VideoSsl
from .recipe import VideoTrain

EVAL_BATCH = 128


@dataclass
class TrainResult:
    """The trained modules, the last step's losses and the seconds spent."""

    model: VideoSsl
    final: dict[str, float]
    seconds: float


def gather_targets(targets: list[torch.Tensor], videos: np.ndarray, indices: torch.Tensor) -> torch.Tensor:
    """The image model's features (B, 2, T, D) of the frames `indices` (B, 2, T) of `videos`, on the targets'
    device."""
    return torch.stack([targets[v][i.to(targets[v].device)] for v, i in zip(videos, indices, strict=True)])


def train_video(clips: ClipSet, spec: ClipSpec, settings: VideoTrain, seed: int, mean: list[float],
                std: list[float], targets: list[torch.Tensor] | None = None,
                device: torch.device | str = "cpu") -> TrainResult:
    """Train on `device` from a seeded initialisation (drawn on the CPU, the same on every device) for settings.steps
    steps; `targets` (per-frame image-model features of every video) turn distillation on. Step k's videos and clip
    starts come from the generator (seed, k)."""
    check_clips(clips, spec, pair=True)
    torch.manual_seed(seed)
    target_width = None if targets is None else targets[0].shape[1]
    model = VideoSsl(VideoEncoder(settings.width), settings.projection_dim, target_width).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    targets = None if targets is None else [t.to(device) for t in targets]
    batch = min(settings.batch_size, len(clips))
    start = time.perf_counter()
    for step in range(settings.steps):
        rng = np.random.default_rng([seed, step])
        videos = rng.choice(len(clips), size=batch, replace=False)
        frames, indices = pair_batch(clips, videos, spec, rng)
        step_targets = None if targets is None else gather_targets(targets, videos, indices)
        losses = model.losses(normalised(frames.to(device), mean_t, std_t), step_targets, settings.temperature,
                              settings.distill_weight)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        schedule.step()
    final = {key: float(value.detach()) for key, value in losses.items()}
    return TrainResult(model, final, time.perf_counter() - start)


@torch.no_grad()
def clip_features(encoder: VideoEncoder, clips: ClipSet, spec: ClipSpec, mean: list[float],
                  std: list[float]) -> torch.Tensor:
    """The encoder's feature (N, C) of every video's centre clip, in eval mode on the encoder's device, returned on
    the CPU (the probes' input)."""
    check_clips(clips, spec, pair=False)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    rows = []
    for chunk in np.array_split(np.arange(len(clips)), max(1, -(-len(clips) // EVAL_BATCH))):
        frames, _ = centre_batch(clips, chunk, spec)
        rows.append(encoder(normalised(frames.to(device), mean_t, std_t)).cpu())
    encoder.train(was_training)
    return torch.cat(rows)


def centre_clip_targets(targets: list[torch.Tensor], clips: ClipSet, spec: ClipSpec) -> torch.Tensor:
    """The image model alone: its per-frame features averaged over each video's centre clip (N, D)."""
    _, indices = centre_batch(clips, np.arange(len(clips)), spec)
    return torch.stack([targets[v][i.to(targets[v].device)].mean(dim=0) for v, i in enumerate(indices)]).cpu()
