import importlib
import runpy
import sys
from pathlib import Path

import pytest
import setuptools
import torch
from eval_outputs import error_line, read_results
from weight_files import official_moco

from mochi_hvs.data.synthetic_detection import make_fashion_detection
from mochi_hvs.machine import device_description
from mochi_hvs.provenance import code_commit
from mochi_hvs.weights.export import export_backbone

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "eval"
SMALL_KNN = ["--set", "eval.knn_train_subset=200", "eval.knn_test_subset=50", "eval.batch_size=50"]  # bank >= k=200


def cli(name):
    """The main() of an eval/ script."""
    return runpy.run_path(str(EVAL / f"{name}.py"))["main"]


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


def test_knn_cli_reads_exported_and_official_moco_files(checkpoint, tmp_path, capsys):
    export_backbone(checkpoint, "torchvision", tmp_path / "backbone.pth")
    export_backbone(checkpoint, "safetensors", tmp_path / "backbone.safetensors")
    official_moco(tmp_path / "moco.pth.tar", "resnet18")
    results = tmp_path / "results.jsonl"
    # Files without a config need the data settings given: here the normalisation the checkpoint recorded. The
    # safetensors export brings the checkpoint's config along.
    normalisation = ["data.mean=[0.286,0.286,0.286]", "data.std=[0.353,0.353,0.353]"]
    for path, extra in ((tmp_path / "backbone.pth", normalisation), (tmp_path / "moco.pth.tar", normalisation),
                        (tmp_path / "backbone.safetensors", [])):
        assert cli("knn")(["--checkpoint", str(path), "--results", str(results), *SMALL_KNN, *extra]) == 0
    # The official file carries no digest: it loads, with a note; the exports are checked against their own.
    notes = [line for line in capsys.readouterr().err.splitlines() if line.endswith("backbone tensors")]
    assert [line.split("; ")[-2] for line in notes] == [
        "SHA-256 verified", "no SHA-256 digest (a file from elsewhere, read as data): not verified", "SHA-256 verified"]
    exported, moco, safetensors_export = read_results(results)
    formats = [entry["weights"]["format"] for entry in (exported, moco, safetensors_export)]
    assert formats == ["torchvision", "moco", "safetensors"]
    # The exported backbone is the checkpoint's backbone: identical features, identical kNN results.
    assert cli("knn")(["--checkpoint", str(checkpoint), "--results", str(results), *SMALL_KNN]) == 0
    assert read_results(results)[-1]["metrics"] == exported["metrics"] == safetensors_export["metrics"]


