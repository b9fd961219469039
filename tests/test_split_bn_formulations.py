"""Split BatchNorm's two formulations against per-group torch BatchNorm in float64: outputs, gradients and running
statistics, in both memory formats, and the layout each keeps."""

import copy

import pytest
import torch
import torch.nn as nn

from mochi_hvs.models import SplitBatchNorm2d
from mochi_hvs.models.split_bn import FORMULATIONS

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def per_group_reference(x, weight, bias, running_mean, running_var, splits, momentum, eps, track):
    """Group g (samples g, g + G, ...) through its own nn.BatchNorm2d; running statistics averaged over groups. Returns
    the output, the statistics and the groups' layers (whose parameter gradients add up to the shared ones)."""
    out = torch.empty_like(x)
    means, variances, layers = [], [], []
    for g in range(splits):
        bn = nn.BatchNorm2d(x.shape[1], eps=eps, momentum=momentum, track_running_stats=track).double()
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
            if track:
                bn.running_mean.copy_(running_mean)
                bn.running_var.copy_(running_var)
        out[g::splits] = bn(x[g::splits])
        layers.append(bn)
        if track:
            means.append(bn.running_mean)
            variances.append(bn.running_var)
    stats = (torch.stack(means).mean(0), torch.stack(variances).mean(0)) if track else None
    return out, stats, layers


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("track", [True, False], ids=["running-stats", "batch-stats-only"])
def test_every_formulation_equals_per_group_batch_norm(formulation, layout, track):
    torch.manual_seed(0)
    splits, c = 4, 5
    scale = torch.arange(1.0, 17.0, dtype=torch.float64).view(16, 1, 1, 1)  # groups with different moments
    x = (torch.randn(16, c, 6, 7, dtype=torch.float64) * scale + scale).contiguous(memory_format=FORMATS[layout])
    split = SplitBatchNorm2d(c, splits, formulation=formulation, momentum=0.3, track_running_stats=track).double()
    with torch.no_grad():
        split.weight.uniform_(0.5, 1.5)
        split.bias.uniform_(-1, 1)
        if track:
            split.running_mean.uniform_(-1, 1)
            split.running_var.uniform_(0.5, 2)
    before = copy.deepcopy(split)
    upstream = torch.randn(16, c, 6, 7, dtype=torch.float64)

    x_ours = x.clone().requires_grad_()
    out = split(x_ours)
    out.backward(upstream)

    x_ref = x.clone().requires_grad_()
    expected, stats, layers = per_group_reference(x_ref, before.weight, before.bias, before.running_mean,
                                                  before.running_var, splits, 0.3, split.eps, track)
    expected.backward(upstream)
    weight_grad = sum(bn.weight.grad for bn in layers)
    bias_grad = sum(bn.bias.grad for bn in layers)

    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(split.weight.grad, weight_grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(split.bias.grad, bias_grad, rtol=1e-9, atol=1e-10)
    if track:
        torch.testing.assert_close(split.running_mean, stats[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(split.running_var, stats[1], rtol=1e-10, atol=1e-12)
        assert int(split.num_batches_tracked) == 1
    fused_here = formulation == "fused" or (formulation == "auto" and layout == "channels_last")
    if fused_here:  # the fused formulation keeps the input's layout (no copy in or out)
        assert out.is_contiguous(memory_format=FORMATS[layout])


def test_auto_takes_the_fused_formulation_for_channels_last_only(monkeypatch):
    calls = []
    split = SplitBatchNorm2d(3, 2)
    monkeypatch.setattr(split, "_fused", lambda x: calls.append("fused") or x)
    monkeypatch.setattr(split, "_grouped", lambda x: calls.append("grouped") or x)
    x = torch.randn(4, 3, 5, 5)
    split(x)
    split(x.contiguous(memory_format=torch.channels_last))
    assert calls == ["grouped", "fused"]


def test_the_fused_formulation_keeps_float32_statistics_under_bfloat16():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 9, 9) * 3 + 100  # a large mean: bfloat16 moments would lose the variance
    split = SplitBatchNorm2d(4, 2, formulation="fused")
    reference = SplitBatchNorm2d(4, 2, formulation="grouped")
    out = split(x.bfloat16())
    expected = reference(x.bfloat16().float())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.02)
    torch.testing.assert_close(split.running_var, reference.running_var, rtol=1e-5, atol=1e-5)


def test_an_unknown_formulation_is_refused():
    with pytest.raises(ValueError, match="formulation 'fast' is not one of"):
        SplitBatchNorm2d(3, 2, formulation="fast")
