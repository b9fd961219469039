"""One campaign call: the pending runs that fit in its seconds, one subprocess each, and the bundle.

The runs live in a work folder (default runs/campaign/, which git ignores and a GPU machine keeps between calls
while it stays warm): each study's records are copied there from its results file first, then each run is its
kind's command (kinds.py), e.g.

    python -m mochi_hvs.study --config STUDY --only ARM --seeds K --into WORK --set device=cuda ...
    python -m mochi_hvs.continual --config STUDY --only ARM --seeds K --into WORK --set device=cuda ...
    python -m mochi_hvs.video --config RECIPE --arms ARM --seeds K --into WORK --set device=cuda ...

so its runner trains, evaluates and records it as it would any run, and resumes a run a stopped call left in the
work folder. A run still going at the deadline gets SIGTERM (it saves its checkpoint and stops) and its
records stay out of the bundle. The bundle is written again after every run, so what finished is in the output
folder even when the call itself is cut off.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...deadline import GRACE_S, run_until
from ...errors import Interrupted
from ...machine import device_description
from ...provenance import PACKAGE_ROOT, code_commit, now
from ..runner import RESULTS
from .bundle import BUNDLE, write_bundle
from .kinds import Overrides
from .plan import next_run, pending_runs
from .recipe import Campaign, cost_of, load_campaign
from .records import append_new, finished_lines, read_lines, recorded, same_line

WORK = Path("runs") / "campaign"
LOG = "campaign.log"
LOG_TAIL = 20000  # characters of each run's output kept in the log
WRAP_S = 10.0  # kept back at the end of the call for writing the bundle


def bundle_files(campaign: Campaign, work: Path) -> dict[str, bytes]:
    """The work folder's result lines that the studies' own results files lack, less those of runs not recorded in
    full, and the records of the runs they belong to (bundle.py's layout)."""
    files: dict[str, bytes] = {}
    for name, study in campaign.studies.items():
        here = {same_line(line) for line in read_lines(study.results)}
        there = study.relocated(work)
        lines = [line for line in finished_lines(read_lines(there.results), recorded(there, there.results), there)
                 if same_line(line) not in here]
        if not lines:
            continue
        files[f"{name}/{RESULTS}"] = "".join(line + "\n" for line in lines).encode()
        runs = {(entry["arm"], entry["seed"]) for entry in map(json.loads, lines)
                if entry["arm"] in study.trained and study.run_records}
        for label, seed in sorted(runs):
            folder = there.run_dir(label, seed)
            for record in study.run_records:
                if (folder / record).is_file():
                    files[f"{name}/runs/{label}/seed{seed}/{record}"] = (folder / record).read_bytes()
    return files


def print_event(event: dict[str, Any]) -> None:
    """One JSON line on stdout (benchmarks/gpu_check.py records each)."""
    print(json.dumps(event), flush=True)


def run_campaign(path: Path, device: str, out: Path, budget: float, work: Path = WORK, data_root: str | None = None,
                 overrides: Overrides = Overrides(),
                 emit: Callable[[dict[str, Any]], None] = print_event) -> list[dict[str, Any]]:
    """Run the campaign's pending runs that fit in `budget` seconds on `device`, in the work folder, and write the
    bundle (and the runs' output, campaign.log) to `out`; returns the call's events (also emitted as they happen).
    Interrupted (raised by the caller's stop signal) stops the run in progress and ends the call as its deadline
    would.
    `overrides` change every run (a dry run's tiny sizes): the manifest records them."""
    start = time.monotonic()
    applied = overrides.on(device, data_root)
    campaign = load_campaign(path, applied)
    cost = cost_of(campaign, device)
    out.mkdir(parents=True, exist_ok=True)
    (out / LOG).unlink(missing_ok=True)
    for study in campaign.studies.values():
        append_new(study.relocated(work).results, read_lines(study.results))
    events: list[dict[str, Any]] = []
    manifest = {"campaign": campaign.spec.name, "file": str(path), "device": device,
                "machine": device_description(device), "commit": code_commit(), "started": now(),
                "overrides": list(overrides.pretraining), "evaluation_overrides": list(overrides.evaluation),
                "video_overrides": list(overrides.video),
                "studies": {name: str(study.path) for name, study in campaign.studies.items()},
                "kinds": {name: study.kind for name, study in campaign.studies.items()}, "events": events}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}

    def event(**values: Any) -> None:
        events.append(values)
        emit(values)

    tried: set[tuple[str, str, int]] = set()
    try:
        while True:
            left = budget - (time.monotonic() - start) - WRAP_S
            pending = [p for p in pending_runs(campaign, cost, work) if p.declared.key not in tried]
            chosen = next_run(pending, left)
            if chosen is None:
                event(event="end", pending=len(pending), seconds_left=round(left), reason=(
                    f"no pending run fits: {pending[0].describe()} needs {pending[0].seconds:.0f} s" if pending
                    else "no pending run left to try"))
                break
            tried.add(chosen.declared.key)
            declared = chosen.declared
            command = declared.study.command(declared.label, declared.seed, work, applied)
            outcome = run_until(command, Path.cwd(), env, left - GRACE_S)
            with open(out / LOG, "a", encoding="utf-8") as log:
                log.write(f"===== {chosen.describe()}: {outcome.status}\n$ {' '.join(command)}\n"
                          f"{outcome.output[-LOG_TAIL:]}\n")
            event(event="run", study=declared.study.name, arm=declared.label,
                  seed=declared.seed, status=outcome.status, seconds=outcome.seconds,
                  estimate_s=round(chosen.seconds), from_step=chosen.steps_done, steps=chosen.steps)
            write_bundle(out / BUNDLE, manifest, bundle_files(campaign, work))
            if outcome.code is None:
                event(event="end", reason="the deadline stopped the last run; it resumes from its checkpoint in the "
                                          "next call on this machine")
                break
    except Interrupted:
        event(event="end", reason="stopped by a signal; a run it stopped resumes from its checkpoint in the next "
                                  "call on this machine")
    write_bundle(out / BUNDLE, manifest, bundle_files(campaign, work))
    return events
