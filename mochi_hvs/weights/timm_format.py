"""The timm export: a folder in the Hugging Face layout that `timm.create_model("local-dir:DIR", pretrained=True)`
loads offline (config.json, model.safetensors, README.md: the model card), and the timm model a backbone is.

Our ResNets are timm's resnet18/34/50, whose parameter names are torchvision's; timm/<name> backbones are timm's own,
built with arch_kwargs as its model_args. config.json declares no classifier (num_classes 0, as the export has none),
so timm loads the weights strictly, and the run's image size and normalisation as the preprocessing. timm has no
counterpart of the small stem and does not build torchvision/<name> models: both are refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..models.arch import library_and_name
from .architecture import Architecture
from .errors import ExportError
from .loader import WeightsMeta
from .model_card import model_card
from .run_records import records_beside
from .safetensors_format import to_safetensors

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
KEPT_CFG = ("first_conv", "classifier", "fixed_input_size")  # timm's own entries of the model's pretrained_cfg
EVAL_VIEW = {"interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center"}  # augment.clean_transform's


def timm_model(architecture: Architecture) -> tuple[str, dict[str, Any]]:
    """(timm model name, model_args) of a backbone; an ExportError where timm has none."""
    library, name = library_and_name(architecture.arch)
    if library == "timm":
        return name, dict(architecture.arch_kwargs)
    if library is None and architecture.small_stem:
        raise ExportError(f"timm has no ResNet with the small stem of this {architecture} backbone (a 3x3 stride-1 "
                          "first conv and no max-pool: every timm ResNet stem, 7x7 or a deep 3x3 stack, starts with a "
                          "stride-2 conv and ends in a stride-2 pooling step); export it as safetensors or onnx, or "
                          "load it through hubconf.py")
    if library is None:
        return name, {}
    if library == "torchvision":
        raise ExportError(f"{architecture.arch} is a torchvision model, which timm does not build; export it as "
                          "safetensors, torchvision or onnx")
    raise ExportError(f"timm does not build {architecture.arch}; export it as safetensors or onnx")


def timm_config(name: str, model_args: dict[str, Any], data: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
    """config.json of timm's `name` built with `model_args`, without classifier, preprocessing from the run's `data`
    settings (timm's defaults without them); and the model's feature width."""
    import timm

    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False, num_classes=0, **model_args)
    default = net.pretrained_cfg
    preprocessing = {"input_size": [3, data["image_size"], data["image_size"]], "mean": data["mean"],
                     "std": data["std"], **EVAL_VIEW} if data else {
        key: default[key] for key in ("input_size", "mean", "std", *EVAL_VIEW) if key in default}
    pretrained_cfg = {key: default[key] for key in KEPT_CFG if key in default} | preprocessing | {
        "custom_load": False, "num_classes": 0}
    width = getattr(net, "head_hidden_size", None) or net.num_features
    return {"architecture": name, "num_classes": 0, "num_features": net.num_features, "model_args": model_args,
            "pretrained_cfg": pretrained_cfg}, width


def timm_folder(state: dict[str, torch.Tensor], meta: WeightsMeta, folder: Path) -> dict[str, bytes]:
    """The files of the timm folder export of a backbone read from `meta.path`, by name."""
    name, model_args = timm_model(meta.architecture)
    config, width = timm_config(name, model_args, (meta.config or {}).get("data"))
    card = model_card(folder.name, name, model_args, f"The {meta.architecture} backbone of `{Path(meta.path).name}`",
                      width, meta.config, meta.run, records_beside(meta.path))
    return {WEIGHTS: to_safetensors(state, meta.config, meta.run or None),
            CONFIG: (json.dumps(config, indent=2) + "\n").encode(), CARD: card.encode()}
