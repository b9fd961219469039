"""safetensors files: the format of the backbones the toolkit writes for users (`mochi-export`'s default), and one the
loader reads from anywhere. A file is a JSON header (names, dtypes, shapes, offsets and a metadata map of strings)
followed by the raw tensor bytes, so reading one never runs code.

Our exports say so in their metadata (`format: mochi_hvs.backbone`) and carry there the SHA-256 digest of their
tensors and other metadata (`sha256`), the pretraining run's config as JSON (`config`) and what the source recorded of
the run, its steps and code commit, as JSON (`run`), when the source has them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from .integrity import DIGEST_KEY, state_digest

EXPORT_FORMAT = "mochi_hvs.backbone"
LENGTH_BYTES = 8  # the header starts with its length: a little-endian unsigned 64-bit integer


def is_safetensors(head: bytes, size: int) -> bool:
    """Whether a file of `size` bytes that starts with `head` (at least 9 bytes) opens as a safetensors header."""
    length = int.from_bytes(head[:LENGTH_BYTES], "little")
    return head[LENGTH_BYTES:LENGTH_BYTES + 1] == b"{" and LENGTH_BYTES + length <= size


def content_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The SHA-256 of a file's tensors (by name) and metadata (its own digest left out), whatever their order."""
    return state_digest({"tensors": dict(sorted(tensors.items())),
                         "metadata": dict(sorted((k, v) for k, v in metadata.items() if k != DIGEST_KEY))})


def recorded_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str] | None:
    """(recorded, actual) digest of a file whose metadata records one (our exports); None otherwise."""
    return (metadata[DIGEST_KEY], content_digest(tensors, metadata)) if DIGEST_KEY in metadata else None


def stored_mapping(metadata: dict[str, str], key: str) -> dict[str, Any] | None:
    """The JSON mapping an export records under `key` (`config`, `run`), or None; ValueError when it is not one."""
    if key not in metadata:
        return None
    value = json.loads(metadata[key])
    if not isinstance(value, dict):
        raise ValueError(f"its {key} is a JSON {type(value).__name__}, not a mapping")
    return value


def to_safetensors(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None,
                   run: dict[str, Any] | None = None) -> bytes:
    """An export's bytes: the backbone `state`, our format marker, the run's `config` and `run` record (where
    given) and the digest."""
    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in state.items()}
    metadata = {"format": EXPORT_FORMAT} | {key: json.dumps(value) for key, value in (("config", config), ("run", run))
                                            if value is not None}
    return safetensors.torch.save(tensors, metadata | {DIGEST_KEY: content_digest(tensors, metadata)})


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors (on the CPU) and metadata."""
    with safetensors.safe_open(path, framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {})
