"""Exporting compact backbones: ONNX Runtime's integer convolutions against the fake-quantized and binary forwards,
within the quantization error derived here for int8 and lower bit-widths; the compact backbones' graphs; the command
line; and their checkpoints exported and loaded again as the compact arch they trained as."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mochi_hvs.config import load_config
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.models.binary import binarise_resnet
from mochi_hvs.models.fake_quant import (
    BitWidths,
    activation_grid,
    make_quantizable,
    quantize_weight,
    weight_scale,
)
from mochi_hvs.models.scaled_resnet import build_scaled_resnet
from mochi_hvs.train import Trainer
from mochi_hvs.weights import export
from mochi_hvs.weights.errors import ExportError
from mochi_hvs.weights.export import export_backbone
from mochi_hvs.weights.integer_onnx import (
    IntegerExportError,
    deployment_bits,
    float_graph,
    plain_copy,
    quantized_at,
    run_graph,
    to_integer_onnx,
)
from mochi_hvs.weights.loader import exact_backbone, read_backbone_state

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def one_layer(bits: BitWidths) -> nn.Module:
    """A convolution (not the first quantizable layer: that one keeps 8 bits) between a fixed full-precision one and
    global pooling, deployed at `bits`."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    make_quantizable(net)
    net[0].least_bits, net[0].deploy = 8, None  # the stem stays full precision: the test layer's input is exact
    net[1].deploy = bits
    return net.eval()


@pytest.mark.parametrize("bits", [BitWidths(8, 8), BitWidths(4, 8), BitWidths(8, 4), BitWidths(2, 4)])
def test_one_integer_convolution_is_within_the_derived_quantization_error(bits):
    net = one_layer(bits)
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    exported = torch.from_numpy(run_graph(to_integer_onnx(net, 8)[0], images))
    with torch.no_grad():
        x = net[0](images)  # the quantized layer's input
        conv = net[1]
        full = F.conv2d(x, conv.weight, conv.bias, padding=1).mean(dim=(2, 3))
        fake = net(images)
        # |y_q - y| <= sum over the taps of |w_q| s_x / 2 + |x| s_w / 2: each input within half an activation step of
        # its level (the grid spans the sample's range, zero exact, so padding adds nothing), each weight within half
        # of its channel's step; averaged by the pooling
        step_x = activation_grid(x, bits.activation)[0]
        step_w = weight_scale(conv.weight, bits.weight)
        bound = (F.conv2d(torch.ones_like(x) * step_x / 2, quantize_weight(conv.weight, bits.weight).abs(), padding=1)
                 + F.conv2d(x.abs(), (step_w / 2).expand_as(conv.weight), padding=1)).mean(dim=(2, 3))
    assert torch.all((exported - full).abs() <= bound + 1e-5)
    assert torch.allclose(exported, fake, atol=1e-5)  # the integer runtime computes the fake-quantized forward
    assert not torch.allclose(exported, full, atol=1e-4)  # and that is not the full-precision one


@pytest.fixture(scope="module")
def trained_bn():
    """Puts a backbone's BatchNorm running statistics away from their initial values (what the exporter folds)."""
    def settle(net: nn.Module) -> nn.Module:
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(16, 3, 28, 28))
        return net.eval()
    return settle


QUARTER = 0.25  # of ResNet-18's channels: every layer kind and block of the full network, a sixteenth of its weights


def quarter_width_resnet18(form: str, bits: dict[str, int]) -> nn.Module:
    """ResNet-18 at a quarter of its channels, quantized at `bits` or binary (binary/resnet18 has no width setting:
    the narrow ResNet's blocks are made binary as that arch makes its own)."""
    if form == "binary":
        return binarise_resnet(build_scaled_resnet("resnet18", QUARTER)[0])
    return build_backbone("quantized/scaled/resnet18", False, {**bits, "width": QUARTER})[0]


@pytest.mark.slow
@pytest.mark.parametrize(("form", "bits", "tolerance"), [
    ("quantized", {"weight_bits": 4, "act_bits": 4}, 1e-4),
    ("quantized", {"weight_bits": 8, "act_bits": 8}, None),
    ("binary", {}, 1e-4),
])
def test_compact_resnets_run_in_integers(form, bits, tolerance, trained_bn):
    torch.manual_seed(0)
    net = trained_bn(quarter_width_resnet18(form, bits))
    graph, _ = to_integer_onnx(net, 28)
    images = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    exported = torch.from_numpy(run_graph(graph, images))
    with torch.no_grad():
        compact = torch.cat([net(image[None]) for image in images])
        full = plain_copy(net)(images)  # the same network without quantization or binarisation
    scale = compact.abs().max()
    if tolerance is not None:  # few levels: the two runtimes' float rounding never moves an activation across one
        assert (exported - compact).abs().max() <= tolerance * scale
    else:  # 255 levels: a rounding that flips moves its value by one step, and what follows by less; the
        # runtime stays far closer to the quantized forward than quantization moves it from full precision
        assert (exported - compact).abs().max() <= 0.5 * (compact - full).abs().max()
    float_size = len(float_graph(plain_copy(net), 28).SerializeToString())
    assert len(graph) < float_size / 3.5  # int8 weights: a quarter of float32's


