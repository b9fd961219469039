import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy import stats

from mochi_hvs.errors import UserError
from mochi_hvs.evaluation.logme import logme
from mochi_hvs.evaluation.pge import chosen_parameters, expected_gradient, pge_distance
from mochi_hvs.evaluation.transfer_ranking import Correlation, correlation_table, rank_correlation, read_measured
from mochi_hvs.models.backbone import build_backbone

TRANSFERABILITY = runpy.run_path(str(Path(__file__).resolve().parents[1] / "eval" / "transferability.py"))["main"]
SMALL = ["eval.transferability.batches=2", "eval.transferability.batch_size=16", "eval.linear.l2_grid=[0.01]",
         "device=cpu"]


def toy_task(noise: float, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four batches of 64 points in 8-d, 3 classes given by a fixed linear rule, a `noise` fraction of the labels
    replaced by another class; the inputs are the same for every noise level."""
    inputs = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    labels = (inputs @ torch.randn(8, 3, generator=torch.Generator().manual_seed(1))).argmax(dim=1)
    rng = torch.Generator().manual_seed(100 + seed)
    flipped = torch.rand(256, generator=rng) < noise
    labels = torch.where(flipped, (labels + torch.randint(1, 3, (256,), generator=rng)) % 3, labels)
    return list(zip(inputs.split(64), labels.split(64), strict=True))


def toy_model() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh()), nn.Linear(16, 3)


def test_pge_ranks_the_less_noisy_target_closer_and_the_identical_task_at_zero():
    model, head = toy_model()
    params = [p for _, p in chosen_parameters(model, [""])]
    source = expected_gradient(model, head, toy_task(0.0), params)
    near, far = (expected_gradient(model, head, toy_task(noise), params) for noise in (0.1, 0.6))
    same = expected_gradient(model, head, toy_task(0.0), params)
    assert pge_distance(source, same) < 1e-6
    assert 0 < pge_distance(source, near) < pge_distance(source, far) <= 2
    assert all(p.grad is None for p in params)  # nothing accumulated in .grad


def test_pge_is_blind_to_the_scale_of_the_loss_but_the_raw_gradient_is_not():
    model, head = toy_model()
    params = [p for _, p in chosen_parameters(model, ["2."])]
    assert [p.shape for p in params] == [(16, 16), (16,)]  # only the second linear layer
    plain = [expected_gradient(model, head, toy_task(noise), params) for noise in (0.0, 0.3)]
    scaled = [expected_gradient(model, head, toy_task(noise), params, loss=lambda s, y: 7.0 * F.cross_entropy(s, y))
              for noise in (0.0, 0.3)]
    assert float(scaled[0].norm()) == pytest.approx(7 * float(plain[0].norm()), rel=1e-5)
    assert pge_distance(*scaled) == pytest.approx(pge_distance(*plain), rel=1e-5) and pge_distance(*plain) > 0.01
    assert pge_distance(scaled[0], plain[0]) < 1e-6
    assert pge_distance(torch.zeros_like(plain[0]), plain[0]) is None  # a zero gradient has no direction


def test_parameter_prefixes_pick_the_last_resnet_stage_and_an_unknown_prefix_is_refused():
    net, _ = build_backbone("resnet18")
    names = [name for name, _ in chosen_parameters(net, ["layer4"])]
    assert names and all(name.startswith("layer4.") for name in names)
    assert len(names) == len([n for n, _ in net.named_parameters() if n.startswith("layer4")])
    with pytest.raises(ValueError, match="no parameter name starts with"):
        chosen_parameters(net, ["layer9"])


def reference_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """LogME the slow way: the paper's fixed point with explicit matrices, the evidence with a log-determinant."""
    n, d = f.shape
    eig = np.linalg.eigvalsh(f.T @ f)
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        alpha, beta = 1.0, 1.0
        for _ in range(60):  # class 0 of the first case runs alpha off to infinity: stop short of overflow
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ y)
            gamma = (beta * eig / (alpha + beta * eig)).sum()
            alpha, beta = gamma / (m @ m), (n - gamma) / ((f @ m - y) @ (f @ m - y))
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ y)
        evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                    - beta / 2 * (f @ m - y) @ (f @ m - y) - alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2)
        scores.append(evidence / n)
    return float(np.mean(scores))


@pytest.mark.parametrize("repeated", [False, True])  # True: a feature that is the sum of two others (rank < D)
def test_logme_matches_the_evidence_computed_with_explicit_matrices(repeated):
    rng = np.random.default_rng(3)
    labels = np.arange(24) % 3
    f = rng.normal(size=(24, 5)) + labels[:, None] * 0.5
    if repeated:
        f = np.concatenate([f, f[:, :1] + f[:, 1:2]], axis=1)
        assert np.linalg.matrix_rank(f) == 5
    assert logme(f, labels) == pytest.approx(reference_logme(f, labels), rel=1e-6)


