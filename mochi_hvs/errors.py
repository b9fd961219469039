"""The exceptions users meet. Every mistake or condition a user can fix is a UserError: the command-line entry
points print its message as one `error: ...` line and exit with status 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem the user can fix (bad setting, missing data, damaged file, ...); the message says how."""


class ConfigError(UserError, ValueError):
    """A configuration problem, with the offending key and file in the message."""


class TrainingDiverged(UserError, RuntimeError):
    """Training produced NaN or infinite values; the message names the step and the last good checkpoint."""


class TrainingCollapsed(UserError, RuntimeError):
    """The representation stayed collapsed (mochi_hvs/collapse.py); the message names the step and the last good
    checkpoint."""


class Interrupted(Exception):
    """The run stopped on request (Ctrl-C, SIGTERM); the message says what was kept and how to go on (exit 130)."""


def exit_status(action: Callable[[], object], again: str) -> int:
    """A command's exit status for running `action`: 0; 2 after a UserError's one `error:` line; 130 after an
    interruption's line, with `again` (how to go on) after it."""
    try:
        action()
    except Interrupted as stop:
        print(f"\ninterrupted: {stop}{again}", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
