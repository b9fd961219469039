import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
import torchvision
from weight_files import official_moco, our_checkpoint

from mochi_hvs.config import load_config, to_dict
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.weights.checkpoint import save_checkpoint
from mochi_hvs.weights.detectron2_format import from_detectron2, from_detectron2_key, to_detectron2, to_detectron2_key
from mochi_hvs.weights.errors import CheckpointError
from mochi_hvs.weights.export import export_backbone, main
from mochi_hvs.weights.integrity import sidecar_path
from mochi_hvs.weights.loader import load_backbone_weights, read_backbone_state

# Names as MoCo's convert-pretrain-to-detectron2.py produces them (detectron2 ResNet naming).
KNOWN = {
    "conv1.weight": "stem.conv1.weight",
    "bn1.running_var": "stem.conv1.norm.running_var",
    "layer1.0.conv3.weight": "res2.0.conv3.weight",
    "layer1.0.bn3.bias": "res2.0.conv3.norm.bias",
    "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
    "layer1.0.downsample.1.running_mean": "res2.0.shortcut.norm.running_mean",
    "layer4.2.bn2.num_batches_tracked": "res5.2.conv2.norm.num_batches_tracked",
}


@pytest.mark.parametrize(("ours", "d2"), KNOWN.items())
def test_detectron2_key_mapping_both_ways(ours, d2):
    assert to_detectron2_key(ours) == d2
    assert from_detectron2_key(d2) == ours


def test_every_resnet50_key_maps_to_a_distinct_detectron2_key_and_back():
    keys = list(build_backbone("resnet50")[0].state_dict())
    mapped = [to_detectron2_key(k) for k in keys]
    assert len(set(mapped)) == len(keys)
    assert all(k.startswith(("stem.", "res2.", "res3.", "res4.", "res5.")) for k in mapped)
    assert not any("layer" in k or "bn" in k or "downsample" in k for k in mapped)
    assert [from_detectron2_key(k) for k in mapped] == keys


def test_detectron2_round_trip_recovers_the_weights(tmp_path):
    expected = official_moco(tmp_path / "moco.pth.tar", "resnet50")
    export_backbone(tmp_path / "moco.pth.tar", "detectron2", tmp_path / "r50.pkl", verify=False)
    with open(tmp_path / "r50.pkl", "rb") as handle:
        obj = pickle.load(handle)
    assert obj["matching_heuristics"] is True and obj["__author__"]
    assert all(isinstance(v, np.ndarray) for v in obj["model"].values())
    np.testing.assert_array_equal(obj["model"]["res2.0.shortcut.norm.running_mean"],
                                  expected["layer1.0.downsample.1.running_mean"].numpy())
    recovered = from_detectron2(obj)
    assert recovered.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(recovered[key], value), key
    assert to_detectron2(recovered)["model"].keys() == obj["model"].keys()


def test_torchvision_export_loads_into_resnet50_missing_only_fc(tmp_path):
    official_moco(tmp_path / "moco.pth.tar", "resnet50")
    assert main(["--checkpoint", str(tmp_path / "moco.pth.tar"), "--format", "torchvision",
                 "--out", str(tmp_path / "r50.pth"), "--no-verify"]) == 0
    state = torch.load(tmp_path / "r50.pth", weights_only=True)
    result = torchvision.models.resnet50().load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "absent.pth"), "--format", "detectron2",
                 "--out", str(tmp_path / "x.pkl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint not found") and "\n" not in err
    assert not (tmp_path / "x.pkl").exists()


def test_export_from_our_checkpoint(tmp_path):
    expected = our_checkpoint(tmp_path / "last.pth")
    _, line = export_backbone(tmp_path / "last.pth", "detectron2", tmp_path / "r18.pkl")
    assert line.startswith(f"exported resnet18 backbone (120 tensors) to {tmp_path / 'r18.pkl'} as detectron2, "
                           f"from {tmp_path / 'last.pth'}: our training checkpoint: resnet18 backbone")
    with open(tmp_path / "r18.pkl", "rb") as handle:
        recovered = from_detectron2(pickle.load(handle))
    assert all(torch.equal(recovered[k], v) for k, v in expected.items()) and recovered.keys() == expected.keys()


def test_detectron2_pixel_statistics_hint():
    from mochi_hvs.weights.export import pixel_values

    assert pixel_values([0.485, 0.456, 0.406]) == "[123.675, 116.28, 103.53]"


