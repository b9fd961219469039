"""mochi-nuclei on generated blobs (generated data for the tests only, never for a claim): the decoder learns, the
frozen backbone stays untouched, fine-tuning moves it, the command writes its record, bad input is one error line."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.data.datasets import DatasetError
from mochi_hvs.data.nuclei import NucleiImage, read_nuclei_set, write_nuclei_image
from mochi_hvs.errors import UserError
from mochi_hvs.evaluation.commands import nuclei_main
from mochi_hvs.evaluation.nuclei import DenseStages, NucleiSegmenter, nuclei_segmentation, prepare_images
from mochi_hvs.models.backbone import build_backbone

MEAN, STD = [0.5] * 3, [0.25] * 3


def blobs(seed: int, height: int = 64, width: int = 96, count: int = 6) -> NucleiImage:
    """Dark discs of radius 4-6 on a light, noisy background, apart from each other, with their instance map."""
    rng = np.random.default_rng(seed)
    image = rng.normal(215, 12, (height, width, 3))
    instances = np.zeros((height, width), dtype=np.int32)
    yy, xx = np.mgrid[:height, :width]
    placed = 0
    while placed < count:
        r = rng.integers(4, 7)
        cy, cx = rng.integers(r + 1, height - r - 1), rng.integers(r + 1, width - r - 1)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if instances[(yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 3) ** 2].any():
            continue
        placed += 1
        instances[disc] = placed
        image[disc] = rng.normal([90, 60, 130], 10, (int(disc.sum()), 3))
    return NucleiImage(f"blobs{seed}", np.clip(image, 0, 255).astype(np.uint8), instances)


@pytest.fixture(scope="module")
def blob_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    for seed in range(3):
        write_nuclei_image(root / "train", blobs(seed))
    write_nuclei_image(root / "test", blobs(10))
    return root


def settings(blob_sets, **changes):
    cfg = load_config(None, [f"eval.nuclei.train={blob_sets / 'train'}", f"eval.nuclei.test={blob_sets / 'test'}",
                             "eval.nuclei.crop=32", "eval.nuclei.iterations=150"])
    return dataclasses.replace(cfg.eval.nuclei, **changes)


def backbone() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18")[0]


@pytest.mark.slow
def test_the_decoder_learns_blobs_on_a_frozen_backbone(blob_sets):
    net = backbone()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trained = nuclei_segmentation(net, settings(blob_sets), MEAN, STD, torch.device("cpu"))
    untrained = nuclei_segmentation(backbone(), settings(blob_sets, iterations=1), MEAN, STD, torch.device("cpu"))
    assert trained["nuclei_true"] == 6
    assert trained["dice"] > 0.8 and trained["aji"] > 0.6, trained
    assert trained["dice"] > untrained["dice"] + 0.3 and trained["aji"] > untrained["aji"] + 0.3
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # frozen: not even BN statistics


@pytest.mark.slow
def test_finetuning_moves_the_backbone(blob_sets):
    net = backbone()
    before = net.layer1[0].conv1.weight.clone()
    segmenter = NucleiSegmenter(net, settings(blob_sets, finetune=True, iterations=3), torch.device("cpu"))
    segmenter.fit(prepare_images(read_nuclei_set(blob_sets / "train"), MEAN, STD))
    assert not torch.equal(before, net.layer1[0].conv1.weight)


@pytest.mark.slow
def test_the_command_appends_its_record(blob_sets, tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    results = tmp_path / "results.jsonl"
    code = nuclei_main(["--checkpoint", str(weights), "--no-verify", "--set",
                        f"eval.nuclei.train={blob_sets / 'train'}", f"eval.nuclei.test={blob_sets / 'test'}",
                        "eval.nuclei.crop=32", "eval.nuclei.iterations=5", "device=cpu", "seed=3",
                        "--results", str(results)])
    assert code == 0
    record = json.loads(results.read_text())
    assert record["evaluator"] == "nuclei" and record["seed"] == 3 and record["settings"]["iterations"] == 5
    assert set(record["metrics"]) == {"dice", "aji", "nuclei_true", "nuclei_predicted", "final_loss"}
    assert {"command", "commit", "machine"} <= set(record)


def test_bad_input_is_one_error_line(blob_sets, tmp_path, capsys):
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    assert nuclei_main(["--checkpoint", str(weights), "--no-verify", "--set", "device=cpu"]) == 2
    assert "error: mochi-nuclei needs eval.nuclei.train and eval.nuclei.test" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="must hold images/ and masks/"):
        read_nuclei_set(tmp_path / "missing")
    with pytest.raises(UserError, match="eval.nuclei.crop=128 is larger than a training image"):
        NucleiSegmenter(backbone(), settings(blob_sets, crop=128), torch.device("cpu")).fit(
            prepare_images(read_nuclei_set(blob_sets / "train"), MEAN, STD))
    with pytest.raises(UserError, match="reads the dense maps of a ResNet"):
        DenseStages(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="eval.nuclei.crop.*multiple of 32"):
        load_config(None, ["eval.nuclei.crop=48"])


def test_a_mask_of_another_size_is_named(tmp_path):
    item = blobs(0)
    write_nuclei_image(tmp_path, NucleiImage("a", item.image, item.instances[:, :50]))
    with pytest.raises(DatasetError, match=r"masks/a.png is 50 x 64 px, its image .*a.png 96 x 64"):
        read_nuclei_set(tmp_path)
