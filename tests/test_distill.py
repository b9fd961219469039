"""Feature-regression distillation (objective: distill): the loss through each teacher's MLP head and its gradient
against an explicit float64 computation, the heads' independence, the same images for teacher and student, frozen
teachers through the real loop, the exported student, and the settings' refusals (the learning signal:
test_compact_learning.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from weight_files import our_checkpoint

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.regression_head import DistilledStudent, regression_head
from mochi_hvs.objectives.distill import DistillStep
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.train import Trainer
from mochi_hvs.weights.export import export_backbone
from mochi_hvs.weights.loader import exact_backbone, read_backbone_state

HALF_WIDTH = ["model.arch=scaled/resnet18", "model.arch_kwargs={width: 0.5}"]


def conv_net(out: int) -> nn.Sequential:
    """A small float64 backbone: conv 3 -> out, BatchNorm, ReLU, global average pool."""
    return nn.Sequential(nn.Conv2d(3, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()


class Recording(nn.Module):
    """A module that records every input it is given, then runs `inner`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.inner(x)


def explicit_head(head: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """The regression head written out: (Linear, BatchNorm over the batch, ReLU) blocks, then a Linear."""
    linears = [m for m in head if isinstance(m, nn.Linear)]
    norms = [m for m in head if isinstance(m, nn.BatchNorm1d)]
    for linear, norm in zip(linears[:-1], norms, strict=True):
        h = h @ linear.weight.T + linear.bias
        h = (h - h.mean(dim=0)) / torch.sqrt(h.var(dim=0, unbiased=False) + norm.eps) * norm.weight + norm.bias
        h = torch.clamp(h, min=0)
    return h @ linears[-1].weight.T + linears[-1].bias


def explicit_terms(student: DistilledStudent, teachers: list[nn.Module], images: torch.Tensor) -> list[torch.Tensor]:
    """Each teacher's term: mean over the images of ||p / ||p|| - z / ||z|| ||^2, p its head's prediction from the
    student's features, z its own features (a constant)."""
    features = student.backbone(images)
    terms = []
    for head, teacher in zip(student.heads, teachers, strict=True):
        with torch.no_grad():
            z = teacher(images)
        p = explicit_head(head, features)
        terms.append(((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(dim=1).mean())
    return terms


def two_teacher_step() -> tuple[DistillStep, DistilledStudent, list[nn.Module]]:
    """A student of 6 features with 3-layer heads regressing two teachers of 5 and 7 features (float64)."""
    teachers = [conv_net(5).eval().requires_grad_(False), conv_net(7).eval().requires_grad_(False)]
    heads = nn.ModuleList([regression_head(6, 5, 8, 3), regression_head(6, 7, 8, 3)]).double()
    student = DistilledStudent(conv_net(6), heads)
    return DistillStep(student, teachers), student, teachers


def test_the_loss_is_the_regression_through_each_teachers_head_summed():
    step, student, teachers = two_teacher_step()
    views = torch.randn(4, 2, 3, 6, 6, dtype=torch.float64)
    out = step(views, StepRandom(0, 0, 0, torch.device("cpu")))
    images = views.flatten(0, 1)
    terms = explicit_terms(student, teachers, images)
    torch.testing.assert_close(out.loss, terms[0] + terms[1], rtol=1e-10, atol=1e-12)
    trained = [p for p in student.parameters()]
    grads = torch.autograd.grad(out.loss, trained)
    expected = torch.autograd.grad(terms[0] + terms[1], trained)
    for grad, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-8, atol=1e-12)
    assert out.keys is None and set(out.metrics) >= {"loss", "proxy_top1", "distill/cosine0", "distill/cosine1"}
    torch.testing.assert_close(out.metrics["distill/cosine1"], 1 - terms[1].detach() / 2)


def test_each_head_learns_from_its_own_teacher_only():
    step, student, teachers = two_teacher_step()
    views = torch.randn(4, 2, 3, 6, 6, dtype=torch.float64)
    step(views, StepRandom(0, 0, 0, torch.device("cpu"))).loss.backward()
    terms = explicit_terms(student, teachers, views.flatten(0, 1))
    for index, head in enumerate(student.heads):
        own = torch.autograd.grad(terms[index], list(head.parameters()), retain_graph=True)
        other = torch.autograd.grad(terms[1 - index], list(head.parameters()), retain_graph=True,
                                    allow_unused=True)
        assert all(g is None or g.abs().max() == 0 for g in other)  # the other teacher's term never reaches it
        for parameter, grad in zip(head.parameters(), own, strict=True):
            torch.testing.assert_close(parameter.grad, grad, rtol=1e-8, atol=1e-12)


def test_teacher_and_student_see_the_same_images():
    _, student, teachers = two_teacher_step()
    recorded_teachers = [Recording(teacher) for teacher in teachers]
    student.backbone = Recording(student.backbone)
    views = torch.randn(3, 3, 3, 6, 6, dtype=torch.float64)  # a third view is drawn but not distilled
    DistillStep(student, recorded_teachers)(views, StepRandom(0, 0, 0, torch.device("cpu")))
    images = views[:, :2].flatten(0, 1)
    for module in [*recorded_teachers, student.backbone]:
        assert len(module.inputs) == 1 and torch.equal(module.inputs[0], images)


@pytest.fixture
def teacher_file(tmp_path, tiny_overrides):
    """A MoCo checkpoint of the tiny run's ResNet-18 (the tiny run's normalisation)."""
    path = tmp_path / "teacher.pth"
    our_checkpoint(path, load_config(None, tiny_overrides))
    return path


def test_a_run_trains_the_student_and_heads_and_leaves_the_teachers_alone(tiny_overrides, teacher_file, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "objective=distill", f"distill.teachers=[{teacher_file}]",
                             "optim.steps=3", "eval.knn_baseline=false", "eval.knn_pixels=false", *HALF_WIDTH])
    trainer = Trainer(cfg)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    step = trainer.parts.step
    (teacher,) = step.teachers
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    stored, _ = read_backbone_state(teacher_file)
    assert all(torch.equal(v, stored[k]) for k, v in teacher.state_dict().items())  # weights and statistics alike
    after = trainer.model.state_dict()
    moved = {k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, after[k])}
    assert any(k.startswith("encoder_q.backbone.") for k in moved)
    assert any(k.startswith("distill_heads.0.") for k in moved)
    assert not any(k.startswith("encoder_q.head.") for k in moved)  # the projection head is not used
    head = trainer.model.distill_heads[0]
    assert head[0].in_features == 256 and head[-1].out_features == 512  # the student's features to the teacher's
    # the exported student is the run's backbone: it loads and computes what the trained backbone does
    out, line = export_backbone(cfg.run_dir / "last.pth", "safetensors", tmp_path / "student.safetensors")
    state, meta = read_backbone_state(out)  # the loader, by the architecture the export's config names
    assert str(meta.architecture) == "scaled/resnet18 {'width': 0.5}"
    exported, _ = exact_backbone(state, meta)
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(x), trainer.model.backbone.eval()(x), rtol=0, atol=0)


