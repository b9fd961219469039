"""The kinds of study a campaign entry can name (its `kind`), each behind one small adapter that says what the
campaign needs to know of it: the runs an entry may name, when a run is recorded in full in its results.jsonl, how far
a run has got and how many encoder forwards it has left, the command that runs it, the run files a bundle carries,
and how its report is regenerated after a merge.

    study      (default) a mochi_hvs.study recipe: arms of pretraining recipes (and the supervised reference),
               evaluated frozen; `python -m mochi_hvs.study`
    continual  a continual study (configs/studies/continual_*.yaml): each task's checkpoint evaluated on the tasks
               seen so far; `python -m mochi_hvs.continual`
    video      a video recipe (configs/video/*.yaml): the video encoder's arms probed for content and motion;
               `python -m mochi_hvs.video`

The campaign's overrides reach each kind as its own command line does: `--set` every pretraining config (study and
continual kinds), `--evaluation-set` the study kind's evaluations (the continual kind's evaluations are config keys:
they follow its `--set`), `--video-set` every video recipe.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...compute_cost import QUERY_UNITS, run_units
from ...config.continual import task_specs
from ...continual.report import write_report as write_continual_report
from ...continual.runner import EVALUATORS as CONTINUAL_EVALUATORS
from ...continual.runner import rows_to_evaluate
from ...errors import UserError
from ...run_files import LAST
from ...video.recipe import VideoRecipe, load_recipe
from ...video.report import write_report as write_video_report
from ...video.study import ARMS as VIDEO_ARMS
from ...video.study import TASKS as VIDEO_TASKS
from ...weights.checkpoint import load_checkpoint
from ..__main__ import main as study_main
from ..recipe import Study, load_study, relocated
from ..report import evaluator_of
from ..runner import RESULTS, RUN_RECORDS, PlannedRun, StudyRunner, steps_of

SUPERVISED = "supervised"
TRAIN = "train"
Key = tuple[Any, ...]  # what identifies a result line within its study


@dataclass(frozen=True)
class Overrides:
    """The campaign's overrides of every run, by what they change."""

    pretraining: tuple[str, ...] = ()  # --set: every pretraining config
    evaluation: tuple[str, ...] = ()  # --evaluation-set: the study kind's evaluation settings
    video: tuple[str, ...] = ()  # --video-set: every video recipe

    def on(self, device: str, data_root: str | None) -> Overrides:
        """These overrides after the call's device (every kind) and data folder (the pretraining configs')."""
        root = [f"data.root={data_root}"] if data_root else []
        return Overrides((f"device={device}", *root, *self.pretraining), self.evaluation,
                         (f"device={device}", *self.video))


@dataclass(frozen=True)
class Progress:
    """How far a run has got: steps in its checkpoint, steps of the whole run, whether only its evaluations are
    left, and the encoder forwards it has left to train (compute_cost.py)."""

    steps_done: int
    steps: int
    evaluations_only: bool
    forwards: float


