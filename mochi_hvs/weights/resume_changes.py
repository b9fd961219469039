"""What a resume may change: the settings that differ between a checkpoint's config and the new one, and per key
whether the resumed run applies the new value or refuses to continue, as each setting declares it (`resume=` on its
field, else its section's; keys no section declares a policy for, added later or unknown to this version, are
refused).

Refused: whatever changes the shape of the saved state (model, queue, the optimiser and its state), the data stream
(seed, data set, subset, batch, views, augmentation) or the method, so that the checkpoint's position would mean
something else. Applied: the hyperparameters of the update rule (learning rate and its schedule, SGD momentum,
weight decay, run length, key-encoder momentum, temperature), and how and where the run executes and reports
(device, precision, logging, checkpoints, evaluation, the run's folder).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import APPLY, REFUSE, Config, ConfigError, to_dict, upgrade_stored
from ..config import resume_policy as policy

__all__ = ["ABSENT", "APPLY", "REFUSE", "Change", "check_resume_changes", "config_changes", "policy"]


@dataclass(frozen=True)
class Change:
    """One setting that differs between the checkpoint and the resumed run."""

    key: str
    old: Any
    new: Any

    @property
    def applied(self) -> bool:
        """Whether the resumed run takes the new value (else the resume is refused)."""
        return policy(self.key) == APPLY

    def __str__(self) -> str:
        return f"{self.key} {self.old!r} -> {self.new!r}"


ABSENT = "<absent>"


def _flatten(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield prefix + str(name), value


def config_changes(checkpoint_config: dict[str, Any], cfg: Config) -> list[Change]:
    """The settings of `cfg` that differ from a checkpoint's stored config, in the config's order (then the keys
    only the checkpoint has). Keys the checkpoint does not store (added to the config since) count as defaults."""
    old = dict(_flatten(to_dict(Config()))) | dict(_flatten(upgrade_stored(checkpoint_config)))
    new = dict(_flatten(to_dict(cfg)))
    keys = [*new, *(key for key in old if key not in new)]
    return [Change(key, old.get(key, ABSENT), new.get(key, ABSENT))
            for key in keys if old.get(key, ABSENT) != new.get(key, ABSENT)]


def check_resume_changes(changes: list[Change], checkpoint: str) -> None:
    """Raise a ConfigError naming every refused change (in one line), if there is any."""
    refused = [change for change in changes if not change.applied]
    if refused:
        raise ConfigError(
            f"--resume {checkpoint}: these settings differ from the checkpoint's and cannot change in a resumed "
            f"run: {'; '.join(map(str, refused))}. Resume with the checkpoint's values, or start a new run "
            "under another name")
