"""DSPNet (objective: dspnet): the in-place distillation against its formula, the step's loss and gradient against
MoCo-v2's loss plus the narrower widths' distillation from the widest network's logits held constant, the run's
checkpoint, each width exported as a plain backbone that computes what the slimmable network does at that width, the
deployed width a study evaluates, the cost and the settings' refusals (the learning signal:
test_compact_learning.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import tiny_settings
from test_checkpoint import assert_resume_is_exact
from torch.func import functional_call

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.errors import UserError
from mochi_hvs.loss import contrastive_logits
from mochi_hvs.models.moco import MoCo
from mochi_hvs.models.slimmable import SlimmableEncoder, SwitchableNorms, sliced_tensors
from mochi_hvs.objectives.base import objective_of
from mochi_hvs.objectives.dspnet import DspnetConfig, DspnetStep, inplace_distillation
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep
from mochi_hvs.train import Trainer
from mochi_hvs.weights import export
from mochi_hvs.weights.export import export_backbone
from mochi_hvs.weights.loader import exact_backbone, read_backbone_state
from mochi_hvs.weights.safetensors_format import read_safetensors
from mochi_hvs.weights.width_export import width_backbone

DSPNET = ["objective=dspnet", "dspnet.widths=[0.5,1.0]"]


def explicit_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean over rows of sum_j p_j (log p_j - log q_j), p = softmax(teacher / T), q = softmax(student / T)."""
    p = torch.exp(teacher / temperature) / torch.exp(teacher / temperature).sum(dim=1, keepdim=True)
    q = torch.exp(student / temperature) / torch.exp(student / temperature).sum(dim=1, keepdim=True)
    return (p * (torch.log(p) - torch.log(q))).sum(dim=1).mean()


def test_inplace_distillation_is_the_kl_of_the_widest_distribution_to_the_narrower():
    student, teacher = torch.randn(5, 9, dtype=torch.float64), torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(inplace_distillation(student, teacher, 0.2), explicit_kl(student, teacher, 0.2))
    assert inplace_distillation(teacher, teacher, 0.2).abs() < 1e-12


def dspnet_model(widths: list[float]) -> tuple[MoCo, SwitchableNorms]:
    """A float64 ResNet-18 MoCo model with a filled queue, and its narrower widths' BatchNorm layers, moved off their
    initial values (as after training)."""
    model = MoCo("resnet18", feature_dim=16, queue_size=32, shuffle_bn=False, head_hidden_dim=64).double()
    model.queue.enqueue(nn.functional.normalize(torch.randn(32, 16, dtype=torch.float64), dim=1))
    norms = SwitchableNorms(model.encoder_q, widths)
    with torch.no_grad():
        for parameter in norms.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model, norms


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_loss_is_mocos_plus_the_narrower_widths_distillation_from_the_widest_without_gradient(symmetric):
    widths, temperature, weight = [0.25, 0.5, 1.0], 0.2, 0.7
    model, norms = dspnet_model(widths)
    reference, reference_norms = copy.deepcopy(model), copy.deepcopy(norms)
    section = DspnetConfig(widths=widths, distill_weight=weight)
    views = torch.randn(8, 2, 3, 28, 28, dtype=torch.float64)
    step = DspnetStep(model, SlimmableEncoder(model.encoder_q, norms), section, temperature, symmetric)
    out = step(views, StepRandom(0, 0, 0, torch.device("cpu")))
    # the reference: MoCo-v2's step on the same model, plus each narrower width's KL to the widest logits computed as
    # constants (no gradient can reach the widest network through them)
    moco = ContrastiveStep(reference, temperature, symmetric)(views, StepRandom(0, 0, 0, torch.device("cpu")))
    slim = SlimmableEncoder(reference.encoder_q, reference_norms)
    total = moco.loss
    for query_view in ([0, 1] if symmetric else [0]):
        x_q, x_k = views[:, query_view], views[:, 1 - query_view]
        k = reference.key(x_k).embedding
        with torch.no_grad():
            teacher = contrastive_logits(reference.encoder_q(x_q).embedding, k, reference.queue.features)
        for width in (0.5, 0.25):
            student = contrastive_logits(slim(x_q, width=width).embedding, k, reference.queue.features)
            total = total + weight * explicit_kl(student, teacher, temperature)
    torch.testing.assert_close(out.loss, total, rtol=1e-9, atol=1e-10)
    trained = list(model.encoder_q.parameters()) + list(norms.parameters())
    expected = list(reference.encoder_q.parameters()) + list(reference_norms.parameters())
    for grad, want in zip(torch.autograd.grad(out.loss, trained), torch.autograd.grad(total, expected), strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-7, atol=1e-10)
    assert set(out.metrics) >= {"loss", "proxy_top1", "dspnet/kd_0.5", "dspnet/kd_0.25", "dspnet/proxy_top1_0.25"}
    assert out.keys.shape == ((16 if symmetric else 8), 16)  # MoCo-v2's keys, enqueued by the loop


