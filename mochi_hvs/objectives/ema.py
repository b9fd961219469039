"""The config section shared by objectives whose target network follows the online one by an exponential moving
average of its weights (BYOL, ReLICv2, MSBReg): tau_base and its schedule, read by Objective.target_momentum."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, ObjectiveConfig

MOMENTUM_SCHEDULES = ("cosine", "constant")


@dataclass
class TargetEma(ObjectiveConfig):
    """The target's EMA momentum tau_base and its schedule (cosine: raised to 1 over training, as in BYOL)."""

    momentum: float = 0.99  # tau_base (BYOL and ReLICv2 on ImageNet: 0.996)
    momentum_schedule: str = "cosine"  # cosine | constant

    def validate(self, cfg: Config, source: str) -> None:
        """tau in [0, 1], a known schedule."""
        name = self.name
        self.check(0 <= self.momentum <= 1, source, f"{name}.momentum", f"must be in [0, 1]; got {self.momentum}")
        self.check(self.momentum_schedule in MOMENTUM_SCHEDULES, source, f"{name}.momentum_schedule",
                   f"must be one of {', '.join(MOMENTUM_SCHEDULES)}; got {self.momentum_schedule!r}")
