"""The errors a weights or checkpoint file can raise: one line each, for the user."""

from __future__ import annotations

from ..errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, truncated, corrupt, fails its integrity check or is not ours."""


class WeightsError(CheckpointError):
    """A weights file or state dict that cannot give a backbone (unknown layout, shape mismatch, no match)."""


class UnsafeFileError(CheckpointError):
    """A pickle that would run code when read (it calls a function other than those that rebuild tensors and
    arrays); refused before anything runs."""


class ExportError(CheckpointError):
    """An export the chosen format cannot hold (e.g. a ViT as a detectron2 ResNet), or one that fails its own check
    (an ONNX graph whose outputs differ from the backbone's)."""