def test_targets_with_gradient_would_train_the_widest_network_otherwise():
    """What the step leaves out: with the widest logits differentiable, the distillation would move the widest
    network's weights too (the explicit computation above holds them constant, and so does the step)."""
    model, norms = dspnet_model([0.5, 1.0])
    slim = SlimmableEncoder(model.encoder_q, norms)
    x_q, x_k = torch.randn(8, 3, 28, 28, dtype=torch.float64), torch.randn(8, 3, 28, 28, dtype=torch.float64)
    k = model.key(x_k).embedding
    student = contrastive_logits(slim(x_q, width=0.5).embedding, k, model.queue.features)
    teacher = contrastive_logits(model.encoder_q(x_q).embedding, k, model.queue.features)
    wide_only = model.encoder_q.backbone.layer4[1].conv2.weight  # its slice at width 0.5 is the top-left quarter
    detached = torch.autograd.grad(inplace_distillation(student, teacher.detach(), 0.2), wide_only, retain_graph=True)
    attached = torch.autograd.grad(inplace_distillation(student, teacher, 0.2), wide_only)
    assert detached[0][256:].abs().sum() == 0 and attached[0][256:].abs().sum() > 0


@pytest.fixture(scope="module")
def dspnet_run(tmp_path_factory):
    """A finished 3-step DSPNet run (widths 0.5 and 1) of the tiny settings, trained once for the module: the export
    tests only read it."""
    cfg = load_config(None, [*tiny_settings(tmp_path_factory.mktemp("dspnet")), *DSPNET, "optim.steps=3",
                             "eval.knn_baseline=false", "eval.knn_pixels=false"])
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer


def test_each_width_exports_as_a_plain_backbone_that_computes_what_the_slimmable_one_does(dspnet_run, tmp_path):
    cfg, model = dspnet_run.cfg, dspnet_run.model.eval()
    x = torch.randn(4, 3, 28, 28)
    backbone = model.encoder_q.backbone
    with torch.no_grad():
        slim = functional_call(backbone, sliced_tensors(backbone, 0.5, keep_output=False)
                               | model.slim_norms.tensors(0.5, prefix="backbone"), (x,))
    assert export.main(["--checkpoint", str(cfg.run_dir / "last.pth"), "--width", "0.5",
                        "--out", str(out := tmp_path / "w0.5.safetensors")]) == 0
    assert out.with_name("w0.5.safetensors.sha256").is_file()
    state, meta = read_backbone_state(out)  # the loader, by the architecture the export's config names
    assert str(meta.architecture) == "scaled/resnet18 {'width': 0.5, 'small_stem': False}"
    exported, width = exact_backbone(state, meta)  # exactly the plain half-width ResNet's tensors
    assert width == 256 and meta.run["steps"] == 3
    with torch.no_grad():
        torch.testing.assert_close(exported(x), slim, rtol=0, atol=0)
    # and on to the other formats: ONNX, checked in onnxruntime against the backbone before it is written
    graph, line = export_backbone(out, "onnx", tmp_path / "w0.5.onnx")
    assert graph.is_file() and "scaled/resnet18" in line
    deployed, deployed_width = width_backbone(cfg.run_dir / "last.pth", 0.5)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), slim, rtol=0, atol=0)
    # the study evaluates the deployed width; mochi-export and the evaluators read the widest network
    deploy = copy.deepcopy(cfg)
    deploy.dspnet.deploy_width = 0.5
    assert objective_of(deploy).deployed_backbone(cfg.run_dir / "last.pth")[1] == 256
    assert objective_of(cfg).deployed_backbone(cfg.run_dir / "last.pth")[1] == 512
    widest, _ = export_backbone(cfg.run_dir / "last.pth", "safetensors", tmp_path / "widest.safetensors")
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in read_safetensors(widest)[0].items())
    assert "ignored encoder_q.head.* (4), encoder_k.* (124), queue.* (3), slim_norms.* (100)" in read_backbone_state(
        cfg.run_dir / "last.pth")[1].found


