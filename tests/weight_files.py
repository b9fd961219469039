"""Writers of backbone weights in each supported file format, for tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from mochi_hvs.checkpoint import FORMAT
from mochi_hvs.config import Config, to_dict
from mochi_hvs.models.moco import MoCo


def our_checkpoint(path: Path, cfg: Config | None = None) -> dict[str, torch.Tensor]:
    """A training checkpoint of a freshly built MoCo model; returns its query backbone's state."""
    cfg = cfg or Config()
    model = MoCo(cfg.model, cfg.moco)
    torch.save({"format": FORMAT, "config": to_dict(cfg), "model": model.state_dict(), "epoch": 1}, path)
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def official_moco(path: Path, arch: str = "resnet50") -> dict[str, torch.Tensor]:
    """A file laid out like MoCo's released .pth.tar (DataParallel prefixes, key encoder, MLP head, queue)."""
    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = torch.nn.Sequential(torch.nn.Linear(net.fc.in_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    state = {}
    for encoder in ("encoder_q", "encoder_k"):
        state.update({f"module.{encoder}.{k}": v.clone() for k, v in net.state_dict().items()})
    state["module.queue"] = torch.randn(8, 32)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {}}, path)
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def torchvision_state(path: Path, arch: str = "resnet18") -> dict[str, torch.Tensor]:
    """A plain torchvision ResNet state dict, classifier included; returns it without the classifier."""
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    torch.save(state, path)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}
