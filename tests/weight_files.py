"""Writers of backbone weights in each supported file format, for tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from mochi_hvs.config import Config, to_dict
from mochi_hvs.distributed import DistEnv
from mochi_hvs.train.build import build_model
from mochi_hvs.weights.checkpoint import FORMAT, capture_rng, save_checkpoint


def our_checkpoint(path: Path, cfg: Config | None = None) -> dict[str, torch.Tensor]:
    """A training checkpoint (with its digest) of a freshly built MoCo model; returns its query backbone's state."""
    cfg = cfg or Config()
    model = build_model(cfg, DistEnv())
    save_checkpoint({"format": FORMAT, "config": to_dict(cfg), "model": model.state_dict(), "epoch": 1}, path)
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def official_moco(path: Path, arch: str = "resnet50", legacy: bool = False) -> dict[str, torch.Tensor]:
    """A file laid out like MoCo's released .pth.tar (DataParallel prefixes, key encoder, MLP head, queue; no
    digest); `legacy`: in the pre-zip torch format the released files use."""
    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = torch.nn.Sequential(torch.nn.Linear(net.fc.in_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    state = {}
    for encoder in ("encoder_q", "encoder_k"):
        state.update({f"module.{encoder}.{k}": v.clone() for k, v in net.state_dict().items()})
    state["module.queue"] = torch.randn(8, 32)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {}}, path,
               _use_new_zipfile_serialization=not legacy)
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def torchvision_state(path: Path, arch: str = "resnet18") -> dict[str, torch.Tensor]:
    """A plain torchvision ResNet state dict, classifier included (no digest); returns it without the
    classifier."""
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    torch.save(state, path)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def small_training_checkpoint(path: Path) -> None:
    """A complete training checkpoint (every entry Trainer.state_dict writes, digest included) with a handful of tiny
    tensors: the layout of a real one at a fraction of the size, for fuzzing. Its config names no model.arch, so the
    loader infers a ResNet from the backbone's keys, which are just enough to read as a resnet18 (conv1 and the
    first conv of every block): it fits no real network."""
    blocks = [f"layer{stage}.{block}.conv1.weight" for stage in range(1, 5) for block in range(2)]
    model = {f"encoder_q.backbone.{k}": torch.randn(2, 2, 1, 3) for k in ["conv1.weight", *blocks]}
    model["queue.features"] = torch.randn(4, 8)
    weight = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    weight.sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    config = to_dict(Config())
    del config["model"]["arch"]
    save_checkpoint({
        "format": FORMAT, "config": config, "model": model, "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": {}, "epoch": 1, "batch_in_epoch": 2, "global_step": 10,
        "rng": capture_rng(),
    }, path)
