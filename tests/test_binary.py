"""The binary layer's forward (sign, scaling) and its straight-through gradients against explicit computations,
Bi-Real's block, and the binary/<resnet> backbones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.models.binary import BinaryBasicBlock, BinaryConv2d, binary_activation, binary_convolutions


def sign(t: torch.Tensor) -> torch.Tensor:
    """+1 where t >= 0, -1 elsewhere, in t's dtype."""
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def test_sign_forward_and_clipped_straight_through_gradient():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], requires_grad=True)
    out = binary_activation(x)
    assert out.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]  # sign(0) = +1: always binary
    out.backward(torch.arange(1.0, 8.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]  # 1 where |x| <= 1


def test_binary_convolution_forward_and_gradients_by_hand():
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, padding=1, bias=False).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = conv.weight.detach()
    alpha = weight.abs().mean(dim=(1, 2, 3))  # alpha_c = mean |w_c|
    signs_w, signs_x = sign(weight), sign(x.detach())
    out = conv(x)
    expected = F.conv2d(signs_x, alpha.view(-1, 1, 1, 1) * signs_w, padding=1)
    assert torch.allclose(out, expected, atol=1e-12)
    counts = out.detach() / alpha.view(1, -1, 1, 1)  # each output: alpha_c times a sum of +-1 products
    assert torch.allclose(counts, counts.round(), atol=1e-9) and counts.abs().max() <= 27

    upstream = torch.randn_like(out)
    out.backward(upstream)
    # d/d sign(x): the transposed convolution of the upstream gradient with the binary weights, then the clip
    grad_signs = torch.nn.grad.conv2d_input(x.shape, alpha.view(-1, 1, 1, 1) * signs_w, upstream, padding=1)
    assert torch.allclose(x.grad, grad_signs * (x.detach().abs() <= 1), atol=1e-12)
    # d/dw_cj = g_cj alpha_c (sign straight through) + sign(w_cj) / n sum_k g_ck sign(w_ck) (through alpha_c)
    g = torch.nn.grad.conv2d_weight(signs_x, weight.shape, upstream, padding=1)
    n = weight[0].numel()
    expected_grad = g * alpha.view(-1, 1, 1, 1) + signs_w / n * (g * signs_w).sum(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(conv.weight.grad, expected_grad, atol=1e-12)


def test_real_weights_stage():
    conv = BinaryConv2d(2, 3, 1, bias=False)
    conv.binary_weights = False
    x = torch.randn(4, 2, 3, 3)
    assert torch.allclose(conv(x), F.conv2d(sign(x), conv.weight), atol=1e-6)


def test_bi_real_block_by_hand():
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    block = BinaryBasicBlock(net.layer2[0]).eval()  # with a downsample: 64 -> 128 channels, stride 2
    x = torch.randn(2, 64, 8, 8)

    def binary_conv(conv, inputs):
        w = conv.weight
        alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(sign(inputs), alpha * sign(w),
                        stride=conv.stride, padding=conv.padding)

    out = block.bn1(binary_conv(block.conv1, x)) + block.downsample(x)
    out = block.bn2(binary_conv(block.conv2, out)) + out
    assert torch.allclose(block(x), out, atol=1e-5)


def test_binary_backbone_keeps_resnet_names_and_only_block_convolutions_are_binary():
    torch.manual_seed(0)
    net, width = build_backbone("binary/resnet18")
    plain = torchvision.models.resnet18()
    plain.fc = torch.nn.Identity()
    assert width == 512 and list(net.state_dict()) == list(plain.state_dict())
    binary = {name for name, m in net.named_modules() if isinstance(m, BinaryConv2d)}
    assert len(binary_convolutions(net)) == 16 and "conv1" not in binary and "layer2.0.downsample.0" not in binary
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 512)


def test_binary_arch_refusals():
    with pytest.raises(ConfigError, match="binary blocks replace BasicBlocks"):
        load_config(None, ["model.arch=binary/resnet50"])
    with pytest.raises(ConfigError, match="takes no arch_kwargs"):
        load_config(None, ["model.arch=binary/resnet18", "model.arch_kwargs={depth: 3}"])
