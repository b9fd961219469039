"""Campaign files: the (study, arm, seed) runs to do in priority order, and the cost model that sizes them.

```yaml
name: gpu
margin: 1.2                      # the forwards' time is multiplied by this
cost:                            # per device kind: seconds = forwards / forwards_per_second * margin + overhead_seconds
  cuda: {forwards_per_second: 29500, overhead_seconds: 60}
entries:                         # in priority order; an entry runs seed by seed, its arms in order within a seed
  - {study: ../studies/fmnist_headline.yaml, arms: [long], seeds: [0, 1, 2]}
  - {study: ../studies/fmnist_objectives.yaml, arms: [moco_v2, byol, supervised], seeds: [0]}
  - {kind: continual, study: ../studies/continual_fmnist_full.yaml, arms: [finetune, cassle, joint], seeds: [0]}
  - {kind: video, study: ../video/moving_digits_gpu.yaml, arms: [temporal, distilled], seeds: [0]}
```

Study paths are relative to the campaign file; `kind` (default `study`) says what the file is (kinds.py: a
mochi_hvs.study recipe, a continual study or a video recipe). `supervised` names a study's supervised reference (the
baseline's recipe trained with labels), where the study lists it among its references. Forwards are encoder
forwards (compute_cost.py; kinds.py for a video run's). Every study is loaded and validated when the campaign is, so a
typo stops it before anything runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import ConfigError, apply_values, read_yaml
from ..recipe import _check
from .kinds import KINDS, CampaignStudy, Overrides, load_kind

DEVICES = ("cuda", "cpu")


@dataclass
class DeviceCost:
    """What a run costs on one kind of device."""

    forwards_per_second: float = 0.0  # encoder image-forwards trained per second
    overhead_seconds: float = 0.0  # per run: start-up, data, monitors, the study's evaluations


@dataclass
class EntrySpec:
    """Some arms of one study with some of its seeds."""

    kind: str = "study"
    study: str = ""
    arms: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


@dataclass
class CampaignSpec:
    """A whole campaign file."""

    name: str = ""
    description: str = ""
    margin: float = 1.0
    cost: dict[str, Any] = field(default_factory=dict)  # device kind -> DeviceCost (converted on load)
    entries: list[Any] = field(default_factory=list)  # EntrySpec (converted on load)


@dataclass(frozen=True)
class Declared:
    """One declared run: an arm of a study (or its supervised reference) with one seed."""

    study: CampaignStudy
    label: str
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        """(study name, label, seed)."""
        return self.study.name, self.label, self.seed


@dataclass(frozen=True)
class Campaign:
    """A loaded campaign: its spec, its studies by name, and its runs in priority order."""

    spec: CampaignSpec
    path: Path
    studies: dict[str, CampaignStudy]
    runs: list[Declared]


def load_campaign(path: str | Path, overrides: Overrides = Overrides()) -> Campaign:
    """Read and validate a campaign file; the overrides go to every study (kinds.py)."""
    path = Path(path)
    source = str(path)
    values = read_yaml(path)
    spec = CampaignSpec()
    apply_values(spec, {k: v for k, v in values.items() if k not in ("cost", "entries")}, "", source)
    _check(bool(spec.name), source, "name", "must name the campaign")
    _check(spec.margin >= 1.0, source, "margin", f"must be at least 1 (estimates are never shrunk); got {spec.margin}")
    cost = values.get("cost")
    _check(isinstance(cost, dict) and bool(cost), source, "cost",
           f"must map device kinds ({', '.join(DEVICES)}) to {{forwards_per_second: ..., overhead_seconds: ...}}")
    for device, device_values in cost.items():
        _check(device in DEVICES, source, f"cost.{device}", f"is not a device kind ({', '.join(DEVICES)})")
        spec.cost[device] = DeviceCost()
        apply_values(spec.cost[device], device_values, f"cost.{device}.", source)
        _check(spec.cost[device].forwards_per_second > 0 and spec.cost[device].overhead_seconds >= 0, source,
               f"cost.{device}", "needs forwards_per_second > 0 and overhead_seconds >= 0")
    entries = values.get("entries")
    _check(isinstance(entries, list) and bool(entries), source, "entries",
           "must list {study: ..., arms: [...], seeds: [...]} in priority order")
    studies: dict[tuple[str, Path], CampaignStudy] = {}
    runs: list[Declared] = []
    for index, entry_values in enumerate(entries):
        key = f"entries[{index}]"
        entry = EntrySpec()
        apply_values(entry, entry_values, f"{key}.", source)
        study_path = Path(os.path.normpath(path.parent / entry.study))
        _check(entry.kind in KINDS, source, f"{key}.kind", f"must be one of {', '.join(KINDS)}; got {entry.kind!r}")
        _check(bool(entry.study) and study_path.is_file(), source, f"{key}.study",
               f"must name a study file (relative to the campaign); not found: {study_path}")
        if (entry.kind, study_path) not in studies:
            studies[entry.kind, study_path] = load_kind(entry.kind, study_path, overrides)
        runs += _entry_runs(studies[entry.kind, study_path], entry, source, key)
    by_name: dict[str, CampaignStudy] = {}
    for study in studies.values():
        _check(by_name.setdefault(study.name, study) is study, source, "entries",
               f"name two studies called {study.name!r}; their results would share one folder")
    seen: set[tuple[str, str, int]] = set()
    for run in runs:
        _check(run.key not in seen, source, "entries", f"declare {run.label} seed {run.seed} of "
               f"{run.study.name} twice")
        seen.add(run.key)
    return Campaign(spec, path, by_name, runs)


def _entry_runs(study: CampaignStudy, entry: EntrySpec, source: str, key: str) -> list[Declared]:
    """An entry's runs, seed by seed, after checking its arms and seeds against its study."""
    labels, name = study.labels, study.name
    _check(bool(entry.arms), source, f"{key}.arms", f"must list runs of {name}: {', '.join(labels)}")
    for arm in entry.arms:
        _check(arm in labels, source, f"{key}.arms", f"{arm!r} is not a run of {name} ({', '.join(labels)})")
    _check(bool(entry.seeds) and set(entry.seeds) <= set(study.seeds), source, f"{key}.seeds",
           f"must list seeds of {name} ({study.seeds}); got {entry.seeds}")
    return [Declared(study, arm, seed) for seed in entry.seeds for arm in entry.arms]


def cost_of(campaign: Campaign, device: str) -> DeviceCost:
    """The campaign's cost model for a device kind."""
    if device not in campaign.spec.cost:
        raise ConfigError(f"{campaign.path}: 'cost' has no entry for device {device!r} "
                          f"(it has {', '.join(campaign.spec.cost)})")
    return campaign.spec.cost[device]