def test_refusals():
    plain, _ = build_backbone("resnet18")
    with pytest.raises(IntegerExportError, match="no quantized or binary convolution"):
        to_integer_onnx(plain, 28)
    binary, _ = build_backbone("binary/resnet18")
    binary.layer1[0].conv1.binary_weights = False
    with pytest.raises(IntegerExportError, match="real weights"):
        to_integer_onnx(binary, 28)
    vit, _ = build_backbone("quantized/timm/vit_tiny_patch16_224",
                            arch_kwargs={"img_size": 28, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2})
    with pytest.raises(IntegerExportError, match="quantized linear layers are not exported"):
        to_integer_onnx(vit, 28)
    assert deployment_bits("W4A8") == BitWidths(4, 8)
    for text, message in (("w4", "written w<bits>a<bits>"), ("w9a8", r"must be an integer in \[2, 8\]; got 9")):
        with pytest.raises(ValueError, match=message):
            deployment_bits(text)


@pytest.mark.slow
def test_the_export_command_quantizes_a_checkpoint_after_training(checkpoint, tmp_path, capsys):
    out = tmp_path / "w6a8.onnx"
    assert export.main(["--checkpoint", str(checkpoint), "--format", "onnx-int", "--out", str(out),
                        "--bits", "w6a8"]) == 0
    assert f"to {out} as onnx-int" in (line := capsys.readouterr().out) and "quantized/resnet18 at w6a8" in line
    state, meta = read_backbone_state(checkpoint)
    backbone = quantized_at(exact_backbone(state, meta)[0], meta.arch, "w6a8")
    size = meta.config["data"]["image_size"]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.cat([backbone(image[None]) for image in images])
    assert torch.allclose(torch.from_numpy(run_graph(out.read_bytes(), images)), expected,
                          atol=1e-4 * float(expected.abs().max()))
    assert export.main(["--checkpoint", str(checkpoint), "--format", "onnx-int", "--out", str(out),
                        "--bits", "w1a8"]) == 2
    assert export.main(["--checkpoint", str(checkpoint), "--format", "onnx-int", "--out", str(out)]) == 2
    assert "no quantized or binary convolution" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --bits belongs to onnx-int
        export.main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out), "--bits", "w8a8"])


@pytest.mark.slow
@pytest.mark.parametrize("compact", ["ssql", "burn"])
def test_compact_checkpoints_export_and_load_as_their_arch(compact, plain_run, quick_overrides, tmp_path):
    recipe = {"ssql": ["ssql.enabled=true", "model.arch=quantized/resnet18",
                       "model.arch_kwargs={weight_bits: 3, act_bits: 5}"],
              "burn": ["objective=burn", "model.arch=binary/resnet18", "burn.real_weights_until=0",
                       f"burn.teacher={plain_run.cfg.run_dir / 'last.pth'}"]}[compact]
    trainer = Trainer(load_config(None, [*quick_overrides, *recipe, "optim.steps=1", "eval.knn_baseline=false",
                                         "eval.knn_pixels=false"]))
    trainer.train()
    trainer.close()
    out = tmp_path / "backbone.safetensors"
    export_backbone(trainer.cfg.run_dir / "last.pth", "safetensors", out)
    state, meta = read_backbone_state(out)
    assert meta.architecture.arch == trainer.cfg.model.arch
    assert meta.architecture.arch_kwargs == trainer.cfg.model.arch_kwargs
    loaded, _ = exact_backbone(state, meta)
    images = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(images), trainer.model.backbone.eval()(images))  # quantized / binary as trained
    graph, line = export_backbone(trainer.cfg.run_dir / "last.pth", "onnx-int", tmp_path / "backbone.onnx")
    assert f"{trainer.cfg.model.arch} in integer convolutions" in line  # at its own bit-widths: no --bits
    with torch.no_grad():
        expected = torch.cat([loaded(image[None]) for image in images])
    assert torch.allclose(torch.from_numpy(run_graph(graph.read_bytes(), images)), expected,
                          atol=0.05 * float(expected.abs().max()))
    if compact == "burn":  # torchvision builds no binary network: refused rather than loading as a float ResNet
        with pytest.raises(ExportError, match="torchvision does not build binary/resnet18"):
            export_backbone(out, "torchvision", tmp_path / "backbone.pth")
