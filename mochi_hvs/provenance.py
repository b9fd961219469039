"""Where a recorded figure came from: the command that produced it, the code's commit and the machine.

Every result line the toolkit appends (study records, evaluator records) carries these, so that a figure quoted
in the docs can be traced to the exact code, command and machine that measured it.
"""

from __future__ import annotations

import datetime
import functools
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .machine import device_description

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# Paths whose uncommitted edits do not change what the code computes: the records themselves live there.
NOT_CODE = (":(exclude)results",)


def command_line(argv: list[str] | None = None, main_module: str | None = None) -> str:
    """The command as a user would type it again: `python -m MODULE ARGS` for a module run with -m, `python
    FILE.py ARGS` for a script, else the console script's name and its arguments."""
    argv = list(sys.argv if argv is None else argv)
    if main_module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        main_module = spec.name if spec is not None else None
    if main_module:
        head = ["python", "-m", main_module.removesuffix(".__main__")]
    elif argv and argv[0].endswith(".py"):
        head = ["python", argv[0]]
    else:
        head = [Path(argv[0]).name] if argv else ["python"]
    return shlex.join([*head, *argv[1:]])


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


@functools.cache
def code_commit() -> str:
    """The commit of the checkout the package runs from, with '+uncommitted' when its code differs from that commit
    (edits under results/ do not count); 'unknown' outside a git checkout (e.g. an installed wheel). Read once per
    process: the code a process runs is the code it imported at its start."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """command, commit and machine of a result line."""
    return {"command": command_line(), "commit": code_commit(), "machine": device_description(device)}


def now() -> str:
    """UTC time stamp for result lines."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def append_result(path: Path, head: dict[str, Any], metrics: dict[str, Any], tail: dict[str, Any]) -> None:
    """Append one JSON line to `path`: `head` (what was measured), the metrics (floats to 6 significant digits),
    the UTC time, then `tail` (further fields and the provenance)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in metrics.items()}  # e.g. l2 1e-05
    entry = {**head, "metrics": metrics, "time": now(), **tail}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
