"""A continual study: every (arm, seed) continual run trained (resumed, or skipped when finished), then each task's
checkpoint evaluated on every task seen so far, one JSON line per (arm, seed, after_task, task, evaluator) in
results/<study>/results.jsonl, each naming its command, commit and machine. A joint arm (continual.joint) has one
checkpoint, after all its steps, evaluated on every task as the last row. The study's references (pixels, random_init)
are evaluated on every task, untrained (after_task -1, "reference": true): the raw pixels once, the first arm's
backbone at each seed's initialisation. What is recorded is never computed again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..config import Config, ConfigError
from ..evaluation.pixels import pixel_model
from ..models.backbone import build_backbone
from ..pretrain import run as pretrain
from ..provenance import provenance
from ..run_files import LAST, TASK
from ..runtime import resolve_device, seed_everything
from ..study.recipe import Study
from .evaluation import TaskEvaluation, checkpoint_backbone

RESULTS = "results.jsonl"
EVALUATORS = ("linear", "knn")
REFERENCES = ("pixels", "random_init")
Key = tuple[str, int, int, int, str]  # arm, seed, after_task, task, evaluator


def rows_to_evaluate(cfg: Config, tasks: int) -> list[tuple[int, Path]]:
    """(after_task, checkpoint) of a finished run: each task's, or the joint run's last as the last row."""
    if cfg.continual.joint:
        return [(tasks - 1, cfg.run_dir / LAST)]
    return [(i, cfg.run_dir / TASK.format(i)) for i in range(tasks)]


def recorded(path: Path) -> set[Key]:
    """The keys of the evaluation lines already in results.jsonl."""
    if not path.is_file():
        return set()
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["arm"], r["seed"], r["after_task"], r["task"], r["evaluator"]) for r in lines if "after_task" in r}


class ContinualStudy:
    """Trains, evaluates and records a continual study; `only` / `seeds` restrict what this call does."""

    def __init__(self, study: Study, only: list[str] | None = None, seeds: list[int] | None = None) -> None:
        self.study = study
        self.arms = only or list(study.spec.arms)
        self.seeds = seeds or study.spec.seeds
        self.results = study.report_dir / RESULTS
        unknown = [r for r in study.spec.references if r not in REFERENCES]
        if unknown:
            raise ConfigError(f"{study.path}: references: a continual study's are {' and '.join(REFERENCES)}, "
                              f"not {', '.join(unknown)}")
        first = study.arm_config(self.arms[0], self.seeds[0])
        self.device = resolve_device(first.device)
        self.provenance = provenance(self.device)

    def record(self, line: dict[str, Any]) -> None:
        """Append one line (with the study's name and the provenance) to results.jsonl."""
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with self.results.open("a") as handle:
            handle.write(json.dumps({"study": self.study.spec.name, **line, **self.provenance}) + "\n")

    def run(self) -> None:
        """Train and evaluate every (arm, seed) of this call."""
        for arm in self.arms:
            for seed in self.seeds:
                cfg = self.study.arm_config(arm, seed)
                [(_, summary)] = pretrain(cfg, "auto")
                done = recorded(self.results)
                if (arm, seed, -1, -1, "train") not in done:
                    self.record({"arm": arm, "seed": seed, "after_task": -1, "task": -1, "evaluator": "train",
                                 "steps": summary["steps"], "train_seconds": summary["train_seconds"]})
                self.evaluate(arm, seed, cfg, done)
        self.evaluate_references()

    def evaluate(self, arm: str, seed: int, cfg: Config, done: set[Key]) -> None:
        """Each row's checkpoint on the tasks seen so far (every task for the joint arm's one row)."""
        evaluation = TaskEvaluation(cfg, self.device)
        tasks = len(evaluation.tasks)
        for i, path in rows_to_evaluate(cfg, tasks):
            todo = [j for j in range(i + 1) if any((arm, seed, i, j, e) not in done for e in EVALUATORS)]
            if not todo:
                continue
            backbone = checkpoint_backbone(path, self.device)
            for j in todo:
                self.record_task(evaluation, backbone, j, {"arm": arm, "seed": seed, "after_task": i})

    def record_task(self, evaluation: TaskEvaluation, backbone: nn.Module, j: int, key: dict[str, Any]) -> None:
        """Evaluate `backbone` on task j and record one line per evaluator under `key` (arm, seed, after_task...)."""
        results = evaluation.evaluate(backbone, j)
        for name in EVALUATORS:
            self.record({**key, "task": j, "task_name": evaluation.tasks[j].name, "evaluator": name,
                         **results[name]})

    def evaluate_references(self) -> None:
        """The study's references on every task, untrained: the raw pixels for the first seed, the random
        initialisation of the first arm's backbone for each seed."""
        done = recorded(self.results)
        arm = next(iter(self.study.spec.arms))
        # The tasks' labelled sets depend on the evaluation settings, not on the seed: loaded once for all.
        evaluation = TaskEvaluation(self.study.arm_config(arm, self.seeds[0]), self.device)
        for reference in self.study.spec.references:
            for seed in self.seeds[:1] if reference == "pixels" else self.seeds:
                cfg = self.study.arm_config(arm, seed)
                todo = [j for j in range(len(evaluation.tasks))
                        if any((reference, seed, -1, j, e) not in done for e in EVALUATORS)]
                if not todo:
                    continue
                backbone = None if reference == "pixels" else self.random_init(cfg)
                for j in todo:
                    model = (pixel_model(evaluation.sets(j)[1], cfg.data.mean, cfg.data.std) if backbone is None
                             else backbone)
                    self.record_task(evaluation, model.to(self.device), j,
                                     {"arm": reference, "seed": seed, "after_task": -1, "reference": True})

    def random_init(self, cfg: Config) -> nn.Module:
        """The arm's backbone as its run initialises it (seeded by the run's seed)."""
        seed_everything(cfg.seed)
        backbone, _ = build_backbone(cfg.model.arch, cfg.model.small_stem, cfg.model.arch_kwargs)
        return backbone