def test_detectron2_recipes_hold_moco_transfer_settings():
    import yaml

    root = Path(__file__).resolve().parents[1] / "configs" / "detectron2"
    base = yaml.safe_load((root / "Base-RCNN-C4-SyncBN.yaml").read_text())
    assert base["MODEL"]["RESNETS"]["NORM"] == "SyncBN" and base["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0
    for name, iterations in (("pascal_voc_R_50_C4_24k_moco.yaml", 24000), ("coco_R_50_C4_2x_moco.yaml", 180000)):
        recipe = yaml.safe_load((root / name).read_text())
        assert (root / recipe["_BASE_"]).is_file()
        assert recipe["SOLVER"]["MAX_ITER"] == iterations and recipe["INPUT"]["FORMAT"] == "RGB"
        assert recipe["MODEL"]["PIXEL_MEAN"] == [123.675, 116.28, 103.53]
        assert recipe["MODEL"]["PIXEL_STD"] == [58.395, 57.12, 57.375]
        assert recipe["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
    assert yaml.safe_load((root / "coco_R_50_C4_2x_moco.yaml").read_text())["MODEL"]["MASK_ON"] is True


def features(state, arch="resnet18", small_stem=False):
    """Pooled features of a fixed batch through a backbone holding `state` (eval mode)."""
    backbone, _ = build_backbone(arch, small_stem)
    load_backbone_weights(backbone, state)
    return backbone.eval()(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(("fmt", "suffix"), [("safetensors", ".safetensors"), ("torchvision", ".pth"),
                                             ("detectron2", ".pkl")])
def test_each_export_reads_back_to_the_same_features(tmp_path, fmt, suffix):
    cfg = load_config(None, ["model.small_stem=true"])
    expected = our_checkpoint(tmp_path / "last.pth", cfg)
    for name, state in expected.items():  # BatchNorm away from its init, so that the features depend on it
        if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "weight", "bias") and state.dim() == 1:
            state.add_(0.5 * torch.rand_like(state))
    torch.save({**torch.load(tmp_path / "last.pth", weights_only=True), "model": {
        f"encoder_q.backbone.{k}": v for k, v in expected.items()}}, tmp_path / "changed.pth")
    export_backbone(tmp_path / "changed.pth", fmt, tmp_path / f"backbone{suffix}", verify=False)
    state, meta = read_backbone_state(tmp_path / f"backbone{suffix}")
    assert (meta.arch, meta.small_stem) == ("resnet18", True)
    reference = features(expected, small_stem=True)
    assert torch.isfinite(reference).all() and torch.equal(features(state, small_stem=True), reference)


def test_the_default_export_is_a_safetensors_file_other_tools_read(tmp_path, capsys):
    cfg = load_config(None, ["model.arch=resnet50", "optim.batch_size=32", "moco.queue_size=64", "model.bn_splits=4"])
    expected = our_checkpoint(tmp_path / "last.pth", cfg)
    out = tmp_path / "r50.safetensors"
    assert main(["--checkpoint", str(tmp_path / "last.pth"), "--out", str(out)]) == 0
    assert f"to {out} as safetensors" in capsys.readouterr().out
    plain = safetensors.torch.load_file(out)  # the library's own reader, no mochi_hvs involved
    assert plain.keys() == expected.keys() and all(torch.equal(plain[k], v) for k, v in expected.items())
    result = torchvision.models.resnet50().load_state_dict(plain, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    with safetensors.safe_open(out, "pt") as handle:
        assert handle.metadata()["format"] == "mochi_hvs.backbone"
    state, meta = read_backbone_state(out)
    assert (meta.source, meta.arch) == ("safetensors", "resnet50") and meta.config == to_dict(cfg)


def test_a_safetensors_export_checks_its_own_digest_without_its_sidecar(tmp_path):
    expected = our_checkpoint(tmp_path / "last.pth")
    out = tmp_path / "backbone.safetensors"
    export_backbone(tmp_path / "last.pth", "safetensors", out)
    sidecar_path(out).unlink()
    read_backbone_state(out)  # the digest in its metadata suffices
    data = bytearray(out.read_bytes())
    raw = expected["layer2.0.conv1.weight"].numpy().tobytes()
    data[data.find(raw) + len(raw) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(out))} failed its integrity check: .* recorded "
                                              "inside it"):
        read_backbone_state(out)
    assert (read_backbone_state(out, verify=False)[0]["layer2.0.conv1.weight"] != expected[
        "layer2.0.conv1.weight"]).sum() == 1


def test_the_safetensors_export_records_the_steps_and_commit_of_its_run(tmp_path):
    our_checkpoint(tmp_path / "last.pth")
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    save_checkpoint({**saved, "global_step": 7, "commit": "0123abc"}, tmp_path / "last.pth")
    export_backbone(tmp_path / "last.pth", "safetensors", tmp_path / "backbone.safetensors")
    with safetensors.safe_open(tmp_path / "backbone.safetensors", "pt") as handle:
        assert json.loads(handle.metadata()["run"]) == {"steps": 7, "commit": "0123abc"}
    assert read_backbone_state(tmp_path / "backbone.safetensors")[1].run == {"steps": 7, "commit": "0123abc"}
    export_backbone(tmp_path / "backbone.safetensors", "safetensors", tmp_path / "again.safetensors")
    assert read_backbone_state(tmp_path / "again.safetensors")[1].run == {"steps": 7, "commit": "0123abc"}