class CampaignStudy(ABC):
    """A study as the campaign sees it, in its own folders or (relocated) in the campaign's work folder."""

    kind: ClassVar[str]
    run_records: ClassVar[tuple[str, ...]] = ()  # the run files (runs/<label>/seed<k>/...) a bundle carries

    def __init__(self, path: Path, name: str, labels: list[str], seeds: list[int], report_dir: Path) -> None:
        self.path = path
        self.name = name
        self.labels = labels  # the runs an entry may name
        self.seeds = seeds
        self.report_dir = report_dir

    @property
    def results(self) -> Path:
        """The study's results file."""
        return self.report_dir / RESULTS

    @property
    def trained(self) -> set[str]:
        """The labels whose result lines come from a run (the other lines, references, are handed on as they are)."""
        return set(self.labels)

    def run_dir(self, label: str, seed: int) -> Path:
        """The folder of a run's files (those in run_records)."""
        raise NotImplementedError(f"the {self.kind} kind keeps no run files beside its results")

    @classmethod
    @abstractmethod
    def load(cls, path: Path, overrides: Overrides) -> CampaignStudy:
        """The study file, validated, with the campaign's overrides of its kind."""

    @abstractmethod
    def relocated(self, work: Path) -> CampaignStudy:
        """The same study with its runs and results in the work folder."""

    @abstractmethod
    def key(self, line: dict[str, Any]) -> Key:
        """What identifies a result line of this study."""

    @abstractmethod
    def needed(self, label: str, seed: int) -> set[Key]:
        """The keys a run has once it is recorded in full."""

    @abstractmethod
    def progress(self, label: str, seed: int) -> Progress:
        """Where a run stands (in the folders this study is in)."""

    @abstractmethod
    def command(self, label: str, seed: int, work: Path, overrides: Overrides) -> list[str]:
        """The command line that runs one run in the work folder."""

    @abstractmethod
    def write_report(self) -> None:
        """Regenerate the study's report from its results (after a merge)."""


class PretrainingRuns(CampaignStudy):
    """A study recipe (configs/studies/*.yaml) of pretraining runs: the study and continual kinds."""

    def __init__(self, study: Study, labels: list[str]) -> None:
        super().__init__(study.path, study.spec.name, labels, study.spec.seeds, study.report_dir)
        self.study = study

    @classmethod
    def load(cls, path: Path, overrides: Overrides) -> PretrainingRuns:
        return cls(load_study(path, list(overrides.pretraining), list(overrides.evaluation)))

    def relocated(self, work: Path) -> PretrainingRuns:
        return type(self)(relocated(self.study, work))

    def planned(self, label: str, seed: int) -> PlannedRun:
        """The run as its runner plans it."""
        return PlannedRun(self.study, label, seed)

    def progress(self, label: str, seed: int) -> Progress:
        """From the run's folder: finished (its summary), stopped part-way (its checkpoint's step) or new."""
        run = self.planned(label, seed)
        cfg = run.config()
        per_epoch, steps = steps_of(cfg)
        status = run.status
        done = steps if status == "finished" else 0
        if status == "resumable":
            done = load_checkpoint(run.run_dir / LAST, verify=False)["global_step"]
        forwards = run_units(cfg, per_epoch, steps) * (steps - done) / steps
        return Progress(done, steps, status == "finished", forwards)

    def runner_command(self, module: str, label: str, seed: int, work: Path, sets: list[str],
                       more: list[str]) -> list[str]:
        """`python -m MODULE --config STUDY --only LABEL --seeds K --into WORK --set ...` and `more` after."""
        return [sys.executable, "-m", module, "--config", str(self.path), "--only", label, "--seeds", str(seed),
                "--into", str(work), "--set", *sets, *more]


class StudyRuns(PretrainingRuns):
    """kind: study. A mochi_hvs.study recipe; `supervised` names its supervised reference where it lists one."""

    kind = "study"
    run_records = RUN_RECORDS

    def __init__(self, study: Study) -> None:
        spec = study.spec
        super().__init__(study, [*spec.arms, *([SUPERVISED] if SUPERVISED in spec.references else [])])

    @property
    def trained(self) -> set[str]:
        return {*self.study.spec.arms, SUPERVISED}

    def run_dir(self, label: str, seed: int) -> Path:
        return self.study.runs_dir / label / f"seed{seed}"

    def key(self, line: dict[str, Any]) -> Key:
        return line["arm"], line["seed"], evaluator_of(line)

    def needed(self, label: str, seed: int) -> set[Key]:
        return {(label, seed, evaluator) for evaluator in (TRAIN, *self.study.spec.evaluations)}

    def planned(self, label: str, seed: int) -> PlannedRun:
        (run,) = StudyRunner(self.study, [label], [seed]).plan()  # with its matched budget, if any
        return run

    def command(self, label: str, seed: int, work: Path, overrides: Overrides) -> list[str]:
        evaluation = ["--evaluation-set", *overrides.evaluation] if overrides.evaluation else []
        return self.runner_command("mochi_hvs.study", label, seed, work, list(overrides.pretraining), evaluation)

    def write_report(self) -> None:
        StudyRunner(self.study).write_resolved_recipe()
        if study_main(["--config", str(self.path), "--report"]) != 0:
            raise UserError(f"{self.name}: the report could not be regenerated (see above)")


