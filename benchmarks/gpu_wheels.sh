#!/usr/bin/env bash
# Fill what benchmarks/gpu_check.sh carries to a bare GPU machine, which reaches no package index:
#   .whl/        wheels of what its image lacks (lightly and its pure-Python needs) for its Python, 3.12;
#                its image has torch, torchvision, pytorch-lightning, numpy, pyyaml and pytest already
#   .gpu_data/   the Fashion-MNIST files (from FASHION_MNIST_ROOT, default the installed copy)
# Both folders are git-ignored: name them in the device tool's carry list. Run in any checkout:
#   bash benchmarks/gpu_wheels.sh
# faiss is not carried: faiss-gpu's wheel (135 MB, plus CUDA 12 libraries) is over the 64 MiB a call
# carries, so the Faiss GPU test skips there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
GPU_PYTHON=3.12
SOURCE=${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}
# hydra-core 1.3 (lightly's need) wants omegaconf < 2.4 and antlr4-python3-runtime 4.9, which is published
# as a source archive only: pip builds it into a (pure-Python) wheel here.
WHEELS=(lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.0)
BUILT=(antlr4-python3-runtime==4.9.3)

rm -rf .whl .gpu_data
mkdir -p .whl .gpu_data/fashion-mnist
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${WHEELS[@]}"
"$PYTHON" -m pip wheel -q --no-deps -w .whl "${BUILT[@]}"
cp "$SOURCE"/{train,t10k}-{images-idx3,labels-idx1}-ubyte* .gpu_data/fashion-mnist/
du -sh .whl .gpu_data
