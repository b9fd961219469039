"""Rich representations: several --checkpoint files evaluated as the concatenation of their features, each model's
L2-normalised, in the order given; checked against features and a weighted kNN computed here independently."""

import argparse
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from eval_outputs import error_line, read_results
from knn_reference import reference_knn
from weight_files import our_checkpoint

from mochi_hvs.config import load_config
from mochi_hvs.data.datasets import labelled_splits
from mochi_hvs.data.loader import eval_loader
from mochi_hvs.evaluation.cli import prepare
from mochi_hvs.evaluation.commands import detection_main, knn_main, linear_main, semisup_main, transfer_main
from mochi_hvs.evaluation.ensemble import ConcatenatedBackbones
from mochi_hvs.evaluation.knn import KnnMonitor
from mochi_hvs.evaluation.linear import LinearProbe
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.runtime import seed_everything

FMNIST = ["data.mean=[0.286,0.286,0.286]", "data.std=[0.353,0.353,0.353]"]
SMALL_MODEL = ["optim.batch_size=32", "moco.queue_size=64", "model.bn_splits=4"]
BANK, QUERIES = 200, 50
SMALL_KNN = ["--set", f"eval.knn_train_subset={BANK}", f"eval.knn_test_subset={QUERIES}", "eval.batch_size=50",
             "device=cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two checkpoints of the same recipe at different initialisations, and their query backbones' states."""
    folder = tmp_path_factory.mktemp("rich")
    cfg = load_config(None, [*FMNIST, *SMALL_MODEL])
    torch.manual_seed(0)
    states = [our_checkpoint(folder / f"seed{i}.pth", cfg) for i in range(2)]
    return [folder / f"seed{i}.pth" for i in range(2)], states


def torchvision_backbone(state):
    """A torchvision ResNet-18 without classifier holding `state`, in eval mode (built here, not by the toolkit)."""
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    net.load_state_dict(state)
    return net.eval()


def test_concatenated_features_are_each_models_normalised_features_in_order():
    first, second = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(7, 3, 2, 2)
    with torch.no_grad():
        features = ConcatenatedBackbones([first, second])(x)
        swapped = ConcatenatedBackbones([second, first])(x)
        expected_first, expected_second = F.normalize(first(x), dim=1), F.normalize(second(x), dim=1)
    assert features.shape == (7, 8)
    assert torch.allclose(features[:, :5], expected_first) and torch.allclose(features[:, 5:], expected_second)
    assert torch.allclose(swapped[:, :3], expected_second) and torch.allclose(swapped[:, 3:], expected_first)
    for block in (features[:, :5], features[:, 5:]):
        assert torch.allclose(block.norm(dim=1), torch.ones(7))


def eval_args(paths, random_init=False):
    """The parsed command line of an evaluator given these files, on the CPU."""
    return argparse.Namespace(checkpoint=[str(p) for p in paths], config=None, set=["device=cpu"],
                              random_init=random_init, pixels=False, no_verify=False)


def test_the_context_concatenates_the_files_in_the_order_given(checkpoints):
    paths, states = checkpoints
    x = torch.randn(4, 3, 28, 28)
    for order in ([0, 1], [1, 0]):
        ctx = prepare(eval_args([paths[i] for i in order]))
        assert ctx.width == 1024
        with torch.no_grad():
            features = ctx.feature_model().eval()(x)
            expected = [F.normalize(torchvision_backbone(states[i])(x), dim=1) for i in order]
        assert torch.allclose(features, torch.cat(expected, dim=1), atol=1e-6)


def test_random_init_gives_each_file_its_own_seed(checkpoints):
    paths, _ = checkpoints
    first, second = prepare(eval_args(paths, random_init=True)).backbones
    for backbone, seed in ((first, 0), (second, 1)):  # the default config's seed is 0
        seed_everything(seed)
        reference, _ = build_backbone("resnet18")
        assert all(torch.equal(v, reference.state_dict()[k]) for k, v in backbone.module.state_dict().items())
    assert not torch.equal(first.module.conv1.weight, second.module.conv1.weight)


def split_features(backbones, images):
    """Concatenated per-model L2-normalised features of `images` with the evaluation transform, in float64."""
    cfg = load_config(None, FMNIST)
    blocks = []
    with torch.no_grad():
        for backbone in backbones:
            rows = [backbone(batch.images) for batch in eval_loader(images, cfg.data, 50, workers=0)]
            blocks.append(F.normalize(torch.cat(rows).double(), dim=1))
    return torch.cat(blocks, dim=1).numpy()


def test_knn_of_two_checkpoints_matches_an_independent_computation(checkpoints, tmp_path, capsys):
    paths, states = checkpoints
    results = tmp_path / "results.jsonl"
    assert knn_main(["--checkpoint", *map(str, paths), "--results", str(results), *SMALL_KNN,
                     "eval.knn_k=[5,20]"]) == 0
    assert f"knn | 2 checkpoints (concatenated): {paths[0]}, {paths[1]}" in capsys.readouterr().out
    (entry,) = read_results(results)
    assert entry["checkpoint"] == [str(p.resolve()) for p in paths]
    member = {"format": "mochi_hvs", "arch": "resnet18", "small_stem": False, "random_init": False,
              "loaded_tensors": 120}
    assert entry["weights"] == {"format": "concatenation", "random_init": False, "width": 1024,
                                "members": [member, member]}
    bank, test = labelled_splits("fashion_mnist", None, BANK, QUERIES, 0)
    backbones = [torchvision_backbone(state) for state in states]
    for k in (5, 20):  # with these two random networks, ks whose decisions no float32 rounding can change
        top1, vote_margin, boundary_gap = reference_knn(split_features(backbones, bank), bank.labels,
                                                        split_features(backbones, test), test.labels, k)
        assert vote_margin > 1e-4 and boundary_gap > 1e-5  # float32 rounding cannot change a vote
        assert entry["metrics"][f"k{k}_top1"] == pytest.approx(top1, abs=1e-4)


def test_one_checkpoint_gives_the_single_backbone_result(checkpoints, tmp_path):
    """One file through the evaluators' commands gives what the probe and kNN give that backbone directly."""
    paths, states = checkpoints
    results = tmp_path / "results.jsonl"
    settings = ["eval.linear.l2_grid=[0.1,0.001]", "eval.linear.train_subset=100",
                "eval.linear.test_subset=50", "eval.batch_size=50", "device=cpu"]
    assert linear_main(["--checkpoint", str(paths[1]), "--results", str(results), "--set", *settings]) == 0
    assert knn_main(["--checkpoint", str(paths[1]), "--random-init", "--results", str(results), *SMALL_KNN]) == 0
    linear, knn = read_results(results)
    assert linear["checkpoint"] == str(paths[1].resolve()) and linear["weights"]["loaded_tensors"] == 120
    cfg = load_config(None, [*FMNIST, *settings])
    seed_everything(cfg.seed)
    backbone, width = build_backbone("resnet18")
    backbone.load_state_dict(states[1])
    assert linear["metrics"] == LinearProbe(cfg, cfg.eval.linear, torch.device("cpu")).evaluate(backbone, width)
    cfg = load_config(None, [*FMNIST, *SMALL_KNN[1:]])
    seed_everything(cfg.seed)
    backbone, _ = build_backbone("resnet18")
    expected = KnnMonitor(cfg, torch.device("cpu")).evaluate_all(backbone)
    assert knn["metrics"] == {f"k{r.k}_top{n}": getattr(r, f"top{n}") for r in expected for n in (1, 5)}


def test_classic_linear_probe_reads_the_concatenated_width(checkpoints, tmp_path):
    paths, _ = checkpoints
    results = tmp_path / "results.jsonl"
    assert linear_main(["--checkpoint", *map(str, paths), "--results", str(results), "--set",
                        "eval.linear.mode=classic", "eval.linear.epochs=1", "eval.linear.train_subset=32",
                        "eval.linear.test_subset=32", "eval.linear.batch_size=32", "eval.batch_size=32",
                        "device=cpu"]) == 0
    (entry,) = read_results(results)
    assert entry["weights"]["width"] == 1024 and set(entry["metrics"]) == {"top1", "top5"}


def test_checkpoints_of_different_data_settings_are_one_error_line(checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    other = tmp_path / "cifar_norm.pth"
    our_checkpoint(other, load_config(None, SMALL_MODEL))  # the default (ImageNet) mean and std
    results = tmp_path / "r.jsonl"
    assert knn_main(["--checkpoint", str(paths[0]), str(other), "--results", str(results), *SMALL_KNN]) == 2
    line = error_line(capsys)
    assert "data.mean" in line and str(paths[0]) in line and str(other) in line
    assert not results.exists()


@pytest.mark.parametrize("main, settings", [(semisup_main, ["eval.semisup.label_fraction=0.01"]),
                                            (detection_main, [])])
def test_trained_evaluators_take_one_checkpoint(checkpoints, tmp_path, capsys, main, settings):
    paths, _ = checkpoints
    results = tmp_path / "r.jsonl"
    assert main(["--checkpoint", *map(str, paths), "--results", str(results), "--set", "device=cpu", *settings]) == 2
    line = error_line(capsys)
    assert "works on one backbone" in line and "frozen-feature evaluators" in line
    assert not results.exists()


def test_pixels_with_two_checkpoints_is_one_error_line(checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    assert knn_main(["--pixels", "--checkpoint", *map(str, paths), "--results", str(tmp_path / "r.jsonl")]) == 2
    assert "--pixels reads one --checkpoint at most" in error_line(capsys)


def test_transfer_suite_on_two_checkpoints(checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    results = tmp_path / "results.jsonl"
    assert transfer_main(["--checkpoint", *map(str, paths), "--results", str(results), "--tasks", "sklearn_digits",
                          "--set", "eval.knn_train_subset=300", "eval.knn_test_subset=100", "eval.knn_k=[20]",
                          "eval.transfer.episodes=20", "eval.transfer.shots=[1]", "eval.transfer.queries=5",
                          "eval.linear.epochs=2", "eval.batch_size=100", "device=cpu"]) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["group"] for line in lines] == ["knn", "linear", "few_shot"]
    assert all(line["checkpoint"] == [str(p.resolve()) for p in paths] for line in lines)
    assert all(line["weights"]["format"] == "concatenation" and len(line["weights"]["members"]) == 2
               for line in lines)
    assert 0 <= lines[0]["metrics"]["k20_top1"] <= 100 and "5way_1shot_mean" in lines[2]["metrics"]
    assert "transfer | 2 checkpoints (concatenated)" in capsys.readouterr().out
