"""Installation of mochi_hvs."""

from pathlib import Path

from setuptools import find_packages, setup

PATHOLOGY = ["scikit-image>=0.22"]  # the IHC demonstration: its bundled ihc.png and classical nuclei pseudo-labels
ONNX = ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.17"]  # mochi-export --format onnx and its check

setup(
    name="mochi_hvs",
    version="0.1.0",
    description="MoCo-v2 contrastive pretraining with hard negative mixing (MoCHi) and hard view selection (HVS)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mochi_hvs", "mochi_hvs.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.2",
        "torchvision>=0.17",
        "timm>=1.0",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "pillow>=9.0",
        "faiss-cpu>=1.7.4",
        "scikit-learn>=1.3",
        "pycocotools>=2.0.7",
        "safetensors>=0.4",
    ],
    extras_require={
        "test": ["pytest>=7.4", "mlxtend>=0.23", "matplotlib>=3.7", *ONNX, "sphinx>=7.2", "myst-parser>=3.0",
                 *PATHOLOGY],
        "onnx": ONNX,
        "hpt": ["mlxtend>=0.23"],
        "gpu": ["faiss-gpu-cu12"],
        "bench": ["lightly>=1.5"],
        "report": ["matplotlib>=3.7"],
        "pathology": PATHOLOGY,
    },
    entry_points={
        "console_scripts": [
            "mochi-pretrain=mochi_hvs.pretrain:main",
            "mochi-export=mochi_hvs.weights.export:main",
            "mochi-study=mochi_hvs.study.__main__:main",
            "mochi-knn=mochi_hvs.evaluation.commands:knn_main",
            "mochi-linear=mochi_hvs.evaluation.commands:linear_main",
            "mochi-semisup=mochi_hvs.evaluation.commands:semisup_main",
            "mochi-select=mochi_hvs.evaluation.commands:select_main",
            "mochi-detect=mochi_hvs.evaluation.commands:detection_main",
            "mochi-transfer=mochi_hvs.evaluation.commands:transfer_main",
            "mochi-transferability=mochi_hvs.evaluation.commands:transferability_main",
            "mochi-nuclei=mochi_hvs.evaluation.commands:nuclei_main",
        ],
    },
)
