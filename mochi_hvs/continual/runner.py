"""A continual study: every (arm, seed) continual run trained (resumed, or skipped when finished), then each task's
checkpoint evaluated on every task seen so far, one JSON line per (arm, seed, after_task, task, evaluator) in
results/<study>/results.jsonl, each naming its command, commit and machine. A joint arm (continual.joint) has one
checkpoint, after all its steps, evaluated on every task as the last row. What is recorded is never computed again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import Config
from ..pretrain import run as pretrain
from ..provenance import provenance
from ..run_files import LAST, TASK
from ..runtime import resolve_device
from ..study.recipe import Study
from .evaluation import TaskEvaluation, checkpoint_backbone

RESULTS = "results.jsonl"
EVALUATORS = ("linear", "knn")
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
                results = evaluation.evaluate(backbone, j)
                for name in EVALUATORS:
                    self.record({"arm": arm, "seed": seed, "after_task": i, "task": j,
                                 "task_name": evaluation.tasks[j].name, "evaluator": name, **results[name]})