def test_linear_cli_default_probe_reports_its_choice(checkpoint, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    args = ["--checkpoint", str(checkpoint), "--results", str(results), "--set", "eval.linear.l2_grid=[0.1,0.001]",
            "eval.linear.train_subset=100", "eval.linear.test_subset=50", "eval.batch_size=50"]
    assert cli("linear")(args) == 0
    (entry,) = read_results(results)
    assert entry["settings"]["mode"] == "lbfgs" and entry["settings"]["l2_grid"] == [0.1, 0.001]
    assert set(entry["metrics"]) == {"top1", "top5", "l2", "val_top1", "train_loss", "iterations", "converged",
                                     "search_converged"}
    assert entry["metrics"]["l2"] in (0.1, 0.001) and entry["metrics"]["converged"] is True
    assert entry["commit"] == code_commit() and entry["machine"] == device_description("cpu") and entry["command"]
    assert "top1" in capsys.readouterr().out


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
    assert error_line(capsys) == (
        "error: semi-supervised evaluation needs exactly one of 'eval.semisup.label_fraction', "
        "'eval.semisup.labels_per_class', 'eval.semisup.split_file', 'eval.semisup.random_labels', e.g. --set "
        "eval.semisup.label_fraction=0.01")
    assert cli("detection")(["--checkpoint", str(checkpoint), *results, "--set", "eval.detection.val=x:val"]) == 2
    assert error_line(capsys) == ("error: detection needs its data sets: --set eval.detection.train=[ROOT:SPLIT, ...] "
                                  "eval.detection.val=ROOT:SPLIT")
    assert cli("detection")(["--checkpoint", str(checkpoint), *results, "--set", f"eval.detection.train=[{tmp_path}]",
                             f"eval.detection.val={tmp_path}"]) == 2
    assert "ROOT:SPLIT" in error_line(capsys)
    if not torch.cuda.is_available():
        assert knn(["--checkpoint", str(checkpoint), *results, "--set", "device=cuda"]) == 2
        assert "no CUDA GPU is available" in error_line(capsys)
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.slow
def test_detection_cli_end_to_end(checkpoint, tmp_path, capsys):
    data = make_fashion_detection(tmp_path / "det", train_images=8, val_images=4)
    results = tmp_path / "results.jsonl"
    d = "eval.detection."
    args = ["--checkpoint", str(checkpoint), "--results", str(results), "--set", f"{d}train=[{data}:train]",
            f"{d}val={data}:val", f"{d}iterations=2", f"{d}batch_size=2", f"{d}min_size=64", f"{d}max_size=64",
            f"{d}proposals=64", f"{d}roi_batch=32", f"{d}workers=0", f"{d}norm=frozen"]
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
    assert (stored["data"]["train_subset"], stored["optim"]["batch_size"]) == (64, 16)  # valid only with its batch
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


def test_console_scripts_are_the_mains_of_the_eval_scripts(monkeypatch):
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **options: captured.update(options))
    runpy.run_path(str(ROOT / "setup.py"))
    targets = dict(line.split("=") for line in captured["entry_points"]["console_scripts"])
    for script, name in (("mochi-knn", "knn"), ("mochi-linear", "linear"), ("mochi-semisup", "semisup"),
                         ("mochi-select", "select_labels"), ("mochi-detect", "detection"),
                         ("mochi-transfer", "transfer"), ("mochi-transferability", "transferability")):
        module, function = targets[script].split(":")
        assert getattr(importlib.import_module(module), function) is cli(name)


def test_console_script_and_eval_script_give_the_same_result(checkpoint, tmp_path, monkeypatch):
    from mochi_hvs.evaluation.commands import knn_main

    results = tmp_path / "results.jsonl"
    args = ["--checkpoint", str(checkpoint), "--results", str(results), *SMALL_KNN]
    assert knn_main(args) == 0
    monkeypatch.setattr(sys, "argv", ["eval/knn.py", *args])
    with pytest.raises(SystemExit) as stop:  # as `python eval/knn.py ...` runs it
        runpy.run_path(str(EVAL / "knn.py"), run_name="__main__")
    assert stop.value.code == 0
    console, script = read_results(results)
    assert console["metrics"] == script["metrics"] and console["settings"] == script["settings"]


def test_a_recipe_carries_evaluator_settings(checkpoint, tmp_path):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("data: {mean: [0.286, 0.286, 0.286], std: [0.353, 0.353, 0.353]}\n"
                      "eval:\n  batch_size: 50\n"
                      "  linear: {mode: classic, epochs: 1, batch_size: 50, train_subset: 100, test_subset: 50}\n")
    results = tmp_path / "results.jsonl"
    assert cli("linear")(["--checkpoint", str(checkpoint), "--config", str(recipe), "--results", str(results),
                          "--set", "eval.linear.lr=3"]) == 0
    (entry,) = read_results(results)
    assert {k: entry["settings"][k] for k in ("mode", "epochs", "train_subset", "lr")} == {
        "mode": "classic", "epochs": 1, "train_subset": 100, "lr": 3.0}


def test_an_evaluator_setting_out_of_range_is_one_line_naming_its_key(checkpoint, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    assert cli("linear")(["--checkpoint", str(checkpoint), "--results", str(results),
                          "--set", "eval.linear.lr=-1"]) == 2
    assert error_line(capsys) == "error: <checkpoint config> + --set: 'eval.linear.lr' must be > 0; got -1.0"
    assert cli("semisup")(["--checkpoint", str(checkpoint), "--results", str(results), "--set",
                           "eval.semisup.label_fraction=0.1", "eval.semisup.split_file=x.txt"]) == 2
    assert error_line(capsys).startswith("error: <checkpoint config> + --set: 'eval.semisup.split_file' cannot be set "
                                         "together with 'eval.semisup.label_fraction'")
    assert not results.exists()
