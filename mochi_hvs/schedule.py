"""Learning-rate and momentum schedules as functions of the global step."""

from __future__ import annotations

import bisect
import math


def lr_multiplier(step: int, total: int, warmup: int, kind: str, milestones: list[int] | None = None) -> float:
    """Factor on the base learning rate: linear warm-up, then cosine to 0, step decay (x0.1), or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if kind == "step":
        return 0.1 ** bisect.bisect_right(milestones or [], step)
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {kind!r}")


def momentum_at(step: int, total: int, base: float, kind: str) -> float:
    """Key-encoder momentum: constant, or cosine-increased from `base` to 1 (as in BYOL)."""
    if kind == "constant":
        return base
    if kind == "cosine":
        return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))
    raise ValueError(f"unknown momentum schedule {kind!r}")
