"""Result lines between a study's results file, the campaign's work folder and a bundle: which runs are recorded in
full, which lines a stopped run must not hand on, and appending without duplicates."""

from __future__ import annotations

import json
from pathlib import Path

from .kinds import CampaignStudy, Key


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


def recorded(study: CampaignStudy, path: Path) -> set[Key]:
    """The keys of the result lines of a study's results file (none when it does not exist)."""
    return {study.key(json.loads(line)) for line in read_lines(path)}


def recorded_in_full(keys: set[Key], study: CampaignStudy, label: str, seed: int) -> bool:
    """Whether every line a run has once it is finished (its training line, every evaluation) is among the keys."""
    return study.needed(label, seed) <= keys


def finished_lines(lines: list[str], keys: set[Key], study: CampaignStudy) -> list[str]:
    """The lines to hand on: each reference line, and the lines of the runs recorded in full in `keys`; a run
    stopped before its last evaluation hands on nothing, so that no record of it looks finished."""
    kept = []
    for line in lines:
        entry = json.loads(line)
        if entry["arm"] not in study.trained or recorded_in_full(keys, study, entry["arm"], entry["seed"]):
            kept.append(line)
    return kept
