"""The machine line printed beside every figure: instruction set from the CPU flags and torch's kernel dispatch."""

import os
import subprocess
import sys

import torch

from mochi_hvs.machine import device_description, kernel_isa, machine_info, vector_isa


def test_vector_isa_is_the_widest_extension_among_the_flags():
    assert vector_isa({"sse2", "avx", "avx2", "avx512f", "avx512bw"}) == "AVX-512"
    assert vector_isa({"sse2", "avx", "avx2", "fma"}) == "AVX2"
    assert vector_isa({"sse2", "avx"}) == "no AVX2"
    assert vector_isa({"avx512bw"}) == "no AVX2"  # no foundation, no AVX2: neither is usable


def test_machine_info_names_the_cpu_cores_and_both_instruction_sets():
    info = machine_info("cpu")
    assert info["cpu_cores"] == len(os.sched_getaffinity(0)) and info["torch"] == torch.__version__
    assert info["kernel_isa"] == kernel_isa()
    assert device_description("cpu").startswith(f"{info['cpu']}, {info['cpu_cores']} cores, {info['isa']}")


def _description_under(capability: str) -> tuple[str, str]:
    code = ("from mochi_hvs.machine import device_description, kernel_isa; "
            "print(kernel_isa()); print(device_description())")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    lines = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    kernels, description = lines.strip().splitlines()
    return kernels, description


def test_a_capped_kernel_instruction_set_is_named_beside_the_cpus():
    kernels, description = _description_under("default")
    assert kernels == "no AVX2"
    if machine_info()["isa"] != "no AVX2":
        assert description.endswith("(torch kernels: no AVX2)")
    else:
        assert "torch kernels" not in description
