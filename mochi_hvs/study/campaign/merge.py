"""Merging a campaign bundle into the studies' results: new result lines appended (a line already there is not
added again, so merging twice changes nothing), the runs' records copied beside them, the reports regenerated."""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import UserError
from ..runner import RESULTS
from .bundle import read_bundle
from .kinds import load_kind
from .records import append_new

RUN_FILE = re.compile(r"^runs/(?P<label>[A-Za-z0-9][A-Za-z0-9_.-]*)/seed(?P<seed>\d+)/(?P<record>[^/]+)$")
OVERRIDES = ("overrides", "evaluation_overrides", "video_overrides")


def merge_bundle(path: Path, with_overrides: bool = False) -> list[str]:
    """Merge the bundle (a file, or the folder holding it) into each of its studies' results folder, relative to
    the current folder as the studies' runners' are; returns one line per study saying what was added.

    A bundle made with overrides (a dry run's tiny sizes) is refused unless `with_overrides`: its runs are not
    the studies' recipes."""
    manifest, files = read_bundle(path)
    overrides = [value for key in OVERRIDES for value in manifest.get(key, [])]
    if overrides and not with_overrides:
        raise UserError(f"{path} was made with overrides ({' '.join(overrides)}), so its runs are not the studies' "
                        "recipes; merge it with --with-overrides only into a scratch checkout")
    done = []
    for name, study_file in manifest["studies"].items():
        prefix = f"{name}/"
        members = {member.removeprefix(prefix): data for member, data in files.items() if member.startswith(prefix)}
        if RESULTS not in members:
            continue
        study = load_kind(manifest.get("kinds", {}).get(name, "study"), Path(study_file))
        if study.name != name:
            raise UserError(f"{path}: {study_file} is study {study.name!r}, not {name!r} as the bundle says")
        lines = members.pop(RESULTS).decode().splitlines()
        for member in members:
            match = RUN_FILE.match(member)
            if match is None or match["record"] not in study.run_records:
                raise UserError(f"{path}: unexpected member {prefix}{member}; not a campaign bundle")
        target = study.report_dir
        added = append_new(study.results, lines)
        for member, data in members.items():
            (target / member).parent.mkdir(parents=True, exist_ok=True)
            (target / member).write_bytes(data)
        study.write_report()
        done.append(f"{name}: {added} new result line(s) in {study.results}, {len(members)} run record(s) copied")
    return done