def test_logme_prefers_features_that_separate_the_classes_over_random_ones():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 5
    separating = np.eye(5)[labels] * 3 + rng.normal(size=(300, 5)) * 0.5
    random = rng.normal(size=(300, 5))
    assert logme(separating, labels) > logme(random, labels) + 0.1
    assert logme(separating, labels) == logme(separating, (labels + 2) % 5)  # class names do not matter


def test_rank_correlation_on_a_hand_computed_case():
    estimate = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    measured = {"a": 10.0, "b": 30.0, "c": 20.0, "d": 40.0, "e": 50.0}  # e has no estimate: left out
    got = rank_correlation(estimate, measured)
    # ranks 1 2 3 4 vs 1 3 2 4: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15); one discordant pair of six, tau = 4 / 6
    assert got.targets == 4 and got.spearman == pytest.approx(0.8) and got.kendall == pytest.approx(4 / 6)
    x, y = [1, 2, 3, 4], [10, 30, 20, 40]
    assert got.spearman == pytest.approx(stats.spearmanr(x, y).statistic)
    assert got.kendall == pytest.approx(stats.kendalltau(x, y).statistic)
    assert rank_correlation({"a": 1.0, "b": 2.0}, measured) == Correlation(2, None, None)  # too few targets
    assert rank_correlation({"a": 1.0, "b": 1.0, "c": 1.0}, measured) == Correlation(3, None, None)  # no ranking
    table = correlation_table({"linear.top1": {"PGE": got, "LogME": Correlation(2, None, None)}}).splitlines()
    assert table[0] == "| measured metric | targets | PGE Spearman | PGE Kendall | LogME Spearman | LogME Kendall |"
    assert table[2] == "| linear.top1 | 4 | 0.80 | 0.67 | n/a | n/a |"


def transfer_line(task, group, metrics, evaluator="transfer", weights=None):
    return json.dumps({"evaluator": evaluator, "task": task, "group": group, "metrics": metrics,
                       "skipped": None if group else "missing",
                       "weights": weights or {"format": "mochi_hvs", "random_init": False}})


RANDOM_INIT = {"format": "mochi_hvs", "random_init": True}
PIXELS = {"format": "pixels"}


def write_measured(path: Path, values: dict[str, float], weights: dict | None = None) -> Path:
    """A mochi-transfer results file: kNN, linear and few-shot lines per task, one skipped task, one line of another
    evaluator, and an earlier run of the first task that a later line replaces."""
    first = next(iter(values))
    lines = [transfer_line(first, "linear", {"top1": -1.0, "ece": 3.0}, weights=weights)]
    for task, value in values.items():
        lines += [transfer_line(task, "knn", {"k20_top1": value, "k20_top5": 99.0}, weights=weights),
                  transfer_line(task, "linear", {"top1": value + 1, "ece": 5.0}, weights=weights),
                  transfer_line(task, "few_shot", {"5way_5shot_mean": 100 - value, "5way_5shot_interval": 1.0},
                                weights=weights)]
    lines += [transfer_line("opencv_digits", None, {}), transfer_line("x", "knn", {"k20_top1": 1.0}, "knn"), ""]
    path.write_text("\n".join(lines))
    return path


def test_measured_transfer_keeps_one_kind_of_weights_and_gives_the_gain_over_random_init(tmp_path):
    """One results file holding a trained, a random-init and a raw-pixel run of the same tasks (as the README's
    measurement writes it): each kind is read on its own, pixels never, and the trained read adds the gains."""
    parts = [write_measured(tmp_path / "t.jsonl", {"a": 50.0, "b": 70.0}),
             write_measured(tmp_path / "r.jsonl", {"a": 45.0, "b": 72.0}, RANDOM_INIT),
             write_measured(tmp_path / "p.jsonl", {"a": 99.0, "b": 99.0}, PIXELS)]
    both = tmp_path / "all.jsonl"
    both.write_text("\n".join(part.read_text() for part in parts))
    trained = read_measured(both)
    assert trained["knn.k20_top1"] == {"a": 50.0, "b": 70.0}
    assert trained["gain.knn.k20_top1"] == {"a": 5.0, "b": -2.0}
    assert trained["gain.few_shot.5way_5shot_mean"] == {"a": -5.0, "b": 2.0}
    assert read_measured(both, random_init=True) == {"linear.top1": {"a": 46.0, "b": 73.0},
                                                     "knn.k20_top1": {"a": 45.0, "b": 72.0},
                                                     "few_shot.5way_5shot_mean": {"a": 55.0, "b": 28.0}}
    with pytest.raises(UserError, match="no mochi-transfer results of random-init weights"):
        read_measured(parts[0], random_init=True)


