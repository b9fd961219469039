"""`mochi-export` to every place a user takes a backbone, each checked by loading it there: torchvision (strict, the
classifier as Identity), torch.hub through hubconf.py, and ONNX in onnxruntime; for a tiny ResNet-18 at 28 px and a
tiny timm ViT. Every load holds
exactly our backbone's tensors (none missing, none extra) and gives its features."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn as nn
import torchvision
from eval_outputs import error_line
from test_backbones import VIT, VIT_KWARGS
from weight_files import our_checkpoint

from mochi_hvs.config import load_config
from mochi_hvs.weights.checkpoint import save_checkpoint
from mochi_hvs.weights.errors import ExportError, WeightsError
from mochi_hvs.weights.export import export_backbone, main
from mochi_hvs.weights.loader import read_backbone_state
from mochi_hvs.weights.onnx_format import onnx_difference

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["optim.batch_size=32", "moco.queue_size=64", "model.bn_splits=4"]
RUNS = {  # name -> the run's settings
    "resnet18": [],
    "resnet18_small_stem": ["model.small_stem=true"],
    "vit": VIT,
    "mobilenet": ["model.arch=torchvision/mobilenet_v3_small"],
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


# ------------------------------------------------------------------------------------------------------ torchvision

def torchvision_model(name: str) -> nn.Module:
    """The torchvision model a run's backbone is, with its classifier as Identity (and the small stem where used)."""
    if name == "mobilenet":
        net = torchvision.models.mobilenet_v3_small()
        net.classifier[-1] = nn.Identity()
        return net
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    if name == "resnet18_small_stem":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


@pytest.mark.parametrize("name", ["resnet18", "resnet18_small_stem", "mobilenet"])
def test_the_torchvision_export_loads_strictly_into_torchvision_with_its_classifier_as_identity(runs, tmp_path, name):
    path, expected = runs[name]
    export_backbone(path, "torchvision", tmp_path / "backbone.pth")
    net = torchvision_model(name)
    net.load_state_dict(torch.load(tmp_path / "backbone.pth", weights_only=True), strict=True)
    assert_is_ours(net, path, expected)


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


# ------------------------------------------------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("name", ["resnet18_small_stem", "vit"])
def test_the_onnx_export_gives_the_backbones_features_in_onnxruntime(runs, tmp_path, name):
    path, _ = runs[name]
    out = tmp_path / "backbone.onnx"
    _, line = export_backbone(path, "onnx", out)
    assert "; input (batch, 3, 28, 28), onnxruntime's features within " in line
    onnx.checker.check_model(str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(3))  # a batch size of its own
    exported = session.run(["features"], {"images": images.numpy()})[0]
    state, meta = read_backbone_state(path)
    net, _ = meta.architecture.build()
    net.load_state_dict(state)
    expected = features(net, images).numpy()
    np.testing.assert_allclose(exported, expected, rtol=1e-3, atol=1e-4)
    assert np.abs(expected).max() > 0.1  # features of a real scale, so that the tolerance means something
    # The export's own check refuses a graph that is not the backbone's.
    net.load_state_dict({k: v + 0.05 if v.is_floating_point() else v for k, v in state.items()})
    with pytest.raises(ExportError, match="the ONNX graph's features differ from the backbone's by up to"):
        onnx_difference(out.read_bytes(), net, 28)


# ------------------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize(("name", "fmt", "message"), [
    ("vit", "torchvision", "timm/vit_tiny_patch16_224 is a timm model, which torchvision does not build; export it "
                           "as safetensors or onnx"),
    ("vit", "detectron2", "detectron2 takes resnet18, resnet34 or resnet50 backbones; .* holds a "
                          "timm/vit_tiny_patch16_224 .* backbone: export it as safetensors or onnx"),
])
def test_a_format_that_cannot_hold_the_backbone_refuses_it_in_one_line(runs, tmp_path, capsys, name, fmt, message):
    path, _ = runs[name]
    out = tmp_path / "out"
    assert main(["--checkpoint", str(path), "--format", fmt, "--out", str(out)]) == 2
    assert re.fullmatch(f"error: {message}", error_line(capsys))
    with pytest.raises(ExportError, match=f"^{message}$"):
        export_backbone(path, fmt, out)
    assert not out.exists()


def test_the_image_size_is_an_onnx_option_only(runs, tmp_path, capsys):
    path, _ = runs["resnet18"]
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(path), "--out", str(tmp_path / "b.safetensors"), "--image-size", "32"])
    assert "--image-size applies to --format onnx only" in capsys.readouterr().err
    assert not (tmp_path / "b.safetensors").exists()