def test_a_width_the_run_never_trained_or_a_run_of_another_objective_is_refused(dspnet_run, plain_run, tmp_path):
    last = dspnet_run.cfg.run_dir / "last.pth"
    with pytest.raises(UserError, match=r"holds no network of width 0.25: .*widths \[0.5, 1.0\]"):
        export_backbone(last, "safetensors", tmp_path / "w.safetensors", width=0.25)
    assert not (tmp_path / "w.safetensors").exists()
    with pytest.raises(UserError, match=r"holds no network of width 0.5: .*\(objective=contrastive\)"):
        export_backbone(plain_run.cfg.run_dir / "last.pth", "safetensors", tmp_path / "w.safetensors", width=0.5)
    with pytest.raises(UserError, match="torchvision does not build scaled/resnet18"):  # it would load at full width
        export_backbone(last, "torchvision", tmp_path / "w.pth", width=0.5)
    with pytest.raises(UserError, match="timm does not build scaled/resnet18"):
        export_backbone(last, "timm", tmp_path / "w_timm", width=0.5)


def test_the_run_checkpoints_the_narrower_widths_batchnorm_and_resumes_exactly(tiny_overrides):
    resumed = assert_resume_is_exact([*tiny_overrides, *DSPNET])
    state = resumed.model.state_dict()
    assert "slim_norms.norms.0_5.backbone-layer4-1-bn2.running_var" in state
    assert state["slim_norms.norms.0_5.backbone-layer4-1-bn2.running_var"].shape == (256,)
    assert not any(k.startswith("encoder_k.") and "slim" in k for k in state)


def test_the_cost_counts_each_narrower_width_at_its_square():
    cfg = load_config(None, ["objective=dspnet"])
    assert units_per_image(cfg, selecting=False) == pytest.approx(3 * (1 + 0.75 ** 2 + 0.5 ** 2 + 0.25 ** 2) + 1)
    symmetric = load_config(None, ["objective=dspnet", "moco.symmetric=true", "dspnet.widths=[0.5,1]"])
    assert units_per_image(symmetric, selecting=False) == pytest.approx(2 * (3 * 1.25 + 1))


@pytest.mark.parametrize("setting, message", [
    ("dspnet.widths=[0.5,0.75]", r"must be distinct widths in \(0, 1\] with 1"),
    ("dspnet.widths=[0.5,0.5,1.0]", "must be distinct"),
    ("dspnet.widths=[0.3,1.0]", r"must be multiples of 1/64 .*\[0.3\]"),
    ("dspnet.deploy_width=0.125", r"must be one of dspnet.widths"),
    ("model.arch=timm/resnet18", "must be one of resnet18, resnet34, resnet50 with objective=dspnet"),
])
def test_settings_are_checked(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["objective=dspnet", setting])
