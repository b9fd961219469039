"""The bundle a campaign call leaves in its output folder: ONE gzipped tar file, since the GPU machine hands back at
most 8 files, none more than two folders down.

    manifest.json                                  the call: campaign, device, machine, commit, overrides, its runs
    <study>/results.jsonl                          the study's new result lines (runs recorded in full, references)
    <study>/runs/<arm>/seed<k>/summary.json        each such run's records (metrics.jsonl, budget.json likewise)
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from ...errors import UserError

BUNDLE = "campaign.tar.gz"
MANIFEST = "manifest.json"


def write_bundle(path: Path, manifest: dict[str, Any], files: dict[str, bytes]) -> None:
    """Write the bundle in one step (a partial file never has its name)."""
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for name, data in {MANIFEST: (json.dumps(manifest, indent=1) + "\n").encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.replace(partial, path)


def read_bundle(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the other files of a bundle, or of the bundle in a folder."""
    if path.is_dir():
        path = path / BUNDLE
    if not path.is_file():
        raise UserError(f"no campaign bundle at {path}: give the {BUNDLE} a campaign call wrote, or its folder")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                name = PurePosixPath(member.name)
                if not member.isfile() or name.is_absolute() or ".." in name.parts:
                    raise UserError(f"{path}: unexpected member {member.name!r}; not a campaign bundle")
                files[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{path}: not a readable campaign bundle ({err})") from err
    if MANIFEST not in files:
        raise UserError(f"{path}: no {MANIFEST}; not a campaign bundle")
    return json.loads(files.pop(MANIFEST)), files
