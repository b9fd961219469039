"""Device, mixed precision and seeding choices, resolved once with clear errors."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from .errors import UserError


class DeviceError(UserError, RuntimeError):
    """The requested device is not available on this machine."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA if present (this process's local GPU), else CPU; cuda asked for without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={name} was requested but no CUDA GPU is available here "
                "(torch.cuda.is_available() is False); use --set device=cpu or device=auto"
            )
        index = int(name.split(":", 1)[1]) if ":" in name else local_rank
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device=cuda:{index} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. auto: bf16 on CUDA when supported."""
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if amp == "fp16" and device.type != "cuda":
        raise DeviceError("amp=fp16 needs a CUDA device (use amp=bf16 or amp=none on the CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for the device when a dtype is set, else a no-op context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
