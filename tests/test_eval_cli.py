import json
import runpy
from pathlib import Path

import pytest
import torch
from weight_files import official_moco, our_checkpoint

from mochi_hvs.config import load_config
from mochi_hvs.data.synthetic_detection import make_fashion_detection
from mochi_hvs.export import export_backbone

EVAL = Path(__file__).resolve().parents[1] / "eval"
SMALL_KNN = ["--set", "eval.knn_train_subset=200", "eval.knn_test_subset=50", "eval.batch_size=50"]  # bank >= k=200


def cli(name):
    """The main() of an eval/ script."""
    return runpy.run_path(str(EVAL / f"{name}.py"))["main"]


@pytest.fixture
def checkpoint(tmp_path):
    cfg = load_config(None, ["data.mean=[0.286,0.286,0.286]", "data.std=[0.353,0.353,0.353]", "optim.batch_size=32",
                             "moco.queue_size=64", "model.bn_splits=4"])
    our_checkpoint(tmp_path / "last.pth", cfg)
    return tmp_path / "last.pth"


def read_results(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_knn_cli_on_our_checkpoint_prints_table_and_appends_json(checkpoint, tmp_path, capsys):
    results = tmp_path / "out" / "results.jsonl"
    for extra in ([], ["--random-init"]):
        assert cli("knn")(["--checkpoint", str(checkpoint), "--results", str(results), *SMALL_KNN, *extra]) == 0
    out = capsys.readouterr().out
    assert "k20_top1" in out and "k200_top5" in out and "(random init)" in out
    trained, random = read_results(results)
    assert trained["evaluator"] == "knn" and trained["checkpoint"] == str(checkpoint.resolve())
    assert trained["weights"] == {"format": "mochi_hvs", "arch": "resnet18", "small_stem": False,
                                  "random_init": False, "loaded_tensors": 120}
    assert trained["data"]["name"] == "fashion_mnist" and trained["settings"]["k"] == [20, 200]
    assert trained["settings"]["train_subset"] == 200
    assert set(trained["metrics"]) == {"k20_top1", "k20_top5", "k200_top1", "k200_top5"}
    assert all(0 <= v <= 100 for v in trained["metrics"].values())
    assert random["weights"]["random_init"] and random["weights"]["loaded_tensors"] == 0


def test_knn_cli_reads_exported_and_official_moco_files(checkpoint, tmp_path):
    export_backbone(checkpoint, "torchvision", tmp_path / "backbone.pth")
    official_moco(tmp_path / "moco.pth.tar", "resnet18")
    results = tmp_path / "results.jsonl"
    # Files without a config need the data settings given: here the normalisation the checkpoint recorded.
    normalisation = ["data.mean=[0.286,0.286,0.286]", "data.std=[0.353,0.353,0.353]"]
    # The official file carries no digest: it is read with --no-verify; the export is checked against its own.
    for path, verify in ((tmp_path / "backbone.pth", []), (tmp_path / "moco.pth.tar", ["--no-verify"])):
        assert cli("knn")(["--checkpoint", str(path), "--results", str(results), *SMALL_KNN, *normalisation,
                           *verify]) == 0
    exported, moco = read_results(results)
    assert (exported["weights"]["format"], moco["weights"]["format"]) == ("torchvision", "moco")
    # The exported backbone is the checkpoint's backbone: identical features, identical kNN results.
    assert cli("knn")(["--checkpoint", str(checkpoint), "--results", str(results), *SMALL_KNN]) == 0
    assert read_results(results)[-1]["metrics"] == exported["metrics"]


def test_linear_cli_cached_mode(checkpoint, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    args = ["--checkpoint", str(checkpoint), "--results", str(results), "--mode", "cached", "--epochs", "2",
            "--train-subset", "100", "--test-subset", "50", "--set", "eval.batch_size=50"]
    assert cli("linear")(args) == 0
    (entry,) = read_results(results)
    assert entry["settings"]["mode"] == "cached" and entry["settings"]["lr"] == 30.0
    assert set(entry["metrics"]) == {"top1", "top5"}
    assert "top1" in capsys.readouterr().out


def error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    return err[0]


def test_user_mistakes_give_one_clear_line(checkpoint, tmp_path, capsys):
    knn = cli("knn")
    results = ["--results", str(tmp_path / "r.jsonl")]
    assert knn(["--checkpoint", str(tmp_path / "absent.pth"), *results]) == 2
    assert "checkpoint not found" in error_line(capsys)
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    assert knn(["--checkpoint", str(tmp_path / "bad.pth"), *results]) == 2
    assert "truncated or corrupt" in error_line(capsys)
    assert knn(["--checkpoint", str(checkpoint), *results, "--set", f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "Fashion-MNIST file" in error_line(capsys)
    assert cli("semisup")(["--checkpoint", str(checkpoint), *results]) == 2
    assert "exactly one of --label-fraction" in error_line(capsys)
    assert cli("detection")(["--checkpoint", str(checkpoint), *results, "--val", str(tmp_path)]) == 2
    assert "ROOT:SPLIT" in error_line(capsys)
    if not torch.cuda.is_available():
        assert knn(["--checkpoint", str(checkpoint), *results, "--set", "device=cuda"]) == 2
        assert "no CUDA GPU is available" in error_line(capsys)
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.slow
def test_detection_cli_end_to_end(checkpoint, tmp_path, capsys):
    data = make_fashion_detection(tmp_path / "det", train_images=8, val_images=4)
    results = tmp_path / "results.jsonl"
    args = ["--checkpoint", str(checkpoint), "--results", str(results), "--train", f"{data}:train",
            "--val", f"{data}:val", "--iterations", "2", "--batch-size", "2", "--min-size", "64", "--max-size", "64",
            "--proposals", "64", "--roi-batch", "32", "--workers", "0", "--norm", "frozen"]
    assert cli("detection")(args) == 0
    (entry,) = read_results(results)
    assert set(entry["metrics"]) == {"AP", "AP50", "AP75", "final_loss"}
    assert entry["settings"]["norm"] == "frozen" and entry["settings"]["train"] == [f"{data}:train"]
    assert "AP50" in capsys.readouterr().out


def test_a_checkpoint_pretrained_on_a_subset_below_the_default_batch_evaluates_without_config(
        tiny_overrides, tmp_path, capsys):
    from mochi_hvs.pretrain import main as pretrain

    run = ["--set", *tiny_overrides, "data.train_subset=64", "optim.epochs=1", "eval.knn_baseline=false"]
    assert pretrain(run) == 0
    checkpoint = tmp_path / "tiny" / "last.pth"
    stored = torch.load(checkpoint, weights_only=True)["config"]
    assert (stored["data"]["train_subset"], stored["optim"]["batch_size"]) == (64, 32)  # valid only with its batch
    results = tmp_path / "results.jsonl"
    assert cli("knn")(["--checkpoint", str(checkpoint), "--results", str(results), *SMALL_KNN]) == 0
    (entry,) = read_results(results)
    assert entry["data"]["name"] == "fashion_mnist" and set(entry["metrics"]) == {
        "k20_top1", "k20_top5", "k200_top1", "k200_top5"}
    assert "error" not in capsys.readouterr().err


def test_knn_larger_than_the_bank_is_one_clear_line(checkpoint, tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (28, 28), (i * 60, 20, 20)).save(tmp_path / "tree" / split / cls / f"{i}.png")
    args = ["--checkpoint", str(checkpoint), "--results", str(tmp_path / "r.jsonl"), "--set", "data.name=imagefolder",
            f"data.root={tmp_path / 'tree'}"]
    assert cli("knn")([*args, "eval.knn_k=[3,7]"]) == 2
    assert error_line(capsys) == ("error: 'eval.knn_k' = 7 exceeds the kNN bank: 6 labelled training images of "
                                  "imagefolder; choose k <= 6")
    assert not (tmp_path / "r.jsonl").exists()
    assert cli("knn")([*args, "eval.knn_k=6"]) == 0
