"""What the evaluator commands write, read back for tests: their JSON-lines results and their one `error:` line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_results(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a results file, one a line."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def error_line(capsys) -> str:
    """The one `error:` line a command printed to stderr (asserted to be exactly one)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    return err[0]
