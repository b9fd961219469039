"""Pretraining runs: build.py composes a run from its config, state.py holds what a checkpoint saves, monitors.py
measures the run as it goes, loop.py trains it (`Trainer`)."""

from .build import TrainingParts, build_parts
from .loop import Trainer
from .state import Position, RunState

__all__ = ["Position", "RunState", "Trainer", "TrainingParts", "build_parts"]
