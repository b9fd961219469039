"""`mochi-export` to every place a user takes a backbone, each checked by loading it there: torchvision (strict, the
classifier as Identity), timm (a pretrained file and an offline Hugging Face folder with its model card), torch.hub
through hubconf.py, and ONNX in onnxruntime; for a tiny ResNet-18 at 28 px and a tiny timm ViT. Every load holds
exactly our backbone's tensors (none missing, none extra) and gives its features."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from eval_outputs import error_line
from test_backbones import VIT, VIT_KWARGS
from weight_files import our_checkpoint

from mochi_hvs.config import load_config
from mochi_hvs.provenance import code_commit
from mochi_hvs.train.loop import Trainer
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
TIMM_NAMES = {"resnet18": ("resnet18", {}), "vit": ("vit_tiny_patch16_224", VIT_KWARGS)}


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


# ------------------------------------------------------------------------------------------------------------- timm

@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_timm_takes_the_safetensors_export_as_its_pretrained_file(runs, tmp_path, name):
    path, expected = runs[name]
    out = tmp_path / "backbone.safetensors"
    export_backbone(path, "safetensors", out)
    timm_name, kwargs = TIMM_NAMES[name]
    # As timm's documentation spells it; with num_classes=0 in the overlay too, timm loads strictly.
    for overlay in (dict(file=str(out)), dict(file=str(out), num_classes=0)):
        net = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs)
        assert_is_ours(net, path, expected)


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_the_timm_folder_loads_offline_by_its_config_and_reads_back(runs, tmp_path, name):
    path, expected = runs[name]
    folder = tmp_path / "backbone"
    _, line = export_backbone(path, "timm", folder)
    assert line.endswith(f'; load it with timm.create_model("local-dir:{folder}", pretrained=True)')
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "model.safetensors.sha256"]
    timm_name, kwargs = TIMM_NAMES[name]
    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["model_args"], config["num_classes"]) == (timm_name, kwargs, 0)
    assert config["pretrained_cfg"]["input_size"] == [3, 28, 28]
    net = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert net.num_classes == 0
    assert_is_ours(net, path, expected)
    state, meta = read_backbone_state(folder / "model.safetensors")  # our loader reads it too, digests checked
    assert meta.architecture == read_backbone_state(path)[1].architecture and meta.run == {"steps": 7,
                                                                                            "commit": "0123abc"}
    card = (folder / "README.md").read_text()
    for row in ("| steps | 7 |", "| seed | 0 |", "| commit | 0123abc |", "| data | fashion_mnist |"):
        assert row in card
    assert f'timm.create_model("local-dir:{folder.name}", pretrained=True)' in card


def test_the_model_card_reports_the_figures_a_trained_run_recorded(quick_overrides, tmp_path):
    trainer = Trainer(load_config(None, [*quick_overrides, "optim.epochs=1"]))
    summary = trainer.fit()  # writes summary.json and the final kNN line of metrics.jsonl beside last.pth
    checkpoint = trainer.state.checkpoint_path
    export_backbone(checkpoint, "timm", tmp_path / "backbone")
    card = (tmp_path / "backbone" / "README.md").read_text()
    last_knn = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()
                if '"knn/top1"' in line][-1]
    for row in (f"| steps | {summary['steps']} |", f"| commit | {code_commit()} |",
                f"| kNN top-1 (%), trained backbone | {summary['knn_top1']} |",
                f"| kNN top-1 (%), raw pixels | {summary['pixels_knn_top1']} |",
                f"| knn/top1 at step {last_knn['step']} (metrics.jsonl) | {round(last_knn['knn/top1'], 2)} |"):
        assert row in card


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
                           "as safetensors, timm or onnx"),
    ("vit", "detectron2", "detectron2 takes resnet18, resnet34 or resnet50 backbones; .* holds a "
                          "timm/vit_tiny_patch16_224 .* backbone: export it as safetensors, timm or onnx"),
    ("resnet18_small_stem", "timm", r"timm has no ResNet with the small stem of this resnet18 \(small stem\) "
                                    r"backbone .*; export it as safetensors or onnx, or load it through hubconf\.py"),
    ("mobilenet", "timm", "torchvision/mobilenet_v3_small is a torchvision model, which timm does not build; "
                          "export it as safetensors, torchvision or onnx"),
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
    assert "--image-size applies to --format onnx and onnx-int only" in capsys.readouterr().err
    assert not (tmp_path / "b.safetensors").exists()