def test_measured_transfer_is_read_per_accuracy_metric_and_task(tmp_path):
    measured = read_measured(write_measured(tmp_path / "m.jsonl", {"a": 50.0, "b": 70.0}))
    assert measured == {"linear.top1": {"a": 51.0, "b": 71.0}, "knn.k20_top1": {"a": 50.0, "b": 70.0},
                        "few_shot.5way_5shot_mean": {"a": 50.0, "b": 30.0}}
    (tmp_path / "bad.jsonl").write_text('{"evaluator": "transfer"}\nnot json\n')
    with pytest.raises(UserError, match="line 2: not JSON"):
        read_measured(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="No such file"):
        read_measured(tmp_path / "missing.jsonl")


def image_tree(root: Path) -> Path:
    """An imagefolder training split of two classes of 32 noise images each, one a little brighter on average."""
    rng = np.random.default_rng(0)
    for label, base in (("dark", 100), ("bright", 120)):
        (root / "train" / label).mkdir(parents=True)
        for i in range(32):
            pixels = np.clip(rng.normal(base, 60, size=(28, 28, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / label / f"{i}.png")
    return root


def test_command_writes_estimates_skips_missing_targets_and_ranks_against_measured(checkpoint, tmp_path, capsys):
    tree = image_tree(tmp_path / "tree")
    folder, missing = f"imagefolder={tree}", f"opencv_digits={tmp_path / 'missing.png'}"
    results = tmp_path / "out.jsonl"
    measured = write_measured(tmp_path / "measured.jsonl", {"sklearn_digits": 90.0, "mnist5k": 80.0, folder: 60.0},
                              RANDOM_INIT)
    argv = ["--checkpoint", str(checkpoint), "--random-init", "--results", str(results), "--source", "sklearn_digits",
            "--tasks", "sklearn_digits", "mnist5k", folder, missing, "--measured", str(measured), "--set", *SMALL]
    assert TRANSFERABILITY(argv) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    targets, ranking = lines[:4], lines[4]
    assert [line["task"] for line in targets] == ["sklearn_digits", "mnist5k", folder, missing]
    assert all(line["evaluator"] == "transferability" and line["source"] == "sklearn_digits" for line in lines)
    assert targets[0]["metrics"]["pge_distance"] < 1e-6  # the source against itself
    assert all(0 < line["metrics"]["pge_distance"] <= 2 and math.isfinite(line["metrics"]["logme"])
               for line in targets[1:3])
    assert targets[1]["data"]["name"] == "mnist5k" and targets[0]["settings"]["transferability"]["batches"] == 2
    assert "opencv-doc" in targets[3]["skipped"] and targets[3]["metrics"] == {}
    scores = {"PGE": {t["task"]: -t["metrics"]["pge_distance"] for t in targets[:3]},
              "LogME": {t["task"]: t["metrics"]["logme"] for t in targets[:3]}}
    truth = read_measured(measured, random_init=True)
    for metric in ("linear.top1", "knn.k20_top1", "few_shot.5way_5shot_mean"):
        for name in ("PGE", "LogME"):
            expected = rank_correlation(scores[name], truth[metric])
            assert ranking["metrics"][metric][name] == {"targets": 3, "spearman": expected.spearman,
                                                        "kendall": expected.kendall}
            assert expected.spearman is not None
    out = capsys.readouterr().out
    assert "| target (source: sklearn_digits) | PGE distance | LogME |" in out
    assert f"| sklearn_digits | 0.0000 | {targets[0]['metrics']['logme']:.4f} |" in out
    assert "| opencv_digits=" in out and "skipped: opencv_digits:" in out
    row = next(line for line in out.splitlines() if line.startswith("| linear.top1 |"))
    pge = ranking["metrics"]["linear.top1"]["PGE"]
    assert row.startswith(f"| linear.top1 | 3 | {pge['spearman']:.2f} | {pge['kendall']:.2f} |")


def test_a_missing_measured_file_or_source_is_one_error_line_before_any_result(checkpoint, tmp_path, capsys):
    results = tmp_path / "out.jsonl"
    base = ["--checkpoint", str(checkpoint), "--random-init", "--results", str(results), "--tasks", "sklearn_digits",
            "--set", *SMALL]
    assert TRANSFERABILITY([*base, "--measured", str(tmp_path / "none.jsonl")]) == 2
    assert "error: --measured" in capsys.readouterr().err
    assert TRANSFERABILITY([*base, "--source", f"opencv_digits={tmp_path / 'missing.png'}"]) == 2
    assert "opencv-doc" in capsys.readouterr().err
    assert not results.exists()
