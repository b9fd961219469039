"""Running a study: every (arm, seed) trained, resumed or skipped when finished, then evaluated and recorded.

Each run lives in runs/<study>/<arm>/seed<k>/ and is an ordinary pretraining run (its summary.json marks it
finished; its last.pth resumes it). Each evaluation appends one line to results/<study>/results.jsonl; what
is recorded there is never computed again, so calling the study again continues where it stopped. Each
run's summary.json and metrics.jsonl are copied beside the results, so the report can be regenerated from
results/<study>/ alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from ..compute_cost import run_units, steps_for_units
from ..config import Config, ConfigError, to_dict
from ..config.continual import task_specs
from ..data.batches import endless
from ..data.datasets import load_images
from ..evaluation.frozen import FrozenEvaluation
from ..evaluation.linear import PROTOCOL
from ..evaluation.pixels import pixel_width
from ..evaluation.semisup import SemisupFinetune
from ..machine import device_description
from ..models.backbone import build_backbone
from ..objectives.base import objective_of
from ..provenance import append_result, provenance
from ..run_files import LAST, METRICS, SUMMARY
from ..runtime import resolve_amp, resolve_device, seed_everything
from ..train import Trainer
from ..weights.checkpoint import resolve_resume
from .floors import FloorKey, floor_label
from .recipe import Study, resolved
from .report import evaluator_of

RESULTS = "results.jsonl"
BUDGET = "budget.json"  # a matched run's resolved step budget, fixed when the run starts
RUN_RECORDS = (SUMMARY, METRICS, BUDGET)  # a run's files kept beside the results (never its checkpoint)
SEMISUP_FRACTION = 0.01
# A run's duration is estimated from timed steps after warm-up steps. The warm-up is long on purpose: on shared
# cloud CPUs the first seconds of load run at a boosted clock (2-core AMD EPYC: 0.35 s per default step for the
# first few steps, 0.45-0.5 s from about the tenth on), and four steps after one warm-up step underestimated a
# 42 px run's time by a third, giving its seconds-matched arm 1.5x its target's training time.
WARMUP_STEPS = 8
TIMED_STEPS = 8


@dataclass
class PlannedRun:
    """One (arm, seed) run of the study, with the overrides its budget adds; `label` names its folder and its
    result lines (the arm's name, or 'supervised' for the supervised reference trained on the baseline's recipe)."""

    study: Study
    arm: str
    seed: int
    extra: list[str] = field(default_factory=list)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.arm

    def config(self, *more: str) -> Config:
        """The run's validated config (more overrides last), in its own folder."""
        folder = f"output_dir={self.study.runs_dir / self.label}"
        return self.study.arm_config(self.arm, self.seed, [*self.extra, folder, *more])

    @property
    def run_dir(self) -> Path:
        """The run's folder."""
        return self.study.runs_dir / self.label / f"seed{self.seed}"

    @property
    def status(self) -> str:
        """finished (summary written), resumable (a checkpoint exists) or new."""
        if (self.run_dir / SUMMARY).is_file():
            return "finished"
        return "resumable" if (self.run_dir / LAST).is_file() else "new"


@cache
def pretrain_size(name: str, root: str | None) -> int:
    """Number of pretraining images of a dataset."""
    return len(load_images(name, root, "pretrain"))


