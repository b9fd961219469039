"""`mochi-export` to every place a user takes a backbone, each checked by loading it there: torch.hub through
hubconf.py; for a tiny ResNet-18 at 28 px and a tiny timm ViT. Every load holds exactly our backbone's tensors (none
missing, none extra) and gives its features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from test_backbones import VIT, VIT_KWARGS
from weight_files import our_checkpoint

from mochi_hvs.config import load_config
from mochi_hvs.weights.checkpoint import save_checkpoint
from mochi_hvs.weights.errors import WeightsError
from mochi_hvs.weights.export import export_backbone
from mochi_hvs.weights.loader import read_backbone_state

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["optim.batch_size=32", "moco.queue_size=64", "model.bn_splits=4"]
RUNS = {  # name -> the run's settings
    "resnet18": [],
    "resnet18_small_stem": ["model.small_stem=true"],
    "vit": VIT,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """A checkpoint of each run (name -> file, its backbone state), every floating backbone tensor moved off its
    initialisation (so that one left unloaded shows), with the steps and commit a training run records."""
    folder = tmp_path_factory.mktemp("runs")
    saved_runs = {}
    for index, (name, settings) in enumerate(RUNS.items()):
        path = folder / name / "last.pth"
        path.parent.mkdir()
        our_checkpoint(path, load_config(None, TINY_RUN + settings))
        saved = torch.load(path, weights_only=True)
        generator = torch.Generator().manual_seed(index)
        for key, value in saved["model"].items():
            if key.startswith("encoder_q.backbone.") and value.is_floating_point():
                value.add_(0.1 * torch.rand(value.shape, generator=generator))  # running_var stays positive
        save_checkpoint({**saved, "global_step": 7, "commit": "0123abc"}, path)
        backbone = {k.removeprefix("encoder_q.backbone."): v for k, v in saved["model"].items()
                    if k.startswith("encoder_q.backbone.")}
        saved_runs[name] = path, backbone
    return saved_runs


IMAGES = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))


def features(net: nn.Module, images: torch.Tensor = IMAGES) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(images)


def ours(path: Path) -> torch.Tensor:
    """The features of the backbone our loader reads from `path`."""
    state, meta = read_backbone_state(path)
    net, _ = meta.architecture.build()
    net.load_state_dict(state)
    return features(net)


def assert_is_ours(net: nn.Module, path: Path, expected: dict[str, torch.Tensor]) -> None:
    """`net` holds exactly `expected`, the backbone state of `path` (the same names, none missing and none
    unexpected, and the same tensors), and gives the features of the backbone our loader reads from `path`."""
    state = net.state_dict()
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[key], value) for key, value in expected.items())
    assert torch.equal(features(net), ours(path))


# -------------------------------------------------------------------------------------------------------- torch.hub

@pytest.mark.parametrize("name", ["resnet18_small_stem", "vit"])
def test_torch_hub_loads_the_backbone_of_a_checkpoint_or_export_through_hubconf(runs, tmp_path, name):
    path, expected = runs[name]
    export_backbone(path, "safetensors", tmp_path / "backbone.safetensors")
    for weights in (path, tmp_path / "backbone.safetensors"):
        net = torch.hub.load(str(ROOT), "backbone", source="local", weights=str(weights))
        assert not net.training
        assert_is_ours(net, path, expected)
    with pytest.raises(WeightsError, match=r"backbone.safetensors holds a .* backbone, not the one asked for "
                                           r"\(arch='resnet50'\)"):
        torch.hub.load(str(ROOT), "backbone", source="local", weights=str(tmp_path / "backbone.safetensors"),
                       arch="resnet50")


def test_torch_hub_without_weights_gives_a_random_initialisation_of_the_arch():
    net = torch.hub.load(str(ROOT), "backbone", source="local", arch="timm/vit_tiny_patch16_224",
                         arch_kwargs=VIT_KWARGS)
    assert features(net).shape == (4, 64)


def test_torch_hub_refuses_a_file_that_lacks_a_tensor_of_its_backbone(runs, tmp_path):
    _, expected = runs["resnet18"]
    torch.save({k: v for k, v in expected.items() if k != "layer3.1.bn2.running_var"}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"partial.pth: does not hold exactly the resnet18 backbone: 1 missing "
                                           r"\(layer3.1.bn2.running_var\)$"):
        torch.hub.load(str(ROOT), "backbone", source="local", weights=str(tmp_path / "partial.pth"))
