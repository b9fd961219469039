"""Slimmable networks and the ResNets at a width (models/slimmable.py, models/scaled_resnet.py): every width's forward
and gradient against an explicit computation on the shared weights, its own BatchNorm layers, the plain network of
one width, and the `scaled/<resnet>` backbones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.models.moco import Encoder
from mochi_hvs.models.scaled_resnet import build_scaled_resnet
from mochi_hvs.models.slimmable import (
    SlimmableEncoder,
    SwitchableNorms,
    layer_channels,
    narrow,
    scaled_channels,
    sliced_tensors,
)
from mochi_hvs.models.split_bn import SplitBatchNorm2d

WIDTHS = [0.5, 0.75, 1.0]


def tiny_encoder() -> Encoder:
    """conv 3->8, BN, ReLU, conv 8->16, split BN (2 groups), ReLU, pool | head 16->16, ReLU, 16->4 (float64)."""
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, padding=1), SplitBatchNorm2d(16, 2), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    encoder = Encoder(backbone, head).double()
    with torch.no_grad():  # affine parameters and statistics away from their initial values
        for layer in encoder.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
                layer.running_mean.uniform_(-0.2, 0.2)
                layer.running_var.uniform_(0.5, 1.5)
    return encoder


def explicit_forward(encoder: Encoder, norms: SwitchableNorms, x: torch.Tensor, width: float,
                     training: bool) -> torch.Tensor:
    """The tiny encoder at `width` written out: every layer's first width x channels of the shared weights (the
    image's 3 input channels and the 4 embedding outputs kept), width's own BatchNorm affine parameters, batch
    statistics in training (per group of 2 for the split layer), running statistics in eval; L2-normalised."""
    b, h = encoder.backbone, encoder.head
    c1, c2, hidden = round(8 * width), round(16 * width), round(16 * width)
    own = norms.norms[f"{width:g}".replace(".", "_")] if width != 1 else None
    bn1 = b[1] if own is None else own["backbone-1"]
    bn2 = b[4] if own is None else own["backbone-4"]

    def norm(y, layer, groups):
        if not training:
            return F.batch_norm(y, layer.running_mean, layer.running_var, layer.weight, layer.bias, eps=layer.eps)
        grouped = y.unflatten(0, (-1, groups))
        mean = grouped.mean(dim=(0, 3, 4), keepdim=True)
        var = grouped.var(dim=(0, 3, 4), unbiased=False, keepdim=True)
        out = (grouped - mean) / torch.sqrt(var + layer.eps)
        return (out * layer.weight[:, None, None] + layer.bias[:, None, None]).flatten(0, 1)

    y = F.relu(norm(F.conv2d(x, b[0].weight[:c1], padding=1), bn1, 1))
    y = F.relu(norm(F.conv2d(y, b[3].weight[:c2, :c1], b[3].bias[:c2], padding=1), bn2, 2))
    y = y.mean(dim=(2, 3))
    y = F.relu(F.linear(y, h[0].weight[:hidden, :c2], h[0].bias[:hidden]))
    return F.normalize(F.linear(y, h[2].weight[:, :hidden], h[2].bias), dim=1)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("width", WIDTHS)
def test_every_width_is_the_shared_weights_sliced_with_its_own_batchnorm(width, training):
    encoder = tiny_encoder()
    norms = SwitchableNorms(encoder, WIDTHS)
    with torch.no_grad():  # each width's BatchNorm differs from the wide layer's slice, as after training
        for parameter in norms.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    slim = SlimmableEncoder(encoder, norms).train(training)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    out = slim(x, width=width).embedding
    reference = explicit_forward(encoder, norms, x, width, training)
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
    # the gradient reaches the shared weights' slice only, as the explicit computation's
    loss = (out * torch.arange(1.0, 5.0, dtype=torch.float64)).sum()
    shared = [encoder.backbone[3].weight, encoder.head[0].weight]
    grads = torch.autograd.grad(loss, shared)
    expected = torch.autograd.grad((explicit_forward(encoder, norms, x, width, training)
                                    * torch.arange(1.0, 5.0, dtype=torch.float64)).sum(), shared)
    for grad, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)
    c1, c2 = round(8 * width), round(16 * width)
    assert grads[0][c2:].abs().sum() == 0 and grads[0][:, c1:].abs().sum() == 0
    assert grads[0][:c2, :c1].abs().sum() > 0


def test_a_narrower_width_updates_its_own_batchnorm_statistics_only():
    encoder = tiny_encoder()
    norms = SwitchableNorms(encoder, WIDTHS)
    wide = {k: v.clone() for k, v in encoder.state_dict().items()}
    other = {k: v.clone() for k, v in norms.norms["0_75"].state_dict().items()}
    own = norms.norms["0_5"]["backbone-1"]
    before = own.running_mean.clone()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    SlimmableEncoder(encoder, norms).train()(x, width=0.5)
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in wide.items())
    assert all(torch.equal(v, norms.norms["0_75"].state_dict()[k]) for k, v in other.items())
    batch_mean = F.conv2d(x, encoder.backbone[0].weight[:4], padding=1).mean(dim=(0, 2, 3))
    torch.testing.assert_close(own.running_mean, 0.9 * before + 0.1 * batch_mean)
    assert int(own.num_batches_tracked) == 1


def test_switchable_norms_start_as_the_wide_layers_slice():
    encoder = tiny_encoder()
    norms = SwitchableNorms(encoder, WIDTHS)
    assert sorted(norms.norms) == ["0_5", "0_75"]  # the full width uses the network's own layers
    layer = norms.norms["0_75"]["backbone-4"]
    assert isinstance(layer, SplitBatchNorm2d) and layer.num_splits == 2 and layer.num_features == 12
    torch.testing.assert_close(layer.running_var, encoder.backbone[4].running_var[:12])
    torch.testing.assert_close(layer.weight, encoder.backbone[4].weight[:12])
    assert layer.weight.data_ptr() != encoder.backbone[4].weight.data_ptr()  # its own copy


def test_the_plain_network_of_a_width_computes_what_the_slimmable_one_does():
    encoder = tiny_encoder().eval()
    norms = SwitchableNorms(encoder, WIDTHS)
    with torch.no_grad():
        for buffer in norms.buffers():
            if buffer.is_floating_point():
                buffer.add_(0.05)
    plain = narrow(encoder, 0.5, keep_output=True)
    plain.load_state_dict(sliced_tensors(encoder, 0.5, keep_output=True) | norms.tensors(0.5))
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(plain(x).embedding, SlimmableEncoder(encoder, norms).eval()(x, width=0.5).embedding,
                               rtol=0, atol=0)
    assert plain.backbone[3].weight.shape == (8, 4, 3, 3) and plain.head[2].weight.shape == (4, 8)


def test_channels_must_stay_whole():
    assert scaled_channels(64, 0.25) == 16 and scaled_channels(512, 0.75) == 384
    with pytest.raises(ValueError, match="leaves 19.2 of 64 channels"):
        scaled_channels(64, 0.3)
    assert layer_channels(tiny_encoder(), 0.5, keep_output=False)["head.2"] == (8, 2)
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(ValueError, match="grouped convolutions"):
        layer_channels(grouped, 0.5, keep_output=False)


@pytest.mark.parametrize("arch, width, stages", [("resnet18", 0.5, (32, 64, 128, 256)),
                                                 ("resnet50", 0.25, (16, 32, 64, 128))])
def test_a_scaled_resnet_is_torchvisions_with_every_channel_count_scaled(arch, width, stages):
    net, features = build_scaled_resnet(arch, width)
    wide = getattr(torchvision.models, arch)()
    expansion = 4 if arch == "resnet50" else 1
    assert isinstance(net, torchvision.models.ResNet) and features == stages[-1] * expansion
    assert net.conv1.weight.shape == (stages[0], 3, 7, 7)
    for index, planes in enumerate(stages, start=1):
        block = getattr(net, f"layer{index}")[-1]
        last = block.conv3 if expansion == 4 else block.conv2
        assert last.out_channels == planes * expansion
    assert set(net.state_dict()) == set(wide.state_dict()) - {"fc.weight", "fc.bias"}
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, features)
    # torchvision's initialisation: Kaiming normal over the fan out of the narrow layer, BatchNorm at 1 and 0
    conv = net.layer3[0].conv2
    fan_out = conv.out_channels * 9  # a 3 x 3 convolution
    assert abs(conv.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.05
    assert torch.equal(net.bn1.weight, torch.ones(stages[0])) and torch.equal(net.bn1.bias, torch.zeros(stages[0]))


def test_scaled_resnets_are_a_model_arch_with_their_width_and_stem_as_arch_kwargs():
    cfg = load_config("configs/moco_v2.yaml", ["model.arch=scaled/resnet18",
                                               "model.arch_kwargs={width: 0.25, small_stem: true}"])
    net, features = build_backbone(cfg.model.arch, arch_kwargs=cfg.model.arch_kwargs)
    assert features == 128 and net.conv1.weight.shape == (16, 3, 3, 3) and isinstance(net.maxpool, nn.Identity)
    with pytest.raises(ConfigError, match=r"'model.arch_kwargs' cannot build .* width 0.3 leaves 19.2 of 64"):
        load_config("configs/moco_v2.yaml", ["model.arch=scaled/resnet18", "model.arch_kwargs={width: 0.3}"])
    with pytest.raises(ConfigError, match=r"did you mean 'scaled/resnet18'"):
        load_config("configs/moco_v2.yaml", ["model.arch=scaled/resnet81"])
    with pytest.raises(ConfigError, match="'model.small_stem' applies to resnet18"):
        load_config("configs/moco_v2.yaml", ["model.arch=scaled/resnet18", "model.small_stem=true"])