def steps_of(cfg: Config) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run, as the trainer counts them (a continual run: an epoch per task, one
    epoch of every task's steps when joint)."""
    if cfg.continual.enabled:
        total = cfg.continual.steps_per_task * len(task_specs(cfg))
        return (total if cfg.continual.joint else cfg.continual.steps_per_task), total
    size = pretrain_size(cfg.data.name, cfg.data.root)
    if cfg.data.train_subset:
        size = min(size, cfg.data.train_subset)
    per_epoch = size // cfg.optim.batch_size
    return per_epoch, cfg.optim.steps or cfg.optim.epochs * per_epoch


def seconds_per_step(run: PlannedRun, steps: int = TIMED_STEPS) -> float:
    """Mean wall-clock seconds of one training step of the run on this machine (after WARMUP_STEPS steps)."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(run.config(f"output_dir={scratch}", "name=timing"))
        batches = endless(trainer.parts.batches)
        for _ in range(WARMUP_STEPS):
            trainer.train_step(next(batches))
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(batches))
        seconds = (time.perf_counter() - start) / steps
        trainer.close()
    return seconds


def recorded_keys(path: Path) -> set[tuple[str, int | None, str]]:
    """(arm, seed, evaluator) of every line of a study's results file (none when it does not exist)."""
    if not path.is_file():
        return set()
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["arm"], r["seed"], evaluator_of(r)) for r in lines}


