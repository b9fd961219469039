"""The fake quantizer against hand-computed grids at every bit-width (forward and straight-through backward), the
quantizable layers against explicit computations, and the quantized/<arch> backbones."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.models.fake_quant import (
    FIRST_LAYER_BITS,
    BitWidths,
    QuantConv2d,
    QuantLinear,
    fake_quantize,
    make_quantizable,
    quantize_activation,
    quantize_weight,
    quantized,
    weight_integers,
)

BITS = range(2, 9)


def python_round(value: float) -> int:
    """Python's round: half to even, as torch.round and integer kernels."""
    return round(value)


@pytest.mark.parametrize("bits", BITS)
def test_weight_grid_by_hand(bits):
    # one output channel [0.9, -0.4, 0.05, -1.2]: Q = 2^(b-1) - 1 levels each side, step 1.2 / Q
    values = [0.9, -0.4, 0.05, -1.2]
    levels = 2 ** (bits - 1) - 1
    step = 1.2 / levels
    expected = [max(-levels, min(levels, python_round(v / step))) * step for v in values]
    weight = torch.tensor([values], dtype=torch.float64, requires_grad=True)
    quantized_weight = quantize_weight(weight, bits)
    assert quantized_weight.tolist()[0] == pytest.approx(expected, abs=1e-12)
    assert len({round(v / step) for v in quantized_weight.tolist()[0]}) <= 2 * levels + 1
    quantized_weight.sum().backward()  # the largest weight maps to Q exactly: nothing is clamped
    assert weight.grad.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    integers, scales = weight_integers(weight, bits)
    assert integers.dtype == torch.int8 and (integers.double() * scales.view(-1, 1)).tolist()[0] == pytest.approx(
        expected, abs=1e-12)


def test_weight_grid_is_per_output_channel():
    weight = torch.tensor([[1.0, 0.5], [100.0, -30.0]])
    # channel 0: step 1/127; channel 1: step 100/127, each on its own grid
    out = quantize_weight(weight, 8)
    assert out[0].tolist() == pytest.approx([1.0, round(0.5 * 127) / 127])
    assert out[1].tolist() == pytest.approx([100.0, round(-30 * 1.27) * 100 / 127])


@pytest.mark.parametrize("bits", BITS)
def test_activation_grid_by_hand(bits):
    # sample 0 spans [-0.5, 2.5]: step 3 / (2^b - 1), zero point round(0.5 / step); sample 1, all positive, spans
    # [0, 4] (0 is always in the range): zero point 0
    rows = [[-0.5, 0.0, 1.0, 2.5, 0.3], [0.7, 4.0, 1.9, 0.2, 3.3]]
    x = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    top = 2 ** bits - 1
    expected = []
    for row in rows:
        low, high = min(min(row), 0.0), max(max(row), 0.0)
        step = (high - low) / top
        zero = python_round(-low / step)
        expected.append([(max(0, min(top, python_round(v / step) + zero)) - zero) * step for v in row])
    out = quantize_activation(x, bits)
    assert out.tolist()[0] == pytest.approx(expected[0], abs=1e-12)
    assert out.tolist()[1] == pytest.approx(expected[1], abs=1e-12)
    assert out[0, 1].item() == 0.0  # zero is exactly representable
    out.sum().backward()  # every value lies in its sample's range: the gradient passes straight through
    assert x.grad.tolist() == [[1.0] * 5, [1.0] * 5]


def test_straight_through_gradient_is_zero_where_clamped():
    # step 0.5, zero point 2, levels 0..7 (3 bits): representable [-1.0, 2.5]; -3 and 9 are clamped
    x = torch.tensor([-3.0, -1.0, 0.26, 2.5, 9.0], requires_grad=True)
    out = fake_quantize(x, torch.tensor(0.5), torch.tensor(2.0), 0, 7)
    assert out.tolist() == [-1.0, -1.0, 0.5, 2.5, 2.5]
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]


def test_quantizable_layers_keep_parameters_and_compute_explicitly():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, bias=False), nn.Flatten(),
                        nn.LazyLinear(6))
    net(torch.randn(1, 3, 6, 6))  # materialise the lazy layer
    params = [id(p) for p in net.parameters()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 6, 6)
    plain = net(x)
    layers = make_quantizable(net)
    assert [type(layer) for layer in layers] == [QuantConv2d, QuantConv2d, QuantLinear]
    assert [id(p) for p in net.parameters()] == params and net.state_dict().keys() == state.keys()
    assert torch.equal(net(x), plain)  # full precision until bit-widths are set
    assert layers[0].least_bits == FIRST_LAYER_BITS and layers[1].least_bits < FIRST_LAYER_BITS

    with quantized(net, BitWidths(3, 4)):
        out = net(x)
    first, second, linear = net[0], net[2], net[4]
    expected = F.conv2d(quantize_activation(x, 8), quantize_weight(first.weight, 8), first.bias, padding=1)
    expected = F.conv2d(quantize_activation(torch.relu(expected), 4), quantize_weight(second.weight, 3))
    expected = F.linear(quantize_activation(expected.flatten(1), 4), quantize_weight(linear.weight, 3), linear.bias)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(net(x), plain)  # restored on exit


def test_quantized_backbone_is_full_precision_in_training_and_deployed_in_eval():
    torch.manual_seed(0)
    net, width = build_backbone("quantized/resnet18", False, {"weight_bits": 4, "act_bits": 5})
    torch.manual_seed(0)
    plain, _ = build_backbone("resnet18")
    assert width == 512 and net.state_dict().keys() == plain.state_dict().keys()
    net.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 28, 28)
    assert torch.equal(net(x), plain(x))
    net.eval(), plain.eval()
    deployed = net(x)
    assert not torch.allclose(deployed, plain(x), atol=1e-3)
    make_quantizable(plain)
    with quantized(plain, BitWidths(4, 5)):
        assert torch.equal(deployed, plain(x))
    single = torch.cat([net(x[i:i + 1]) for i in range(3)])  # each sample on its own grid: batch-independent
    assert torch.allclose(single, deployed, atol=1e-5)


def test_quantized_arch_in_a_config(tmp_path):
    cfg = load_config(None, ["model.arch=quantized/resnet18", "model.arch_kwargs={weight_bits: 2, act_bits: 4}"])
    assert cfg.model.arch_kwargs == {"weight_bits": 2, "act_bits": 4}
    with pytest.raises(ConfigError, match=r"'model.arch_kwargs' .*weight_bits must be an integer in \[2, 8\]; got 1"):
        load_config(None, ["model.arch=quantized/resnet18", "model.arch_kwargs={weight_bits: 1}"])
    with pytest.raises(ConfigError, match="did you mean 'quantized/resnet18'"):
        load_config(None, ["model.arch=quantized/resnt18"])
