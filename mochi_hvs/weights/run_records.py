"""The figures a run recorded beside its checkpoint (run_files.py): summary.json (written when it finished) and the
last evaluation line of metrics.jsonl (kNN at an epoch end); what a model card reports. Records that are absent or
unreadable are left out: an export never fails for them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run_files import METRICS, SUMMARY

EVALUATION_PREFIXES = ("knn/",)  # the keys of a metrics.jsonl line that make it an evaluation


@dataclass(frozen=True)
class RunRecords:
    """summary.json's figures and the last evaluation of metrics.jsonl, each None where the folder has none."""

    summary: dict[str, Any] | None = None
    last_evaluation: dict[str, Any] | None = None


def _json_mapping(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _last_evaluation(path: Path) -> dict[str, Any] | None:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    for line in reversed(lines):
        entry = _json_mapping(line)
        if entry and any(key.startswith(EVALUATION_PREFIXES) for key in entry):
            return entry
    return None


def records_beside(weights: str | Path) -> RunRecords:
    """The run records in the folder of a weights file (a run folder holds last.pth beside them)."""
    folder = Path(weights).parent
    summary = folder / SUMMARY
    return RunRecords(_json_mapping(summary.read_text(encoding="utf-8", errors="replace")) if summary.is_file()
                      else None, _last_evaluation(folder / METRICS))
