"""What a measurement ran on: CPU model, cores and instruction set, GPU name; named beside every timing."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import torch


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@cache
def cpu_description() -> str:
    """E.g. 'AMD EPYC, 2 cores, AVX2 only' or 'Intel(R) Xeon(R) ..., 2 cores, AVX-512'."""
    info = _cpuinfo()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else "AVX2 only" if "avx2" in flags else "no AVX2"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, {isa}"


def device_description(device: torch.device | str = "cpu") -> str:
    """The CPU, plus the GPU's name when `device` is CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CPU: {cpu_description()})"
    return cpu_description()
