"""Continual pretraining: the task sequence (splits, images, batches, one-line config errors), predictor distillation
against a hand-written computation with the previous encoder frozen, the accuracy matrix's figures, and a resume
across a task boundary that ends exactly as the run straight through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.config.continual import class_split, task_specs
from mochi_hvs.continual.__main__ import main as continual_main
from mochi_hvs.continual.evaluation import TaskEvaluation
from mochi_hvs.continual.matrix import average_accuracy, forgetting
from mochi_hvs.continual.report import complete
from mochi_hvs.data.batches import build_batches
from mochi_hvs.data.tasks import TaskBatches, task_images
from mochi_hvs.distributed import DistEnv
from mochi_hvs.evaluation.linear import probe_metrics
from mochi_hvs.objectives.base import objective_of, wrapped_step
from mochi_hvs.objectives.distillation import DistillingStep
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.run_files import LAST, TASK
from mochi_hvs.study.recipe import load_study
from mochi_hvs.train import Trainer
from mochi_hvs.train.build import build_model
from mochi_hvs.weights.checkpoint import load_checkpoint

TINY_ARCH = ["model.arch=timm/resnet18", "model.arch_kwargs={channels: [8, 16, 32, 64], stem_width: 8}",
             "model.bn_splits=1", "model.head_hidden_dim=32", "continual.predictor_hidden=16"]
CONTINUAL = ["continual.enabled=true", "continual.split=5", "continual.steps_per_task=2", "continual.distill=true"]


def cfg_of(*overrides: str, source: list[str] | None = None):
    return load_config(None, [*TINY_ARCH, *CONTINUAL, "device=cpu", *overrides, *(source or [])])


# ------------------------------------------------------------------ the task sequence

def test_class_split_deals_every_class_once_in_seeded_tasks():
    tasks = class_split(10, 5, [], seed=3)
    assert [len(t) for t in tasks] == [2] * 5
    assert sorted(c for t in tasks for c in t) == list(range(10))  # disjoint, and every class dealt
    assert tasks == class_split(10, 5, [], seed=3)
    assert tasks != class_split(10, 5, [], seed=4)
    assert class_split(10, 2, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], seed=3) == [(9, 8, 7, 6, 5), (4, 3, 2, 1, 0)]


def test_task_specs_and_images_keep_each_tasks_classes_only():
    cfg = cfg_of("continual.class_order=[1, 0, 3, 2, 5, 4, 7, 6, 9, 8]")
    specs = task_specs(cfg)
    assert [s.classes for s in specs] == [(1, 0), (3, 2), (5, 4), (7, 6), (9, 8)]
    images = task_images(specs[1], "test")
    assert set(np.unique(images.labels)) == {2, 3}
    assert len(images) == 2000  # Fashion-MNIST's test split holds 1,000 images per class


def test_listed_tasks_name_datasets_and_default_to_all_classes():
    cfg = cfg_of("continual.split=0", "continual.tasks=[{data: fashion_mnist, classes: [0]}, {data: mnist5k}]")
    first, second = task_specs(cfg)
    assert (first.data, first.classes, second.data, second.classes) == ("fashion_mnist", (0,), "mnist5k", None)
    assert (first.name, second.name) == ("task0_fashion_mnist", "task1_mnist5k")


def test_task_batches_draw_each_tasks_images_over_several_passes():
    cfg = cfg_of()
    specs = task_specs(cfg)[:2]
    sets = [task_images(spec, "pretrain").subset(np.arange(0, 12000, 200)) for spec in specs]  # 60 images each
    sources = [build_batches(images, cfg.data, 2, 16, cfg.seed, torch.device("cpu")) for images in sets]
    batches = TaskBatches(sources, steps=5)  # 3 batches of 16 per pass: task 0 takes a second pass
    batches.set_epoch(0)
    first = list(batches)
    batches.set_epoch(1, start_batch=3)
    second = list(batches)
    assert len(first) == 5 and len(second) == 2
    assert all(set(b.labels.tolist()) <= set(specs[0].classes) for b in first)
    assert all(set(b.labels.tolist()) <= set(specs[1].classes) for b in second)
    batches.set_epoch(0, start_batch=3)
    assert all(torch.equal(a.views, b.views) for a, b in zip(list(batches), first[3:], strict=True))  # resumable


@pytest.mark.parametrize(("override", "message"), [
    ("continual.tasks=[{data: fashoin_mnist}]", "'continual.tasks\\[0\\].data' must be one of .*did you mean "
                                                "'fashion_mnist'"),
    ("continual.tasks=[{data: mnist5k, classes: []}]", "'continual.tasks\\[0\\].classes' must list at least one class"),
    ("continual.tasks=[{data: mnist5k, classes: [3, 10]}]", "class 10 is out of range: the dataset has classes 0-9"),
    ("continual.tasks=[{data: mnist5k, clases: [1]}]", "'continual.tasks\\[0\\]' has no key 'clases'"),
])
def test_bad_sequences_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg_of("continual.split=0", override)


@pytest.mark.parametrize(("overrides", "message"), [
    (["continual.split=3"], "'continual.split' must divide the 10 classes of fashion_mnist"),
    (["continual.tasks=[{data: mnist5k}]"], "needs exactly one of continual.split .* got both"),
    (["continual.split=0"], "got neither"),
    (["continual.class_order=[0, 1, 2]"], "'continual.class_order' must order every class 0-9 once"),
    (["continual.joint=true"], "'continual.distill' has no previous task to distil from"),
    (["objective=twist"], "'continual.distill' needs an objective with a distillation loss \\(objective=byol"
                          "\\|contrastive\\); objective=twist has none"),
])
def test_inconsistent_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg_of(*overrides)


# ------------------------------------------------------------------ predictor distillation

def distilling_step(*overrides: str):
    cfg = cfg_of(*overrides)
    model = build_model(cfg, DistEnv())
    step = wrapped_step(cfg, objective_of(cfg).build_step(model, [], lambda module: module, 10), model)
    assert isinstance(step, DistillingStep)
    return cfg, model, step


def hand_term(model, views, objective: str, temperature: float) -> torch.Tensor:
    """The distillation term written out in float64: h(z_t) against the frozen z_{t-1} of each view the step trains
    (MoCo-v2 without the symmetric loss: view 0; BYOL: views 0 and 1)."""
    d = model.distillation
    terms = []
    for v in ([0] if objective == "contrastive" else [0, 1]):
        x = views[:, v]
        p = F.normalize(d.predictor(model.encoder_q(x).projection).double(), dim=1)
        d.previous.eval()
        with torch.no_grad():
            z = F.normalize(d.previous(x).projection.double(), dim=1)
        if objective == "contrastive":
            logits = p @ z.T / temperature
            terms.append(-(logits.diag() - logits.logsumexp(dim=1)).mean())
        else:
            terms.append((2 - 2 * (p * z).sum(dim=1)).mean())
    return torch.stack(terms).mean()


@pytest.mark.parametrize("objective", ["contrastive", "byol"])
def test_distillation_term_and_its_gradients(objective):
    cfg, model, step = distilling_step(f"objective={objective}", "continual.distill_weight=0.5")
    torch.manual_seed(0)
    views = torch.randn(8, 2, 3, 28, 28)
    first = step(views, StepRandom(0, 0, 0, torch.device("cpu")), None, None, 0, 0)  # task 0: no term
    assert "distill" not in first.metrics and int(model.distillation.task) == 0
    step(views, StepRandom(0, 2, 0, torch.device("cpu")), None, None, 1, 2)  # task 1's first step: the copy is taken
    assert int(model.distillation.task) == 1
    with torch.no_grad():  # the current encoder moves on from the frozen copy
        for p in model.encoder_q.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = StepRandom(0, 3, 0, torch.device("cpu"))
    out = step(views, rng, None, None, 1, 3)
    inner = step.step(views, StepRandom(0, 3, 0, torch.device("cpu")), None, None, 1, 3)
    expected = hand_term(model, views, objective, cfg.moco.temperature)
    assert out.metrics["distill"].double() == pytest.approx(expected.item(), rel=1e-4)
    assert out.loss.item() == pytest.approx(inner.loss.item() + 0.5 * expected.item(), rel=1e-4)
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    d = model.distillation
    assert all(p.grad is None and not p.requires_grad for p in d.previous.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.predictor.parameters() if p.ndim > 1)
    term_grads = torch.autograd.grad(hand_term(model, views, objective, cfg.moco.temperature),
                                     list(model.encoder_q.parameters()), allow_unused=True)
    assert sum(g.abs().sum() for g in term_grads if g is not None) > 0  # the term trains the current encoder


def test_the_frozen_copy_is_the_encoder_as_the_last_task_ended():
    _, model, step = distilling_step()
    views = torch.randn(8, 2, 3, 28, 28)
    step(views, StepRandom(0, 1, 0, torch.device("cpu")), None, None, 0, 1)  # task 0's last step
    ended = {k: v.clone() for k, v in model.encoder_q.state_dict().items()}
    step(views, StepRandom(0, 2, 0, torch.device("cpu")), None, None, 1, 2)
    frozen = model.distillation.previous.state_dict()
    assert all(torch.equal(frozen[k], ended[k]) for k in ended)


# ------------------------------------------------------------------ the accuracy matrix

def test_average_accuracy_and_forgetting_on_a_fixed_matrix():
    r = [[90.0, None, None],
         [80.0, 70.0, None],
         [60.0, 75.0, 95.0]]
    assert average_accuracy(r) == pytest.approx((60 + 75 + 95) / 3)
    # task 0: best before the last task 90, after it 60; task 1: best 70, after 75 (it improved)
    assert forgetting(r) == pytest.approx(((90 - 60) + (70 - 75)) / 2)
    assert forgetting([[50.0]]) == 0.0
    assert complete(r) and not complete([[90.0, None], [None, 70.0]])


# ------------------------------------------------------------------ resume across a task boundary

@pytest.mark.parametrize(("objective", "stop"), [("contrastive", 3), ("byol", 3), ("contrastive", 2)])
def test_resume_across_a_task_boundary_is_exact(quick_overrides, objective, stop):
    """2 tasks of 2 steps, stopped in task 1 after its copy was taken (3), or as task 0 ended (2)."""
    over = [*quick_overrides, *TINY_ARCH, *CONTINUAL, "continual.split=2", f"objective={objective}"]
    resumed = assert_resume_is_exact(over, steps=4, stop=stop)
    assert int(resumed.model.distillation.task) == 1
    assert (resumed.cfg.run_dir / TASK.format(0)).is_file() and (resumed.cfg.run_dir / TASK.format(1)).is_file()
    assert resumed.parts.scheduler.last_epoch == 4


# ------------------------------------------------------------------ the study: runs, references, records, report

def tiny_continual_study(tmp_path: Path, references: list[str]) -> Path:
    """A study recipe of 2 class-incremental tasks of 2 steps, fine-tuning and distillation, one seed."""
    recipe = Path(__file__).resolve().parents[1] / "configs/continual/fmnist_classes.yaml"
    shared = [*TINY_ARCH, *CONTINUAL, "continual.split=2", "device=cpu", "optim.batch_size=16",
              "moco.queue_size=32", "eval.knn_k=5", "eval.knn_train_subset=60",
              "eval.knn_test_subset=40", "eval.knn_baseline=false", "eval.knn_pixels=false"]
    study = {"name": "tiny_continual", "seeds": [0], "baseline": "finetune", "shared": shared,
             "arms": {"finetune": {"recipe": str(recipe), "set": ["continual.distill=false"]},
                      "cassle": {"recipe": str(recipe)}},
             "references": references, "output_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_a_study_records_every_row_and_its_references_once(tmp_path):
    """Each arm's task checkpoints on the tasks seen so far, the pixels and random-init references on every task; a
    second call records nothing new; the pixel reference is the probe on the flattened images, computed here."""
    path = tiny_continual_study(tmp_path, ["pixels", "random_init"])
    assert continual_main(["--config", str(path)]) == 0
    results = tmp_path / "results/tiny_continual/results.jsonl"
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    keys = {(r["arm"], r["after_task"], r["task"], r["evaluator"]) for r in lines}
    rows = {(arm, i, j, e) for arm in ("finetune", "cassle") for i in (0, 1) for j in range(i + 1)
            for e in ("linear", "knn")}
    floors = {(ref, -1, j, e) for ref in ("pixels", "random_init") for j in (0, 1) for e in ("linear", "knn")}
    trains = {(arm, -1, -1, "train") for arm in ("finetune", "cassle")}
    assert keys == rows | floors | trains and len(lines) == len(keys)
    assert all(r["reference"] for r in lines if r["arm"] in ("pixels", "random_init"))

    study = load_study(str(path), [])
    evaluation = TaskEvaluation(study.arm_config("finetune", 0), torch.device("cpu"))
    train, test = evaluation.sets(1)
    cfg = study.arm_config("finetune", 0)
    flat = [torch.from_numpy(s.array).float().flatten(1) / 255 for s in (train, test)]
    expected = probe_metrics(flat[0], torch.from_numpy(train.labels), flat[1], torch.from_numpy(test.labels),
                             len(train.classes), cfg.eval.linear)
    [pixels] = [r for r in lines if (r["arm"], r["task"], r["evaluator"]) == ("pixels", 1, "linear")]
    assert pixels["top1"] == pytest.approx(expected["top1"])

    assert continual_main(["--config", str(path)]) == 0
    assert len(results.read_text().splitlines()) == len(lines)
    report = (tmp_path / "results/tiny_continual/REPORT.md").read_text()
    [row] = [line for line in report.splitlines() if line.startswith("| pixels | 1 |")][:1]
    linear_pixels = [r["top1"] for r in lines if r["arm"] == "pixels" and r["evaluator"] == "linear"]
    assert row.split(" | ")[2] == f"{sum(linear_pixels) / 2:.2f}"


def test_a_study_refuses_a_trained_reference(tmp_path, capsys):
    path = tiny_continual_study(tmp_path, ["supervised"])
    assert continual_main(["--config", str(path)]) == 2
    assert "a continual study's are pixels and random_init, not supervised" in capsys.readouterr().err


def test_a_task_ending_while_the_monitor_reads_collapse_keeps_its_checkpoint(quick_overrides, tmp_path):
    """Every check reads collapsed (rank below 1,000), never long enough to stop: the rolling checkpoint is never
    replaced, yet each task's checkpoint is written, holding the same weights as a run whose monitor stays quiet."""
    over = [*quick_overrides, *TINY_ARCH, *CONTINUAL, "continual.split=2", "log_every=1"]
    flagged = Trainer(load_config(None, [*over, "collapse.min_rank=1000", "collapse.patience=1000",
                                         f"output_dir={tmp_path / 'flagged'}"]))
    flagged.fit()
    quiet = Trainer(load_config(None, [*over, f"output_dir={tmp_path / 'quiet'}"]))
    quiet.fit()
    assert flagged.monitors.collapse.streak == 4 and not quiet.monitors.collapse.streak
    assert not (flagged.cfg.run_dir / LAST).exists() and (quiet.cfg.run_dir / LAST).is_file()
    for task in (0, 1):
        kept, reference = (load_checkpoint(t.cfg.run_dir / TASK.format(task))["model"] for t in (flagged, quiet))
        assert kept.keys() == reference.keys()
        assert all(torch.equal(kept[key], reference[key]) for key in kept)
