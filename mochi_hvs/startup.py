"""The first seconds of a command. Importing the package imports torch (2-3 s), and Python runs the package's
`__init__` before any entry module, so a command's own signal handling (errors.Interrupted, exit 130) cannot cover
that time. When the process is one of the toolkit's commands, `guard_command_start` makes SIGINT and SIGTERM end it
from the first moment the package loads as they do later: one `interrupted:` line and exit status 130, no
traceback. Handlers installed later (the training loop's) take over and put this one back when they finish.
Standard library only: it runs before anything heavy is imported."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType

COMMAND_PACKAGE = "mochi_hvs"
SCRIPT_PREFIX = "mochi-"  # the console scripts in setup.py
INTERRUPTED_STATUS = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)
OPTIONS_WITH_VALUE = ("-W", "-X")  # the interpreter options that take the next argument


def module_run_with_m(orig_argv: list[str]) -> str | None:
    """The module of `python [options] -m MODULE ...` (also `-mMODULE`), or None when Python ran something else."""
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None)
        if arg.startswith("-m"):
            return arg[2:]
        if arg in OPTIONS_WITH_VALUE:
            next(args, None)
        elif arg == "-c" or not arg.startswith("-"):  # a command string or a script: no -m follows
            return None
    return None


def started_as_command(orig_argv: list[str], argv0: str) -> bool:
    """Whether this process is a toolkit command: `python -m mochi_hvs...` or a `mochi-*` console script."""
    module = module_run_with_m(orig_argv)
    if module is not None:
        return module == COMMAND_PACKAGE or module.startswith(COMMAND_PACKAGE + ".")
    return Path(argv0).name.startswith(SCRIPT_PREFIX)


def stop_command(signum: int, frame: FrameType | None, owner_pid: int) -> None:
    """End the command with one line and status 130 (SystemExit unwinds `finally` blocks, no traceback). In a
    forked child (a data-loading worker) the signal keeps Python's default meaning: its parent reports."""
    if os.getpid() != owner_pid:
        raise KeyboardInterrupt
    print(f"\ninterrupted: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    raise SystemExit(INTERRUPTED_STATUS)


def guard_command_start() -> None:
    """Install the handlers when this process is a toolkit command; signals the parent set to be ignored (a shell's
    background job ignores SIGINT) stay ignored."""
    if not started_as_command(sys.orig_argv, sys.argv[0] if sys.argv else ""):
        return
    owner_pid = os.getpid()
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: stop_command(signum, frame, owner_pid))
