"""A run's resumable state: where it stands, and the checkpoint that holds everything needed to continue exactly."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, to_dict
from ..distributed import DistEnv
from ..errors import TrainingDiverged
from ..provenance import code_commit
from ..run_files import LAST, TASK
from ..weights.atomic import NoSpaceError, remove_stale_temporaries
from ..weights.checkpoint import FORMAT, capture_rng, load_checkpoint, nonfinite_entries, restore_rng, save_checkpoint
from ..weights.errors import CheckpointError
from ..weights.resume_changes import check_resume_changes, config_changes
from .build import TrainingParts


@dataclass
class Position:
    """Where training stands: the epoch, batches done in it, the global step, and the training seconds spent up to
    the last checkpoint, counted from step `seconds_from_step` (0, unless the run was resumed from a checkpoint
    written before the seconds were kept)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    train_seconds: float = 0.0
    seconds_from_step: int = 0


class RunState:
    """The position of a run and its rolling checkpoint: model, queue, optimiser, schedules, position, RNG."""

    def __init__(self, cfg: Config, parts: TrainingParts, env: DistEnv, verify: bool = True) -> None:
        """verify: check the SHA-256 digest of a checkpoint before resuming from it."""
        self.cfg = cfg
        self.parts = parts
        self.env = env
        self.verify = verify
        self.position = Position()
        self.last_good: tuple[Path, int] | None = None  # the last checkpoint written or resumed from, and its step
        if env.is_main and (stale := remove_stale_temporaries(self.checkpoint_path)):  # the run folder is locked
            print(f"removed {len(stale)} temporary checkpoint file(s) left by interrupted writes", file=sys.stderr)

    @property
    def checkpoint_path(self) -> Path:
        """The run's rolling checkpoint file."""
        return self.cfg.run_dir / LAST

    def last_good_text(self) -> str:
        """The last good checkpoint and its step, for messages."""
        return "none written yet" if self.last_good is None else f"{self.last_good[0]} (step {self.last_good[1]})"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, queue, optimiser, schedules, position, RNG; and the commit of
        the code that wrote it."""
        parts = self.parts
        return {
            "format": FORMAT,
            "config": to_dict(self.cfg),
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "epoch": self.position.epoch,
            "batch_in_epoch": self.position.batch_in_epoch,
            "global_step": self.position.global_step,
            "train_seconds": self.position.train_seconds,
            "seconds_from_step": self.position.seconds_from_step,
            "rng": capture_rng(),
            "commit": code_commit(),  # the code that wrote it: what an export's model card names
        }

    @property
    def task_just_ended(self) -> bool:
        """Whether the position is the end of a continual run's task (the start of the next epoch)."""
        return self.cfg.continual.enabled and self.position.batch_in_epoch == 0 and self.position.epoch > 0

    def save(self, rolling: bool = True) -> Path | None:
        """Atomically write the rolling checkpoint with its digest (main process only), then remove temporaries that
        interrupted writes left; in a continual run the checkpoint that ends a task is kept as task<index>.pth.
        rolling=False writes only that task checkpoint (the loop's choice while the representation looks collapsed:
        the last good rolling checkpoint stays, and the task is still measured as it ended). A state holding NaN or
        infinity (weights, buffers, queue, optimiser state) is never written: TrainingDiverged names it; a full disk
        is a CheckpointError. Either way the last good one stays."""
        state = self.state_dict()
        bad = nonfinite_entries({"model": state["model"], "optimizer": state["optimizer"]["state"]})
        step = self.position.global_step
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise TrainingDiverged(f"training diverged: at step {step} (epoch {self.position.epoch + 1}) the state to "
                                   f"save holds non-finite values in {', '.join(bad[:3])}{more}; it was not saved. "
                                   f"Last good checkpoint: {self.last_good_text()}")
        if not self.env.is_main:
            return None
        task = self.cfg.run_dir / TASK.format(self.position.epoch - 1) if self.task_just_ended else None
        if not rolling:
            return self._write(state, task) if task is not None else None
        path = self._write(state, self.checkpoint_path)
        self.last_good = (path, step)
        if task is not None:
            shutil.copyfile(path, task)
        return path

    def _write(self, state: dict, path: Path) -> Path:
        """save_checkpoint, a full disk as CheckpointError, then the interrupted writes' temporaries removed."""
        try:
            written = save_checkpoint(state, path)
        except NoSpaceError as err:
            kept = "no checkpoint was written before" if self.last_good is None else (
                f"the previous one at step {self.last_good[1]} is intact")
            raise CheckpointError(f"no space left on {err.folder} while writing the checkpoint; {kept}") from err
        remove_stale_temporaries(written)
        return written

    def load(self, path: Path) -> None:
        """Restore a checkpoint written by `save` (its digest checked unless verify is off)."""
        state = load_checkpoint(path, map_location=self.parts.device, verify=self.verify)
        self._adapt(state, path)
        parts = self.parts
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        parts.scaler.load_state_dict(state["scaler"])
        step = state["global_step"]
        self.position = Position(state["epoch"], state["batch_in_epoch"], step, state.get("train_seconds", 0.0),
                                 state.get("seconds_from_step", step))
        restore_rng(state["rng"])
        self.last_good = (Path(path), self.position.global_step)
        if self.env.is_main:
            print(f"resumed from {path} at epoch {self.position.epoch + 1}, "
                  f"batch {self.position.batch_in_epoch}, step {self.position.global_step}", file=sys.stderr)

    def _adapt(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint whose config differs in a setting a resume cannot change (one error naming them
        all); print the changes that apply, and make the stored optimiser hyperparameters, schedule base and loss
        scaler the ones this run's config defines, so that what is restored never overrides the config in use."""
        changes = config_changes(state["config"], self.cfg)
        check_resume_changes(changes, str(path))
        if self.env.is_main:
            for change in changes:
                print(f"resume: {change} (applied)", file=sys.stderr)
        optimizer, scheduler = self.parts.optimizer, self.parts.scheduler
        step = state["scheduler"]["last_epoch"]
        groups = zip(state["optimizer"]["param_groups"], optimizer.param_groups, scheduler.lr_lambdas, strict=True)
        for stored, configured, multiplier in groups:
            stored.update({key: value for key, value in configured.items() if key != "params"})
            stored["lr"] = configured["initial_lr"] * multiplier(step)  # the schedule at the resumed step
        state["scheduler"]["base_lrs"] = [group["initial_lr"] for group in optimizer.param_groups]
        state["scheduler"]["_last_lr"] = [group["lr"] for group in state["optimizer"]["param_groups"]]
        if any(change.key == "amp" for change in changes):
            state["scaler"] = self.parts.scaler.state_dict()  # a fresh loss scaler for the new precision