class StudyRunner:
    """Plans, trains, evaluates and records a study; `only` / `seeds` restrict what this call does."""

    def __init__(self, study: Study, only: list[str] | None = None, seeds: list[int] | None = None) -> None:
        self.study = study
        spec = study.spec
        unknown = sorted(set(only or []) - set(spec.arms) - {"supervised"})
        if unknown:
            raise ConfigError(f"--only: no arm named {', '.join(unknown)} (arms: {', '.join(spec.arms)})")
        self.only = only
        self.arms = [a for a in self._ordered_arms() if not only or a in only]
        self.seeds = [s for s in spec.seeds if seeds is None or s in seeds]
        self.results_path = study.report_dir / RESULTS
        self._evaluations: dict[tuple, FrozenEvaluation] = {}
        self.provenance = provenance(resolve_device(study.arm_config(spec.baseline, spec.seeds[0]).device))

    def _ordered_arms(self) -> list[str]:
        """Arms whose budget matches another arm come after that arm."""
        arms = self.study.spec.arms
        return [a for a in arms if arms[a].budget.match is None] + [a for a in arms if arms[a].budget.match]

    # ------------------------------------------------------------------ plan

    def planned(self, arm: str, seed: int) -> PlannedRun:
        """The run with its step budget: its own, fixed in its folder, or (forwards) computed from its target."""
        run = PlannedRun(self.study, arm, seed)
        budget = self.study.spec.arms[arm].budget
        fixed = run.run_dir / BUDGET
        if budget.match is None:
            return run
        if fixed.is_file():
            run.extra = [f"optim.steps={json.loads(fixed.read_text())['steps']}"]
        elif budget.by == "forwards":
            run.extra = [f"optim.steps={self.matched_steps(run)[0]}"]
        return run

    def matched_steps(self, run: PlannedRun) -> tuple[int, dict[str, Any]]:
        """Steps that give a matched run its target's compute, and what they were matched to.

        forwards: the target run's encoder forwards (from its config); seconds: the target run's measured
        training time for the same seed divided by this run's measured time per step.
        """
        budget = self.study.spec.arms[run.arm].budget
        target = PlannedRun(self.study, budget.match, run.seed)
        per_epoch = steps_of(run.config())[0]
        if budget.by == "forwards":
            target_cfg = target.config()
            units = run_units(target_cfg, *steps_of(target_cfg))
            return steps_for_units(run.config(), per_epoch, units), {"target_forward_units": units}
        seconds = self.train_seconds(target)
        if seconds is None:
            raise ConfigError(f"arm {run.arm!r} matches the training time of {budget.match!r}, which has not "
                              f"finished seed {run.seed}: run that arm first")
        return max(1, round(seconds / seconds_per_step(run))), {"target_seconds": seconds}

    def resolve_budget(self, run: PlannedRun) -> PlannedRun:
        """Fix a matched run's step budget in its folder before it starts, so a resume keeps it."""
        budget = self.study.spec.arms[run.arm].budget
        if budget.match is None:
            return run
        if not (run.run_dir / BUDGET).is_file():
            steps, basis = self.matched_steps(run)
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / BUDGET).write_text(json.dumps({"steps": steps, "match": budget.match, "by": budget.by,
                                                          **basis}) + "\n")
        return self.planned(run.arm, run.seed)

    def plan(self) -> list[PlannedRun]:
        """Every (arm, seed) run this call covers, matched arms after their targets, then the supervised
        reference's runs (the baseline's recipe trained with labels) when the study asks for them."""
        runs = [self.planned(arm, seed) for arm in self.arms for seed in self.seeds]
        if "supervised" in self.study.spec.references and (not self.only or "supervised" in self.only):
            runs += [PlannedRun(self.study, self.study.spec.baseline, seed, ["objective=supervised"], "supervised")
                     for seed in self.seeds]
        return runs

    @staticmethod
    def train_seconds(run: PlannedRun) -> float | None:
        """Training seconds of a finished run (None when it has not finished)."""
        summary = run.run_dir / SUMMARY
        return json.loads(summary.read_text())["train_seconds"] if summary.is_file() else None

    # ------------------------------------------------------------- results

    def recorded(self) -> set[tuple[str, int | None, str]]:
        """(arm, seed, evaluator) of every line already in the study's JSONL."""
        return recorded_keys(self.results_path)

    def record(self, arm: str, seed: int | None, evaluator: str, metrics: dict[str, Any], **extra: Any) -> None:
        """Append one result line (arm, seed, evaluator, metrics) with the command, commit and machine that
        produced it (read when the study started)."""
        append_result(self.results_path, {"arm": arm, "seed": seed, "evaluator": evaluator}, metrics,
                      {**extra, **self.provenance})

    def copy_run_files(self, run: PlannedRun) -> None:
        """Copy the run's summary.json and metrics.jsonl beside the results (never its checkpoint)."""
        target = self.study.report_dir / "runs" / run.label / f"seed{run.seed}"
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_RECORDS:
            if (run.run_dir / name).is_file():
                shutil.copyfile(run.run_dir / name, target / name)

    def write_resolved_recipe(self) -> None:
        """The study recipe with every arm's full config, beside the results."""
        self.study.report_dir.mkdir(parents=True, exist_ok=True)
        (self.study.report_dir / "study.yaml").write_text(yaml.safe_dump(resolved(self.study), sort_keys=False))

    # ---------------------------------------------------------------- runs

    def train(self, run: PlannedRun) -> None:
        """Train (or resume) one run to its end; its training line is recorded."""
        run = self.resolve_budget(run)
        cfg = run.config()
        print(f"[{self.study.spec.name}] {run.label} seed {run.seed}: {run.status}", file=sys.stderr)
        summary = Trainer(cfg, resolve_resume("auto", cfg.run_dir)).fit()
        self.record(run.label, run.seed, "train", self.training_metrics(cfg, summary), device=device_description(
            resolve_device(cfg.device)))

    def training_metrics(self, cfg: Config, summary: dict[str, Any]) -> dict[str, Any]:
        """What a training line holds: steps, seconds, encoder forwards, the monitor's last kNN and proxy top-1, and
        the last collapse check's verdict and rank."""
        per_epoch, total = steps_of(cfg)
        proxy = [json.loads(line).get("train/proxy_top1") for line in
                 (cfg.run_dir / METRICS).read_text().splitlines() if line.strip()]
        proxy = [p for p in proxy if p is not None]
        return {"steps": summary["steps"], "train_seconds": summary["train_seconds"],
                "forward_units": run_units(cfg, per_epoch, total), "monitor_knn_top1": summary["knn_top1"],
                "proxy_top1": proxy[-1] if proxy else math.nan,
                **({"collapsed": collapse["collapsed"], "embedding_rank": collapse["rank"]}
                   if (collapse := summary.get("collapse")) else {})}

    def evaluation_for(self, cfg: Config) -> FrozenEvaluation:
        """The labelled full sets of a run's dataset (loaded once per dataset settings)."""
        full = cfg.data.name, cfg.data.root, cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std)
        if full not in self._evaluations:
            device = resolve_device(cfg.device)
            eval_cfg = PlannedRun(self.study, self.study.spec.baseline, self.study.spec.seeds[0]).config(
                *self.study.spec.evaluation_set)
            eval_cfg.data = cfg.data
            self._evaluations[full] = FrozenEvaluation(eval_cfg, device, resolve_amp(cfg.amp, device))
        return self._evaluations[full]

    def evaluate(self, arm: str, seed: int | None, cfg: Config, backbone: Callable[[], tuple[nn.Module, int]],
                 evaluations: list[str], again: bool = False) -> None:
        """Run the evaluations not yet recorded for (arm, seed), or all of them `again`; `backbone()` builds a fresh
        backbone and width."""
        done = set() if again else self.recorded()
        todo = [e for e in evaluations if (arm, seed, e) not in done]
        if not todo:
            return
        evaluation = self.evaluation_for(cfg)
        if {"knn", "linear"} & set(todo):
            model, _ = backbone()
            features = evaluation.features(model)
            if "knn" in todo:
                self.record(arm, seed, "knn", evaluation.knn(features))
            if "linear" in todo:
                self.record(arm, seed, "linear", evaluation.linear(features), protocol=PROTOCOL)
        if "semisup" in todo:
            model, width = backbone()
            settings = dataclasses.replace(evaluation.cfg.eval.semisup, label_fraction=SEMISUP_FRACTION,
                                           labels_per_class=None, split_file=None, random_labels=None,
                                           seed=seed or 0)
            finetune = SemisupFinetune(evaluation.cfg, settings, evaluation.device, evaluation.amp_dtype)
            self.record(arm, seed, "semisup", finetune.evaluate(model, width), label_fraction=SEMISUP_FRACTION)

    def evaluate_run(self, run: PlannedRun, again: bool = False) -> None:
        """Evaluate the backbone a finished run deploys (Objective.deployed_backbone: its query backbone, unless its
        objective says otherwise) with the study's evaluations (all of them `again`)."""
        cfg = run.config()

        def backbone() -> tuple[nn.Module, int]:
            model, width = objective_of(cfg).deployed_backbone(run.run_dir / LAST)
            return model.to(resolve_device(cfg.device)), width

        self.evaluate(run.label, run.seed, cfg, backbone, self.study.spec.evaluations, again)

    def floor_key(self, arm: str, *more: str) -> FloorKey:
        """What the floors of an arm's runs depend on (its image size and backbone)."""
        return FloorKey.of(to_dict(PlannedRun(self.study, arm, self.study.spec.seeds[0]).config(*more)))

    def evaluate_references(self, again: bool = False) -> None:
        """Raw pixels (once) and the random initialisation of each seed, with the same evaluations (all of them
        `again`): the baseline's floors, and those of every arm of this call that trains at another image size or
        with another backbone (recorded under floors.floor_label's labels, e.g. random_init_42px: each arm is read
        against the floors of its own resolution and backbone)."""
        spec = self.study.spec
        base = self.floor_key(spec.baseline)
        keys = {arm: self.floor_key(arm) for arm in self.arms}
        for size in [base.image_size, *sorted({key.image_size for key in keys.values()} - {base.image_size})]:
            resize = [] if size == base.image_size else [f"data.image_size={size}"]
            cfg = PlannedRun(self.study, spec.baseline, spec.seeds[0]).config(*resize)
            if "pixels" in spec.references:
                evaluation = self.evaluation_for(cfg)
                channels = 1 if evaluation.pixels().channels == 1 else 3
                width = pixel_width(size, channels)
                self.evaluate(floor_label("pixels", dataclasses.replace(base, image_size=size), base), None, cfg,
                              lambda evaluation=evaluation, width=width: (evaluation.pixels(), width),
                              [e for e in spec.evaluations if e != "semisup"], again)
            if "random_init" in spec.references:
                for arm, overrides in self.random_init_floors(base, keys, size):
                    self.evaluate_random_init(floor_label("random_init", self.floor_key(arm, *overrides), base),
                                              arm, overrides, again)

    def random_init_floors(self, base: FloorKey, keys: dict[str, FloorKey], size: int) -> list[tuple[str, list[str]]]:
        """The random-init floors at one image size, each as (arm, overrides) whose config builds it: the baseline's
        backbone (resized; at the baseline's size always, elsewhere where an arm of this call uses it), then the first
        arm of each other backbone at that size."""
        baseline = self.study.spec.baseline, [] if size == base.image_size else [f"data.image_size={size}"]
        floors = {base.backbone: baseline} if size == base.image_size else {}
        for arm, key in keys.items():
            if key.image_size == size:
                floors.setdefault(key.backbone, baseline if key.backbone == base.backbone else (arm, []))
        return list(floors.values())

    def evaluate_random_init(self, label: str, arm: str, overrides: list[str], again: bool) -> None:
        """The random initialisation of an arm's backbone (its config with `overrides`), one per seed, as `label`."""
        for seed in self.seeds:
            seeded = PlannedRun(self.study, arm, seed).config(*overrides)

            def backbone(seeded: Config = seeded) -> tuple[nn.Module, int]:
                seed_everything(seeded.seed)
                model, width = build_backbone(seeded.model.arch, seeded.model.small_stem, seeded.model.arch_kwargs)
                return model.to(resolve_device(seeded.device)), width

            self.evaluate(label, seed, seeded, backbone, self.study.spec.evaluations, again)

    def run(self) -> None:
        """Train every planned run that has not finished, evaluate every finished one, and the references."""
        self.write_resolved_recipe()
        for run in self.plan():
            if run.status != "finished":
                self.train(run)
            self.copy_run_files(run)
            self.evaluate_run(run)
        self.evaluate_references()

    def reprobe(self) -> list[PlannedRun]:
        """Evaluate every finished run whose checkpoint is on disk, and the references, again with today's
        evaluators (new result lines; the report reads the latest), training nothing. Returns the runs it could
        not evaluate (unfinished, or their checkpoint gone)."""
        self.write_resolved_recipe()
        missing = []
        for run in self.plan():
            if run.status != "finished" or not (run.run_dir / LAST).is_file():
                missing.append(run)
                continue
            self.copy_run_files(run)
            self.evaluate_run(run, again=True)
        self.evaluate_references(again=True)
        return missing


def describe_plan(runner: StudyRunner, estimate: bool = True) -> str:
    """The plan as a table: arm, seed, status, steps and (from a few timed steps) estimated training time."""
    lines = [f"{'arm':<22}{'seed':>5}  {'status':<10}{'steps':>7}{'est. time':>12}"]
    per_arm: dict[str, float] = {}
    total = 0.0
    for run in runner.plan():
        cfg = run.config()
        steps = steps_of(cfg)[1] if run.extra or runner.study.spec.arms[run.arm].budget.match is None else None
        shown = "?" if steps is None else str(steps)
        when = ""
        if estimate and steps is not None and run.status != "finished":
            if run.label not in per_arm:
                per_arm[run.label] = seconds_per_step(run)
            seconds = per_arm[run.label] * steps
            total += seconds
            when = f"{seconds / 60:.1f} min"
        lines.append(f"{run.label:<22}{run.seed:>5}  {run.status:<10}{shown:>7}{when:>12}")
    if estimate:
        device = resolve_device(runner.study.arm_config(runner.arms[0], runner.seeds[0]).device)
        lines.append(f"estimated training time of the unfinished runs: {total / 60:.0f} min on "
                     f"{device_description(device)} (evaluations not included)")
    return "\n".join(lines)
