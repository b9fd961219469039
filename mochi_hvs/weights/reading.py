"""What a weights or checkpoint file holds, read by its content (not its name) without running code: torch files
through torch.load(weights_only=True), plain pickles through the numpy-only unpickler. Every failure is one
CheckpointError."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .safe_pickle import NumpyUnpickler

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (zip) format; anything else is a plain or legacy-torch pickle


def _read(path: Path, map_location: str | torch.device) -> Any:
    """The object in a torch file (weights_only) or in a plain pickle of numpy arrays. Files that are not zip
    archives are parsed from memory: a damaged length field in a pickle then cannot make a file read allocate the
    size it claims."""
    try:
        with open(path, "rb") as handle:
            zipped = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if zipped:
            return torch.load(path, map_location=map_location, weights_only=True)
        content = io.BytesIO(path.read_bytes())
        first = NumpyUnpickler(content).load()  # a legacy torch file starts with a magic number
        if isinstance(first, dict):
            return first
        content.seek(0)
        return torch.load(content, map_location=map_location, weights_only=True)
    except Exception as err:  # the reader of a damaged file can fail in any way; all of them mean one thing
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(err).__name__}: {reason})") from err


def read_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The mapping a weights or checkpoint file holds; a missing file, or one that holds no mapping, is a
    CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = _read(path, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dictionary")
    return obj
