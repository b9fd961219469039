import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mochi_hvs.compute_cost import run_units, steps_for_units, units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.machine import device_description
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.provenance import code_commit
from mochi_hvs.runtime import seed_everything
from mochi_hvs.study import plots
from mochi_hvs.study.__main__ import main as study_main
from mochi_hvs.study.floors import FloorKey, arm_floors, floor_label, parse_floor
from mochi_hvs.study.recipe import load_study
from mochi_hvs.study.report import display_name, read_results, write_report
from mochi_hvs.study.runner import StudyRunner
from mochi_hvs.study.stats import paired_difference, summarize
from mochi_hvs.train import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["data.train_subset=128", "optim.batch_size=16", "moco.queue_size=128", "model.bn_splits=2",
        "log_every=2", "eval.knn_train_subset=200", "eval.knn_test_subset=100", "eval.batch_size=100",
        "eval.knn_every=0", "eval.knn_baseline=false"]
# A tiny timm ViT (tests/test_backbones.py's) on the default recipe, and its floor's label in a study whose baseline
# is the default's ResNet-18 at 28 px.
VIT = ["model.arch=timm/vit_tiny_patch16_224", "model.arch_kwargs={img_size: 28, patch_size: 4, embed_dim: 64, "
       "depth: 2, num_heads: 2}", "model.bn_splits=1", "moco.shuffle_bn=false"]
VIT_FLOOR = "random_init_timm.vit_tiny_patch16_224-depth2-embed_dim64-img_size28-num_heads2-patch_size4"


def write_study(tmp_path, **changes):
    study = {
        "name": "tiny", "seeds": [0], "baseline": "moco", "shared": [*TINY, "optim.steps=3"],
        "arms": {"moco": {"recipe": str(CONFIGS / "moco_v2.yaml")},
                 "hvs": {"recipe": str(CONFIGS / "moco_hvs.yaml")}},
        "evaluations": ["knn", "linear"], "references": ["pixels", "random_init", "supervised"],
        "evaluation_set": ["eval.knn_train_subset=200", "eval.knn_test_subset=100", "eval.knn_k=[5,20]",
                           "eval.linear.l2_grid=[0.1,0.01]"],  # two strengths: still chosen on a validation split
        "output_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
    }
    study.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


# ------------------------------------------------------------------ recipe validation