def test_teacher_paths_name_the_runs_seed_and_folder_and_are_checked(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "objective=distill", "seed=3",
                             "distill.teachers=['{output_dir}/../teacher/seed{seed}/last.pth', plain.pth]"])
    assert cfg.distill.teacher_paths(cfg) == [f"{tmp_path}/../teacher/seed3/last.pth", "plain.pth"]
    with pytest.raises(ConfigError, match=r"'distill.teachers\[0\]' may name \{seed\} and \{output_dir\} only"):
        load_config(None, [*tiny_overrides, "objective=distill", "distill.teachers=['runs/{arm}/last.pth']"])
    with pytest.raises(ConfigError, match="'distill.teachers' must name a teacher's weights file at least"):
        load_config(None, [*tiny_overrides, "objective=distill"])


def test_a_missing_teacher_or_one_normalised_otherwise_stops_the_run_in_one_line(tiny_overrides, tmp_path):
    missing = load_config(None, [*tiny_overrides, "objective=distill", f"distill.teachers=[{tmp_path}/none.pth]"])
    with pytest.raises(Exception, match=r"distill.teachers\[0\]: .*none.pth") as err:
        Trainer(missing)
    assert "\n" not in str(err.value)
    other = tmp_path / "other.pth"
    our_checkpoint(other, load_config(None, ["data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"]))
    cfg = load_config(None, [*tiny_overrides, "objective=distill", f"distill.teachers=[{other}]", "name=other"])
    with pytest.raises(ConfigError, match=r"normalised with data.mean=\[0.5, 0.5, 0.5\] .*set them to the teacher's"):
        Trainer(cfg)


def test_the_cost_counts_both_views_through_the_student_and_every_teacher():
    cfg = load_config(None, ["objective=distill", "distill.teachers=[a.pth, b.pth]", "distill.teacher_cost=3.8"])
    assert units_per_image(cfg, selecting=False) == pytest.approx(3 * 2 + 2 * 2 * 3.8)
