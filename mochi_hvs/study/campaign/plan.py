"""The campaign's plan: which declared runs are still pending, how far each has got, and how long each will take.

A run is pending until its training line and every evaluation of its study are recorded (kinds.py says which lines
those are for each kind of study). Its estimate is the cost model's: the encoder forwards it has left
(compute_cost.py; a run that stopped part-way has only its remaining steps left, one that finished training only its
evaluations) over the device's forwards per second, times the
campaign's margin, plus the device's overhead per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .kinds import CampaignStudy
from .recipe import Campaign, Declared, DeviceCost
from .records import recorded, recorded_in_full


@dataclass
class Pending:
    """A declared run not yet recorded in full, where it stands and its estimated seconds."""

    declared: Declared
    steps_done: int  # steps in its checkpoint
    steps: int  # steps of the whole run (0: an arm that trains nothing)
    evaluations_only: bool  # training finished: only the evaluations are left
    seconds: float

    @property
    def started(self) -> bool:
        """Whether an earlier call got part of the way (it is continued before anything new starts)."""
        return self.steps_done > 0 or self.evaluations_only

    def describe(self) -> str:
        """e.g. 'fmnist_headline long seed 0'."""
        return f"{self.declared.study.name} {self.declared.label} seed {self.declared.seed}"


def estimate(cost: DeviceCost, margin: float, forwards: float) -> float:
    """Seconds of a run that trains `forwards` encoder forwards (then is evaluated)."""
    return forwards / cost.forwards_per_second * margin + cost.overhead_seconds


def where(study: CampaignStudy, work: Path | None) -> CampaignStudy:
    """The study as the campaign runs it: in the work folder when one is given, else in its own folders."""
    return study.relocated(work) if work is not None else study


def pending_runs(campaign: Campaign, cost: DeviceCost, work: Path | None = None) -> list[Pending]:
    """The declared runs not recorded in full in the results (the work folder's when `work` is given, else each
    study's own), those an earlier call started first, then in the campaign's order."""
    studies = {name: where(study, work) for name, study in campaign.studies.items()}
    keys = {name: recorded(study, study.results) for name, study in studies.items()}
    pending = []
    for declared in campaign.runs:
        study = studies[declared.study.name]
        if recorded_in_full(keys[study.name], study, declared.label, declared.seed):
            continue
        progress = study.progress(declared.label, declared.seed)
        pending.append(Pending(declared, progress.steps_done, progress.steps, progress.evaluations_only,
                               estimate(cost, campaign.spec.margin, progress.forwards)))
    return sorted(pending, key=lambda p: not p.started)


def next_run(pending: list[Pending], seconds_left: float) -> Pending | None:
    """The first pending run whose estimate fits in the seconds left."""
    return next((p for p in pending if p.seconds <= seconds_left), None)
