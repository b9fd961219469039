"""Result lines between a study's results file, the campaign's work folder and a bundle: which runs are recorded in
full, which lines a stopped run must not hand on, and appending without duplicates."""

from __future__ import annotations

import json
from pathlib import Path

from ..recipe import Study
from .recipe import SUPERVISED

TRAIN = "train"


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a results file (none when it does not exist)."""
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def same_line(line: str) -> str:
    """A result line in one spelling (keys sorted), so that a line copied anywhere is recognised."""
    return json.dumps(json.loads(line), sort_keys=True)


def append_new(path: Path, lines: list[str]) -> int:
    """Append to `path` the lines it does not hold yet (each once); returns how many were appended."""
    known = {same_line(line) for line in read_lines(path)}
    new = []
    for line in lines:
        if (spelling := same_line(line)) not in known:
            known.add(spelling)
            new.append(line)
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in new)
    return len(new)


def recorded_in_full(keys: set[tuple[str, int | None, str]], study: Study, label: str, seed: int) -> bool:
    """Whether a run's training line and every evaluation of its study are among the recorded keys."""
    return {(label, seed, evaluator) for evaluator in (TRAIN, *study.spec.evaluations)} <= keys


def trained_labels(study: Study) -> set[str]:
    """The labels of a study's result lines that come from a training run (its arms and supervised reference)."""
    return {*study.spec.arms, SUPERVISED}


def finished_lines(lines: list[str], keys: set[tuple[str, int | None, str]], study: Study) -> list[str]:
    """The lines to hand on: each reference line, and the lines of the training runs recorded in full in `keys`;
    a run stopped before its last evaluation hands on nothing, so that no record of it looks finished."""
    trained = trained_labels(study)
    kept = []
    for line in lines:
        entry = json.loads(line)
        if entry["arm"] not in trained or recorded_in_full(keys, study, entry["arm"], entry["seed"]):
            kept.append(line)
    return kept
