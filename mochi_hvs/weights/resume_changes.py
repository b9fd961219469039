"""What a resume may change: the settings that differ between a checkpoint's config and the new one, and per key
whether the resumed run applies the new value or refuses to continue.

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

from ..config import Config, ConfigError, to_dict, upgrade_stored

REFUSE, APPLY = "refuse", "apply"

# A dotted key or a section (ending in "."); the longest entry that matches a key decides. Keys no entry
# covers (settings added later, or unknown to this version) are refused.
POLICY: dict[str, str] = {
    "name": APPLY, "output_dir": APPLY, "device": APPLY, "amp": APPLY, "channels_last": APPLY, "compile": APPLY,
    "log_every": APPLY, "checkpoint_every": APPLY,
    "seed": REFUSE, "stages": REFUSE,
    "data.": REFUSE, "data.root": APPLY, "data.workers": APPLY, "data.augment_on": APPLY,
    "data.skip_unreadable": APPLY,  # e.g. to continue past an unreadable file the run stopped at
    "model.": REFUSE,
    "moco.": REFUSE, "moco.momentum": APPLY, "moco.momentum_schedule": APPLY, "moco.temperature": APPLY,
    "mochi.": REFUSE, "mochi.retrieval": APPLY, "mochi.faiss_index": APPLY, "mochi.faiss_nlist": APPLY,
    "mochi.faiss_nprobe": APPLY, "mochi.path": APPLY,
    "hvs.": REFUSE,
    "fast_moco.": REFUSE,
    "multicrop.": REFUSE,
    "lc.": REFUSE, "lc.weight": APPLY, "lc.temperature": APPLY,
    "optim.": APPLY, "optim.batch_size": REFUSE,
    "optim.name": REFUSE,  # another optimiser cannot read the stored one's state (SGD momentum vs AdamW moments)
    "eval.": APPLY,
    "collapse.": APPLY,
}


def policy(key: str) -> str:
    """REFUSE or APPLY for a dotted config key."""
    matches = [entry for entry in POLICY if entry == key or (entry.endswith(".") and key.startswith(entry))]
    return POLICY[max(matches, key=len)] if matches else REFUSE


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
