"""The machine a figure was measured on: CPU model, usable cores, vector instruction set, and the GPU in use.

Every benchmark and study puts it beside its figures, since timings differ several-fold between CPUs (an
AVX-512 Xeon against an AVX2-only EPYC, say) and mean nothing without it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import torch


def _cpu_fields() -> dict[str, str]:
    """'model name' and 'flags' of the first processor, from /proc/cpuinfo or else lscpu."""
    cpuinfo = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    if "model name" not in fields or "flags" not in fields:
        try:
            listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            listing = ""
        for line in listing.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def vector_isa(flags: set[str]) -> str:
    """The widest x86 vector extension among the CPU flags: AVX-512 (foundation), AVX2, or neither."""
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return "no AVX2"


def kernel_isa() -> str:
    """The instruction set torch's CPU kernels dispatch to, in vector_isa's spelling; lower than the CPU's when
    ATEN_CPU_CAPABILITY caps it (e.g. =avx2 on an AVX-512 machine, to check numerics as on an AVX2-only CPU)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return {"AVX512": "AVX-512", "AVX2": "AVX2", "DEFAULT": "no AVX2"}.get(capability, capability)


@functools.cache
def _cpu_info() -> dict[str, object]:
    fields = _cpu_fields()
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_cores": len(os.sched_getaffinity(0)),  # the logical CPUs this process may run on
        "isa": vector_isa(set(fields.get("flags", "").split())),
        "kernel_isa": kernel_isa(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def machine_info(device: torch.device | str = "cpu") -> dict[str, object]:
    """CPU model, usable cores, instruction set, torch version and threads; on CUDA also GPU name and CUDA version."""
    info = dict(_cpu_info())
    device = torch.device(device)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def device_description(device: torch.device | str = "cpu") -> str:
    """One line for reports, e.g. 'AMD EPYC, 2 cores, AVX2' or 'NVIDIA H100 (CPU: Intel Xeon, 16 cores, AVX-512)';
    torch's kernel instruction set is named too where it is capped below the CPU's."""
    info = machine_info(device)
    cpu = f"{info['cpu']}, {info['cpu_cores']} cores, {info['isa']}"
    if info["kernel_isa"] != info["isa"]:
        cpu += f" (torch kernels: {info['kernel_isa']})"
    return f"{info['gpu']} (CPU: {cpu})" if "gpu" in info else cpu
