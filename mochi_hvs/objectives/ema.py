"""The config section shared by objectives whose target network follows the online one by an exponential moving
average of its weights (BYOL, ReLICv2, MSBReg): tau_base and its schedule, read by Objective.target_momentum."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ObjectiveConfig, setting

MOMENTUM_SCHEDULES = ("cosine", "constant")


@dataclass
class TargetEma(ObjectiveConfig):
    """The target's EMA momentum tau_base and its schedule (cosine: raised to 1 over training, as in BYOL)."""

    momentum: float = setting(0.99, "tau_base, the target's EMA momentum (BYOL and ReLICv2 on ImageNet: 0.996)",
                              bounds="[0, 1]")
    momentum_schedule: str = setting("cosine", "cosine: tau raised to 1 over training (BYOL's); constant",
                                     MOMENTUM_SCHEDULES)