class ContinualRuns(PretrainingRuns):
    """kind: continual. A continual study: each task's checkpoint of a run evaluated on every task seen so far."""

    kind = "continual"

    def __init__(self, study: Study) -> None:
        super().__init__(study, list(study.spec.arms))

    def key(self, line: dict[str, Any]) -> Key:
        return line["arm"], line["seed"], line["after_task"], line["task"], line["evaluator"]

    def needed(self, label: str, seed: int) -> set[Key]:
        cfg = self.study.arm_config(label, seed)
        rows = rows_to_evaluate(cfg, len(task_specs(cfg)))
        return {(label, seed, -1, -1, TRAIN), *((label, seed, i, j, evaluator) for i, _ in rows for j in range(i + 1)
                                                for evaluator in CONTINUAL_EVALUATORS)}

    def command(self, label: str, seed: int, work: Path, overrides: Overrides) -> list[str]:
        return self.runner_command("mochi_hvs.continual", label, seed, work,
                                   [*overrides.pretraining, *overrides.evaluation], [])

    def write_report(self) -> None:
        spec = self.study.spec
        write_continual_report(self.report_dir, spec.name, spec.description, spec.baseline)


class VideoRuns(CampaignStudy):
    """kind: video. A video recipe: its arms per seed, the trained ones (temporal, distilled) without checkpoints.

    Forwards: a clip frame through the video encoder counts as one encoder forward, with its backward
    (compute_cost.QUERY_UNITS): train.steps x train.batch_size videos x 2 clips x data.frames frames per trained arm.
    The untrained arms (image_model, random_init) have only their probes, in the overhead."""

    kind = "video"
    trained_arms = ("temporal", "distilled")

    def __init__(self, recipe: VideoRecipe, path: Path, results_root: Path = Path("results")) -> None:
        super().__init__(path, recipe.name, list(VIDEO_ARMS), recipe.seeds, results_root / recipe.name)
        self.recipe = recipe
        self.results_root = results_root

    @classmethod
    def load(cls, path: Path, overrides: Overrides) -> VideoRuns:
        return cls(load_recipe(path, list(overrides.video)), path)

    def relocated(self, work: Path) -> VideoRuns:
        return VideoRuns(self.recipe, self.path, work / "results")

    def key(self, line: dict[str, Any]) -> Key:
        return line["arm"], line["seed"], line["task"]

    def needed(self, label: str, seed: int) -> set[Key]:
        return {(label, seed, task) for task in VIDEO_TASKS}

    def progress(self, label: str, seed: int) -> Progress:
        train = self.recipe.train
        steps = train.steps if label in self.trained_arms else 0
        return Progress(0, steps, False, steps * train.batch_size * 2 * self.recipe.data.frames * QUERY_UNITS)

    def command(self, label: str, seed: int, work: Path, overrides: Overrides) -> list[str]:
        return [sys.executable, "-m", "mochi_hvs.video", "--config", str(self.path), "--arms", label, "--seeds",
                str(seed), "--into", str(work), "--set", *overrides.video]

    def write_report(self) -> None:
        write_video_report(self.results)


KINDS: dict[str, type[CampaignStudy]] = {kind.kind: kind for kind in (StudyRuns, ContinualRuns, VideoRuns)}


def load_kind(kind: str, path: Path, overrides: Overrides = Overrides()) -> CampaignStudy:
    """The study file of a kind, loaded and validated (ConfigError where it cannot be)."""
    return KINDS[kind].load(path, overrides)