@pytest.mark.parametrize("change, message", [
    ({"baseline": "nope"}, "'baseline' must name one of the arms"),
    ({"seeds": [0, 0]}, "'seeds' must be distinct"),
    ({"evaluations": ["knn", "lineaar"]}, "'evaluations' must be among"),
    ({"arms": {"moco": {"recipe": "missing.yaml"}}, "baseline": "moco"}, "'arms.moco.recipe' not found"),
    ({"arms": {"moco": {"recipe": str(CONFIGS / "moco_v2.yaml"), "sett": []}}}, "unknown key 'arms.moco.sett'"),
    ({"arms": {"moco": {"recipe": str(CONFIGS / "moco_v2.yaml"), "set": ["optim.lrr=1"]}}},
     "arm 'moco' (seed 0): --set: unknown key 'optim.lrr'"),
    ({"arms": {"moco": {"recipe": str(CONFIGS / "moco_v2.yaml"), "budget": {"match": "moco"}}}},
     "'arms.moco.budget.match' must name another arm"),
    ({"colour": 1}, "unknown key 'colour'"),
    ({"evaluation_set": ["eval.knn_kk=[5]"]}, "evaluation_set: --set: unknown key 'eval.knn_kk'"),
    ({"arms": {"random_init_42px": {"recipe": str(CONFIGS / "moco_v2.yaml")}}, "baseline": "random_init_42px"},
     "'arms.random_init_42px' must be a folder-safe name (letters, digits, _ . -), not pixels, random_init, "
     "supervised or a floor's label"),
])
def test_study_recipe_errors_name_the_key_and_the_file(tmp_path, change, message):
    path = write_study(tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_study_cli_reports_a_bad_recipe_in_one_line(tmp_path, capsys):
    assert study_main(["--config", str(write_study(tmp_path, baseline="nope"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_shipped_study_recipes_load():
    studies = sorted((CONFIGS / "studies").glob("*.yaml"))
    assert studies
    for path in studies:
        study = load_study(path)
        assert study.spec.baseline in study.spec.arms


# ------------------------------------------------------------------ compute matching

def test_units_per_image_follow_the_forward_count_model():
    plain = load_config(None, [])
    assert units_per_image(plain, selecting=False) == 4  # query forward + backward (3) + key forward (1)
    symmetric = load_config(None, ["moco.symmetric=true"])
    assert units_per_image(symmetric, selecting=False) == 8
    hvs = ["hvs.enabled=true", "hvs.num_views=3"]
    assert units_per_image(load_config(None, [*hvs, "hvs.scorer=momentum"]), selecting=True) == 3 + 3
    assert units_per_image(load_config(None, [*hvs, "hvs.scorer=query"]), selecting=True) == 3 + 6
    assert units_per_image(load_config(None, [*hvs, "hvs.scorer=momentum", "hvs.reuse_keys=false"]), True) == 7
    half = load_config(None, [*hvs, "hvs.scorer=momentum", "hvs.score_resolution=14"])
    assert units_per_image(half, selecting=True) == 3 + 3 / 4 + 1  # quarter-cost scoring, key recomputed
    assert units_per_image(load_config(None, [*hvs, "hvs.mode=random"]), selecting=True) == 4


def test_run_units_count_selection_steps_and_matching_finds_the_fewest_steps():
    cfg = load_config(None, ["hvs.enabled=true", "hvs.num_views=3", "hvs.scorer=momentum", "hvs.select_every=2",
                             "hvs.start_epoch=1", "optim.batch_size=8", "moco.queue_size=64", "model.bn_splits=1"])
    # 4 steps per epoch, 12 steps: epoch 0 plain (4 x 4), then steps 4..11, of which 4, 6, 8, 10 select (6).
    assert run_units(cfg, 4, 12) == 8 * (4 * 4 + 4 * 6 + 4 * 4)
    plain = load_config(None, ["optim.batch_size=8", "moco.queue_size=64", "model.bn_splits=1"])
    target = run_units(cfg, 4, 12)
    steps = steps_for_units(plain, 4, target)
    assert run_units(plain, 4, steps) >= target > run_units(plain, 4, steps - 1)


def count_units(model, image_size):
    """Hooks counting encoder image-forwards: 3 per image with gradient (forward + backward), else 1, scaled by
    the input's pixels relative to a full-size image."""
    counted = []

    def hook(module, inputs, output):
        pixels = inputs[0].shape[-1] * inputs[0].shape[-2] / image_size**2
        counted.append(inputs[0].shape[0] * pixels * (3 if output.embedding.requires_grad else 1))

    return counted, [model.encoder_q.register_forward_hook(hook), model.encoder_k.register_forward_hook(hook)]


@pytest.mark.parametrize("extra", [[], ["moco.symmetric=true"], ["hvs.enabled=true", "hvs.num_views=3"],
                                   ["hvs.enabled=true", "hvs.num_views=3", "hvs.scorer=momentum"],
                                   ["hvs.enabled=true", "hvs.num_views=3", "hvs.score_resolution=14"]])
def test_counted_encoder_forwards_of_real_steps_equal_the_model(tiny_overrides, extra):
    cfg = load_config(None, tiny_overrides + extra + ["optim.steps=2"])
    trainer = Trainer(cfg)
    counted, handles = count_units(trainer.model, cfg.data.image_size)
    trainer.train()
    for handle in handles:
        handle.remove()
    assert sum(counted) == pytest.approx(run_units(cfg, trainer.parts.steps_per_epoch, 2))


# ------------------------------------------------------------------ statistics

def test_paired_difference_against_an_independent_computation():
    arm = {0: 80.0, 1: 81.5, 2: 81.7, 3: 78.9}
    base = {0: 79.0, 1: 80.0, 2: 80.5, 3: 78.0, 7: 99.0}  # seed 7 has no partner and is ignored
    diffs = np.array([1.0, 1.5, 1.2, 0.9])
    half = 3.182446305284263 * diffs.std(ddof=1) / math.sqrt(4)  # t(0.975, 3)
    result = paired_difference(arm, base)
    assert result.count == 4
    assert result.mean == pytest.approx(diffs.mean())
    assert (result.low, result.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert result.verdict == "better"
    assert paired_difference(base, arm).verdict == "worse"
    mixed = paired_difference({0: 1.0, 1: 3.0, 2: 2.0}, {0: 2.0, 1: 2.0, 2: 2.0})
    assert mixed.verdict == "not distinguishable" and mixed.low < 0 < mixed.high
    assert paired_difference({0: 1.0}, {0: 0.0}).verdict.startswith("not distinguishable")


def test_summary_is_mean_and_sample_std():
    summary = summarize([1.0, 2.0, 4.0])
    assert (summary.mean, summary.std, summary.count) == (pytest.approx(7 / 3), pytest.approx(statistics.stdev(
        [1.0, 2.0, 4.0])), 3)
    assert summarize([5.0]).std == 0.0


# ------------------------------------------------------------------ report

FIXTURE = [
    {"arm": "moco", "seed": s, "evaluator": "knn", "metrics": {"k20_top1": v, "k200_top1": v - 2}}
    for s, v in ((0, 80.0), (1, 81.0), (2, 79.0))
] + [
    {"arm": "mochi", "seed": s, "evaluator": "knn", "metrics": {"k20_top1": v, "k200_top1": v - 2}}
    for s, v in ((0, 82.0), (1, 83.0), (2, 81.5))
] + [
    {"arm": a, "seed": s, "evaluator": "train", "metrics": {"proxy_top1": 0.5, "train_seconds": 60.0,
                                                             "forward_units": 4e6, "steps": 100}, "device": "cpu x"}
    for a in ("moco", "mochi") for s in (0, 1, 2)
] + [{"arm": "pixels", "seed": None, "evaluator": "knn", "metrics": {"k20_top1": 84.59, "k200_top1": 79.13}}]


def write_fixture(report_dir: Path) -> None:
    report_dir.mkdir(parents=True)
    (report_dir / "results.jsonl").write_text("\n".join(json.dumps(line) for line in FIXTURE) + "\n")
    for arm in ("moco", "mochi"):
        for seed in (0, 1, 2):
            run = report_dir / "runs" / arm / f"seed{seed}"
            run.mkdir(parents=True)
            lines = [{"step": s, "train/proxy_top1": 0.1 * s, "train/mochi/synthetic_above_positive": 0.2}
                     for s in (10, 20, 30)] + [{"step": 30, "knn/top1": 70.0 + seed}]
            lines.append({"step": 30, "histograms": {"hvs/iou_selected": {"edges": [0, 0.5, 1], "counts": [3, 1]},
                                                     "hvs/iou_random": {"edges": [0, 0.5, 1], "counts": [1, 3]}}})
            (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))


def test_report_renders_from_a_fixed_jsonl(tmp_path):
    write_fixture(tmp_path / "r")
    results = read_results(tmp_path / "r" / "results.jsonl")
    assert results.arms == ["moco", "mochi"] and results.references == ["pixels"]
    path = write_report(tmp_path / "r", "demo", "moco", "A demo.", None)
    text = path.read_text()
    assert "| moco (baseline) | 3 |" in text and "80.00 ± 1.00" in text  # mean and std of 80, 81, 79
    assert "| raw pixels | — |" in text and "84.59" in text
    assert "| mochi | kNN k=20 | +2.17 |" in text and "better" in text
    assert "| mochi | 2 | 81.50 |" in text  # per-seed values
    assert "Trained on: cpu x." in text
    assert "Lines by commit: not recorded (13)." in text  # the fixture's lines carry no provenance


def test_time_points_pair_each_seeds_training_minutes_with_its_accuracy(tmp_path):
    write_fixture(tmp_path / "r")
    lines = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    lines.append({"arm": "moco", "seed": 1, "evaluator": "train", "metrics": {"train_seconds": 90.0}})  # later wins
    lines.append({"arm": "moco", "seed": 3, "evaluator": "knn", "metrics": {"k20_top1": 70.0}})  # no training line
    lines += [{"arm": "moco", "seed": 10, "evaluator": e, "metrics": m}  # numeric seed order: 10 after 2
              for e, m in (("train", {"train_seconds": 120.0}), ("knn", {"k20_top1": 85.0}))]
    (tmp_path / "r" / "results.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    results = read_results(tmp_path / "r" / "results.jsonl")
    assert plots.time_points(results, "moco", "knn", "k20_top1") == [(1.0, 80.0), (1.5, 81.0), (1.0, 79.0), (2.0, 85.0)]
    assert plots.time_points(results, "pixels", "knn", "k20_top1") == []  # untrained: no training time


def test_arms_trained_with_labels_are_told_apart_from_the_resolved_recipe(tmp_path):
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"arms": {
        "moco": {"config": {"objective": "contrastive"}}, "long_supervised": {"config": {"objective": "supervised"}}}}))
    assert plots.supervised_arms(tmp_path) == {"supervised", "long_supervised"}
    assert plots.supervised_arms(tmp_path / "none") == {"supervised"}  # no resolved recipe: the reference only


def test_each_arm_is_drawn_against_the_floors_at_its_own_image_size(tmp_path, monkeypatch):
    """An arm trained at 42 px is not read against the 28 px floors: final_accuracy.png puts the 42 px floors beside
    it, and accuracy_vs_time.png, whose floors are lines across, leaves it out."""
    pytest.importorskip("matplotlib")
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "study.yaml").write_text(yaml.safe_dump({"arms": {
        "moco": {"config": {"data": {"image_size": 28}}}, "big": {"config": {"data": {"image_size": 42}}}}}))
    lines = [{"arm": arm, "seed": 0, "evaluator": e, "metrics": m}
             for arm, top1 in (("moco", 80.0), ("big", 84.0))
             for e, m in (("train", {"train_seconds": 60.0}), ("knn", {"k20_top1": top1}))]
    lines += [{"arm": ref, "seed": s, "evaluator": "knn", "metrics": {"k20_top1": v}}
              for ref, s, v in (("pixels", None, 79.0), ("random_init", 0, 78.0), ("pixels_42px", None, 82.0),
                                ("random_init_42px", 0, 85.0))]
    (folder / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = read_results(folder / "results.jsonl")
    assert results.references == ["pixels", "random_init", "pixels_42px", "random_init_42px"]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, title, path: figures.append(fig))
    plt = plots.matplotlib_pyplot()
    sizes, base = plots.image_sizes(folder, "moco")
    assert (sizes, base) == ({"moco": 28, "big": 42, "supervised": 28}, 28)
    floors = arm_floors(folder, "moco")
    assert floors["big"] == {"pixels": "pixels_42px", "random_init": "random_init_42px"}
    plots._final_figure(plt, results, plots.arm_colors(results.arms), "moco", sizes, floors, folder / "f.png")
    ax = figures[-1].axes[0]
    beside_big = {tuple(line.get_ydata()) for line in ax.lines if list(line.get_xdata()) == [0.65, 1.35]}
    assert beside_big == {(82.0, 82.0), (85.0, 85.0)}  # big (x = 1) with its own 42 px floors
    across = {line.get_ydata()[0] for line in ax.lines if line.get_label().endswith("at 28 px")}
    assert across == {79.0, 78.0}
    plots._time_figure(plt, results, plots.arm_colors(results.arms), sizes, base, floors, folder / "t.png")
    labels = figures[-1].axes[0].get_legend_handles_labels()[1] + [t.get_text() for t in
                                                                     figures[-1].axes[-1].get_legend().get_texts()]
    assert "moco" in labels and "big" not in labels


def test_references_are_evaluated_at_every_image_size_an_arm_trains_at(tmp_path, monkeypatch):
    path = write_study(tmp_path, arms={"moco": {"recipe": str(CONFIGS / "moco_v2.yaml")},
                                       "big": {"recipe": str(CONFIGS / "moco_v2.yaml"), "set": ["data.image_size=42"]}})
    runner = StudyRunner(load_study(path))
    evaluated = []
    monkeypatch.setattr(runner, "evaluate", lambda arm, seed, cfg, backbone, evaluations, again=False:
                        evaluated.append((arm, seed, cfg.data.image_size)))
    runner.evaluate_references()
    assert evaluated == [("pixels", None, 28), ("random_init", 0, 28), ("pixels_42px", None, 42),
                         ("random_init_42px", 0, 42)]


def test_the_random_init_reference_is_the_baselines_backbone_with_its_arch_kwargs(tmp_path, monkeypatch):
    vit = {"recipe": str(CONFIGS / "moco_vit_tiny.yaml"), "set": ["model.bn_splits=1"]}  # the shared keys split BN
    path = write_study(tmp_path, arms={"vit": vit}, baseline="vit", references=["random_init"])
    runner = StudyRunner(load_study(path))
    built = []
    monkeypatch.setattr(runner, "evaluate", lambda arm, seed, cfg, backbone, evaluations, again=False:
                        built.append(backbone()))
    runner.evaluate_references()
    [(model, width)] = built
    assert width == 128 and model.patch_embed.proj.kernel_size == (4, 4)  # the recipe's ViT, not timm's default


def test_a_floors_label_names_the_backbone_and_size_that_differ_from_the_baselines():
    base = FloorKey(28, "resnet18")
    vit = FloorKey.of({"data": {"image_size": 28}, "model": {"arch": "timm/vit_tiny_patch16_224", "small_stem": False,
                       "arch_kwargs": {"patch_size": 4, "num_heads": 2, "img_size": 28, "depth": 2, "embed_dim": 64}}})
    assert floor_label("random_init", vit, base) == VIT_FLOOR  # the keywords in any order: one backbone, one label
    assert floor_label("pixels", vit, base) == "pixels"  # raw pixels have no backbone
    vit_42 = dataclasses.replace(vit, image_size=42)
    labels = {floor_label("random_init", vit_42, base): ("random_init", VIT_FLOOR.removeprefix("random_init_"), 42),
              floor_label("pixels", vit_42, base): ("pixels", None, 42),
              floor_label("random_init", FloorKey(42, "resnet18"), base): ("random_init", None, 42),
              floor_label("random_init", FloorKey(28, "resnet18", small_stem=True), base):
                  ("random_init", "resnet18-small_stem", None),
              floor_label("random_init", base, base): ("random_init", None, None)}
    assert list(labels) == [VIT_FLOOR + "_42px", "pixels_42px", "random_init_42px", "random_init_resnet18-small_stem",
                            "random_init"]
    assert {label: parse_floor(label) for label in labels} == labels
    assert parse_floor("pixels_vit") is None and parse_floor("e5") is None and parse_floor("supervised") is None
    assert display_name(VIT_FLOOR + "_42px") == f"random init of {VIT_FLOOR.removeprefix('random_init_')} at 42 px"
    assert display_name("random_init_42px") == "random init at 42 px"


def test_an_arm_with_another_backbone_is_reported_and_drawn_against_its_own_random_init(tmp_path, monkeypatch):
    """The ViT arm's own floor is its row and its paired comparison, never compared with the baseline; the figures
    draw it beside the ViT (final accuracy) and in its colour (accuracy against time)."""
    pytest.importorskip("matplotlib")
    folder = tmp_path / "r"
    folder.mkdir()
    model = {"arch": "timm/vit_tiny_patch16_224", "small_stem": False,
             "arch_kwargs": {"img_size": 28, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}}
    (folder / "study.yaml").write_text(yaml.safe_dump({"arms": {
        "moco": {"config": {"data": {"image_size": 28}, "model": {"arch": "resnet18", "arch_kwargs": {}}}},
        "vit": {"config": {"data": {"image_size": 28}, "model": model}}}}))
    top1 = {"moco": (83.0, 82.8, 83.1), "vit": (79.0, 80.0, 79.5), "random_init": (82.0, 81.8, 81.9),
            VIT_FLOOR: (60.0, 62.0, 61.0)}
    lines = [{"arm": arm, "seed": seed, "evaluator": "knn", "metrics": {"k20_top1": value}}
             for arm, values in top1.items() for seed, value in enumerate(values)]
    lines += [{"arm": arm, "seed": seed, "evaluator": "train", "metrics": {"train_seconds": 60.0}}
              for arm in ("moco", "vit") for seed in range(3)]
    (folder / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    floors = arm_floors(folder, "moco")
    assert floors == {"moco": {"pixels": "pixels", "random_init": "random_init"},
                      "vit": {"pixels": "pixels", "random_init": VIT_FLOOR}}

    report = write_report(folder, "demo", "moco").read_text()
    name = display_name(VIT_FLOOR)
    differences = report[report.index("## Differences to the baseline"):report.index("## Differences to an arm's")]
    own = report[report.index("## Differences to an arm's own random initialisation"):report.index("## Per-seed")]
    assert f"| {name} | 3 | — | 61.00 ± 1.00 |" in report and name not in differences  # train s, kNN k=20
    diffs = np.array([79.0 - 60.0, 80.0 - 62.0, 79.5 - 61.0])
    half = 4.302652729911275 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert own.count("| kNN k=20 |") == 1  # the baseline's arm is read against the baseline's floor, above
    assert (f"| vit | {name} | kNN k=20 | {diffs.mean():+.2f} | [{diffs.mean() - half:+.2f}, "
            f"{diffs.mean() + half:+.2f}] | 3 | better |") in own

    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, title, path: figures.append(fig))
    results = read_results(folder / "results.jsonl")
    colors = plots.arm_colors(results.arms)
    sizes, base = plots.image_sizes(folder, "moco")
    plots._final_figure(plots.matplotlib_pyplot(), results, colors, "moco", sizes, floors, folder / "f.png")
    beside = {(tuple(line.get_xdata()), line.get_ydata()[0], line.get_label()) for line in figures[-1].axes[0].lines
              if line.get_color() == "grey"}
    assert beside == {((0.65, 1.35), 61.0, "random init of the arm's backbone")}  # at the ViT's x = 1
    plots._time_figure(plots.matplotlib_pyplot(), results, colors, sizes, base, floors, folder / "t.png")
    own_lines = [(line.get_ydata()[0], line.get_color()) for line in figures[-1].axes[0].lines
                 if line.get_label() == "random init of vit's backbone"]
    assert own_lines == [(61.0, colors["vit"])]


def test_references_are_evaluated_for_every_backbone_and_size_an_arm_uses(tmp_path, monkeypatch):
    """Each arm gets its floors: the ResNet baseline the plain ones, a ViT at 28 px the random init of its own
    backbone, a ViT at 42 px the pixels at 42 px and its own backbone's random init there (no ResNet at 42 px)."""
    vit_42 = [*VIT, "data.image_size=42",
              "model.arch_kwargs={img_size: 42, patch_size: 6, embed_dim: 64, depth: 2, num_heads: 2}"]
    recipe = str(CONFIGS / "moco_v2.yaml")
    path = write_study(tmp_path, arms={"moco": {"recipe": recipe}, "vit": {"recipe": recipe, "set": VIT},
                                       "vit_42": {"recipe": recipe, "set": vit_42}},
                       references=["pixels", "random_init"])
    runner = StudyRunner(load_study(path))
    evaluated, built = [], {}

    def evaluate(arm, seed, cfg, backbone, evaluations, again=False):
        evaluated.append((arm, seed, cfg.data.image_size))
        if seed is not None:
            built[arm] = backbone()[0]

    monkeypatch.setattr(runner, "evaluate", evaluate)
    runner.evaluate_references()
    vit_42_floor = "random_init_timm.vit_tiny_patch16_224-depth2-embed_dim64-img_size42-num_heads2-patch_size6_42px"
    assert evaluated == [("pixels", None, 28), ("random_init", 0, 28), (VIT_FLOOR, 0, 28), ("pixels_42px", None, 42),
                         (vit_42_floor, 0, 42)]
    assert not hasattr(built["random_init"], "patch_embed")  # the baseline's ResNet
    assert built[vit_42_floor].patch_embed.proj.kernel_size == (6, 6)
    seed_everything(0)  # the ViT's random initialisation of seed 0
    vit, _ = build_backbone("timm/vit_tiny_patch16_224", arch_kwargs={"img_size": 28, "patch_size": 4, "embed_dim": 64,
                                                                      "depth": 2, "num_heads": 2})
    floor = built[VIT_FLOOR].state_dict()
    assert all(torch.equal(floor[key], value) for key, value in vit.state_dict().items())


@pytest.mark.parametrize("count", [3, 14, 20, 27])
def test_every_arm_gets_its_own_colour_however_many_arms(count):
    pytest.importorskip("matplotlib")
    arms = [f"arm{i}" for i in range(count)]
    colors = plots.arm_colors(arms)
    assert list(colors) == arms and len(set(colors.values())) == count
    assert plots.arm_colors(arms[:3]) == {"arm0": "C0", "arm1": "C1", "arm2": "C2"}  # small studies as before


def test_plots_are_written_with_matplotlib_and_skipped_cleanly_without(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    write_fixture(tmp_path / "r")
    written = plots.write_plots(tmp_path / "r", "moco")
    files = {name for name, _ in written}
    assert {"final_accuracy.png", "accuracy_vs_time.png", "knn_vs_step.png", "proxy_vs_step.png", "mochi_vs_step.png",
            "hvs_iou.png"} == files
    for name in files:
        assert (tmp_path / "r" / name).read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert plots.write_plots(tmp_path / "r", "moco") is None


# ------------------------------------------------------------------ running

@pytest.fixture
def no_plots(monkeypatch):
    """A study call without its figures (drawing them takes seconds): for the tests that read only the records and
    REPORT.md; the first test below and test_plots_are_written_with_matplotlib_and_skipped_cleanly_without draw them."""
    monkeypatch.setattr("mochi_hvs.study.__main__.write_plots", lambda folder, baseline: [])


def test_study_runs_skips_finished_runs_resumes_an_interrupted_one_and_reports(tmp_path, monkeypatch):
    path = write_study(tmp_path)
    assert study_main(["--config", str(path)]) == 0
    results = tmp_path / "results" / "tiny"
    lines = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    keys = {(r["arm"], r["seed"], r["evaluator"]) for r in lines}
    assert keys == {("moco", 0, "train"), ("moco", 0, "knn"), ("moco", 0, "linear"), ("hvs", 0, "train"),
                    ("hvs", 0, "knn"), ("hvs", 0, "linear"), ("pixels", None, "knn"), ("pixels", None, "linear"),
                    ("random_init", 0, "knn"), ("random_init", 0, "linear"), ("supervised", 0, "train"),
                    ("supervised", 0, "knn"), ("supervised", 0, "linear")}
    assert (results / "REPORT.md").is_file() and (results / "study.yaml").is_file()
    assert (results / "final_accuracy.png").read_bytes()[:4] == b"\x89PNG"  # the study draws its figures
    trained = {r["arm"]: r["metrics"] for r in lines if r["evaluator"] == "train"}
    assert all(trained[arm]["collapsed"] is False and trained[arm]["embedding_rank"] > 1.5 for arm in ("moco", "hvs"))
    assert "collapsed" not in trained["supervised"]  # the supervised reference is not monitored
    assert "Collapse monitor: 0 of 2 runs ended collapsed." in (results / "REPORT.md").read_text()
    for line in lines:  # every record names what produced it
        assert line["command"].startswith("python -m ") and line["commit"] == code_commit()
        assert line["machine"] == device_description("cpu")
    assert (results / "runs" / "hvs" / "seed0" / "summary.json").is_file()
    assert json.loads((tmp_path / "runs" / "tiny" / "supervised" / "seed0" / "summary.json").read_text())[
        "objective"] == "supervised"
    assert not list(results.rglob("*.pth"))

    # Called again: nothing is trained or evaluated twice (the plots, written above, are not drawn again).
    monkeypatch.setattr("mochi_hvs.study.__main__.write_plots", lambda folder, baseline: [])
    fits = []
    monkeypatch.setattr(Trainer, "fit", lambda self: fits.append(self.cfg.run_dir) or {})
    assert study_main(["--config", str(path)]) == 0
    assert not fits and len((results / "results.jsonl").read_text().splitlines()) == len(lines)

    # An interrupted run (checkpoint, no summary) is resumed from its checkpoint; --only restricts the call.
    (tmp_path / "runs" / "tiny" / "hvs" / "seed0" / "summary.json").unlink()
    resumed = []
    original_init = Trainer.__init__

    def spy_init(self, cfg, resume=None, *args, **kwargs):
        resumed.append(resume)
        original_init(self, cfg, resume, *args, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", spy_init)
    monkeypatch.setattr(Trainer, "fit", lambda self: fits.append(self.cfg.run_dir) or {
        "steps": 0, "train_seconds": 1.0, "knn_top1": 0.0})
    assert study_main(["--config", str(path), "--only", "hvs"]) == 0
    assert fits == [tmp_path / "runs" / "tiny" / "hvs" / "seed0"]
    assert resumed == [tmp_path / "runs" / "tiny" / "hvs" / "seed0" / "last.pth"]


@pytest.mark.slow
def test_a_study_with_a_vit_arm_records_and_reports_the_vits_own_random_init(tmp_path, no_plots):
    """End to end: a ResNet baseline and a tiny ViT arm (the ViT recipe with test_backbones.py's small ViT) trained,
    evaluated and reported; the ViT is read against the random initialisation of its own backbone."""
    path = write_study(tmp_path, arms={"moco": {"recipe": str(CONFIGS / "moco_v2.yaml")},
                                       "vit": {"recipe": str(CONFIGS / "moco_vit_tiny.yaml"), "set": VIT}},
                       references=["pixels", "random_init"])
    assert study_main(["--config", str(path)]) == 0
    results = tmp_path / "results" / "tiny"
    lines = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert {(r["arm"], r["seed"], r["evaluator"]) for r in lines if r["arm"] not in ("moco", "vit")} == {
        ("pixels", None, "knn"), ("pixels", None, "linear"), ("random_init", 0, "knn"), ("random_init", 0, "linear"),
        (VIT_FLOOR, 0, "knn"), (VIT_FLOOR, 0, "linear")}
    top1 = {(r["arm"], r["evaluator"]): r["metrics"]["k20_top1" if r["evaluator"] == "knn" else "top1"]
            for r in lines if r["evaluator"] in ("knn", "linear")}
    report = (results / "REPORT.md").read_text()
    for evaluator, title in (("knn", "kNN k=20"), ("linear", "linear")):
        difference = top1[("vit", evaluator)] - top1[(VIT_FLOOR, evaluator)]
        assert (f"| vit | {display_name(VIT_FLOOR)} | {title} | {difference:+.2f} | — | 1 | "
                "not distinguishable (one seed) |") in report


def test_matched_arm_gets_its_targets_encoder_forwards_and_keeps_its_budget(tmp_path):
    arms = {"moco": {"recipe": str(CONFIGS / "moco_v2.yaml")},
            "hvs": {"recipe": str(CONFIGS / "moco_hvs.yaml")},
            "moco_matched": {"recipe": str(CONFIGS / "moco_v2.yaml"), "budget": {"match": "hvs"}}}
    study = load_study(write_study(tmp_path, arms=arms, shared=[*TINY, "optim.steps=4"]))
    runner = StudyRunner(study)
    assert runner.arms == ["moco", "hvs", "moco_matched"]
    planned = {run.arm: run for run in runner.plan()}
    assert planned["moco_matched"].extra == ["optim.steps=6"]  # HVS V=3, momentum scorer: 6 / 4 per image
    resolved = runner.resolve_budget(planned["moco_matched"])
    budget = json.loads((resolved.run_dir / "budget.json").read_text())
    assert budget["steps"] == 6 and budget["target_forward_units"] == 4 * 16 * 6
    # The fixed budget wins over a later change of the target (a resume keeps what the run started with).
    later = load_study(write_study(tmp_path, arms=arms, shared=[*TINY, "optim.steps=8"]))
    assert StudyRunner(later).planned("moco_matched", 0).extra == ["optim.steps=6"]


def test_seconds_matched_arm_gets_the_targets_training_time_over_its_measured_step_time(tmp_path, monkeypatch):
    import mochi_hvs.study.runner as runner_module
    arms = {"moco": {"recipe": str(CONFIGS / "moco_v2.yaml")},
            "slow": {"recipe": str(CONFIGS / "moco_v2.yaml"), "budget": {"match": "moco", "by": "seconds"}}}
    runner = StudyRunner(load_study(write_study(tmp_path, arms=arms)))
    slow = runner.planned("slow", 0)
    with pytest.raises(ConfigError, match="has not finished seed 0"):
        runner.matched_steps(slow)
    target = runner.planned("moco", 0).run_dir
    target.mkdir(parents=True)
    (target / "summary.json").write_text(json.dumps({"train_seconds": 30.0}))
    monkeypatch.setattr(runner_module, "seconds_per_step", lambda run: 0.7)
    assert runner.matched_steps(slow) == (43, {"target_seconds": 30.0})  # round(30 / 0.7)


def test_step_timing_warms_up_past_the_boosted_first_steps_even_when_an_epoch_is_shorter(tmp_path, monkeypatch):
    import mochi_hvs.study.runner as runner_module
    runner = StudyRunner(load_study(write_study(tmp_path)))  # 128 images of 16: 8 steps an epoch
    steps = []
    monkeypatch.setattr(Trainer, "train_step", lambda self, batch: steps.append(batch.views.shape[0]))
    assert runner_module.seconds_per_step(runner.planned("moco", 0)) >= 0
    assert len(steps) == runner_module.WARMUP_STEPS + runner_module.TIMED_STEPS > 8
    assert set(steps) == {16}


def test_dry_run_prints_the_plan_with_estimates(tmp_path, capsys, monkeypatch):
    import mochi_hvs.study.runner as runner_module
    timed = []  # the step timing itself: test_step_timing_warms_up_past_the_boosted_first_steps...
    monkeypatch.setattr(runner_module, "seconds_per_step", lambda run: timed.append(run.label) or 40.0)
    assert study_main(["--config", str(write_study(tmp_path)), "--dry-run", "--seeds", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["arm", "seed", "status", "steps", "est.", "time"]
    assert [line.split() for line in lines[1:4]] == [[arm, "0", "new", "3", "2.0", "min"]  # 3 steps of 40 s
                                                     for arm in ("moco", "hvs", "supervised")]
    assert lines[4].startswith("estimated training time of the unfinished runs: 6 min on ")
    assert timed == ["moco", "hvs", "supervised"] and not (tmp_path / "runs" / "tiny").exists()


def test_report_only_needs_results(tmp_path, capsys):
    assert study_main(["--config", str(write_study(tmp_path)), "--report"]) == 2
    assert "no results yet" in capsys.readouterr().err


def test_reprobe_reproduces_knn_and_recomputes_linear_with_the_converged_probe(tmp_path, monkeypatch, capsys,
                                                                               no_plots):
    """Records of the old SGD probe (no protocol) stay in the file under their own name; --reprobe evaluates the
    kept checkpoints again without training: kNN exactly as before, linear with today's probe."""
    path = write_study(tmp_path, arms={"moco": {"recipe": str(CONFIGS / "moco_v2.yaml")}},
                       references=["pixels", "random_init"], seeds=[0, 1])
    assert study_main(["--config", str(path)]) == 0
    results = tmp_path / "results" / "tiny" / "results.jsonl"
    first = [json.loads(line) for line in results.read_text().splitlines()]
    old = [json.loads(line) for line in results.read_text().splitlines()]
    for line in old:  # as the old probe wrote them
        if line["evaluator"] == "linear":
            line.pop("protocol")
            line["metrics"] = {"top1": -1.0, "top5": -1.0}
    results.write_text("".join(json.dumps(line) + "\n" for line in old))
    (tmp_path / "runs" / "tiny" / "moco" / "seed1" / "last.pth").unlink()  # its weights are gone

    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("--reprobe must not train"))
    assert study_main(["--config", str(path), "--reprobe"]) == 0
    assert "not re-evaluated: moco seed 1" in capsys.readouterr().err
    new = [json.loads(line) for line in results.read_text().splitlines()][len(old):]
    keys = [(r["arm"], r["seed"], r["evaluator"]) for r in new]
    assert sorted(keys, key=str) == sorted([("moco", 0, "knn"), ("moco", 0, "linear"), ("pixels", None, "knn"),
                                            ("pixels", None, "linear"), ("random_init", 0, "knn"),
                                            ("random_init", 0, "linear"), ("random_init", 1, "knn"),
                                            ("random_init", 1, "linear")], key=str)
    before = {(r["arm"], r["seed"]): r["metrics"] for r in first if r["evaluator"] == "knn"}
    assert all(r["metrics"] == before[(r["arm"], r["seed"])] for r in new if r["evaluator"] == "knn")
    probed = {(r["arm"], r["seed"]): r for r in new if r["evaluator"] == "linear"}
    assert all(r["protocol"] == "lbfgs" and r["metrics"]["converged"] for r in probed.values())
    fresh = {(r["arm"], r["seed"]): r["metrics"] for r in first if r["evaluator"] == "linear"}
    assert {key: probed[key]["metrics"] for key in probed} == {key: fresh[key] for key in probed}  # seeded

    read = read_results(results)
    assert read.values[("moco", "linear_sgd-lr30", "top1")] == {0: -1.0, 1: -1.0}
    assert read.values[("moco", "linear", "top1")] == {0: probed[("moco", 0)]["metrics"]["top1"]}
    report = (tmp_path / "results" / "tiny" / "REPORT.md").read_text()
    assert "| linear | linear (old SGD probe) |" in report


def test_records_keep_small_values_and_six_significant_digits(tmp_path):
    runner = StudyRunner(load_study(write_study(tmp_path)))
    runner.record("moco", 0, "linear", {"top1": 85.23333333, "l2": 3.16e-06, "converged": True, "iterations": 27})
    (line,) = [json.loads(text) for text in runner.results_path.read_text().splitlines()]
    assert line["metrics"] == {"top1": 85.2333, "l2": 3.16e-06, "converged": True, "iterations": 27}
