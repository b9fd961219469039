#!/usr/bin/env bash
# The GPU check in one call on a bare CUDA machine (no network there): installs lightly from the carried
# wheels, runs the `cuda`-marked tests, the throughput benchmark beside lightly (step, end to end, data
# pipeline) and a short flagship run, and writes every figure to OUT/gpu_check.jsonl (see gpu_check.py); then
# spends the time left on the GPU campaign's pending runs (docs/gpu-campaign.md), whose records come back in
# OUT/campaign.tar.gz: merge them here with `python -m mochi_hvs.study.campaign merge DIR`.
#
#   bash benchmarks/gpu_wheels.sh                 # once, here (with network): fills .whl/ and .gpu_data/
#   bash benchmarks/gpu_check.sh --budget 560     # there, with .whl and .gpu_data carried along
#   bash benchmarks/gpu_check.sh --device cpu     # dry run on the CPU with tiny sizes
#
# Options: --device cuda|cpu, --out DIR (default $OUT, else runs/gpu_check), --budget SECONDS (default 330).
# PYTHON picks the interpreter (default python3, the one holding torch on the GPU image).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
