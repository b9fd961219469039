import pytest
import safetensors.torch
import torch
import torchvision
from test_backbones import CONVNEXT_KWARGS, VIT, VIT_KWARGS
from weight_files import official_moco, our_checkpoint, torchvision_state

from mochi_hvs.config import load_config, to_dict
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.weights.architecture import Architecture, infer_resnet
from mochi_hvs.weights.errors import CheckpointError, WeightsError
from mochi_hvs.weights.export import export_backbone
from mochi_hvs.weights.loader import load_backbone_weights, read_backbone_state


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_our_training_checkpoint(tmp_path):
    cfg = load_config(None, ["model.arch=resnet34", "model.small_stem=true", "optim.batch_size=32",
                             "moco.queue_size=64", "model.bn_splits=4"])
    expected = our_checkpoint(tmp_path / "last.pth", cfg)
    state, meta = read_backbone_state(tmp_path / "last.pth")
    assert (meta.source, meta.arch, meta.small_stem) == ("mochi_hvs", "resnet34", True)
    assert meta.config["model"]["arch"] == "resnet34"
    assert_same(state, expected)


def test_exported_backbone_reads_back_identically(tmp_path):
    expected = our_checkpoint(tmp_path / "last.pth")
    export_backbone(tmp_path / "last.pth", "torchvision", tmp_path / "backbone.pth")
    state, meta = read_backbone_state(tmp_path / "backbone.pth")
    assert (meta.source, meta.arch, meta.small_stem, meta.config) == ("torchvision", "resnet18", False, None)
    assert_same(state, expected)


def test_our_detectron2_export_reads_back_identically(tmp_path):
    expected = our_checkpoint(tmp_path / "last.pth")
    export_backbone(tmp_path / "last.pth", "detectron2", tmp_path / "r18.pkl")
    state, meta = read_backbone_state(tmp_path / "r18.pkl")
    assert (meta.source, meta.arch, meta.small_stem, meta.config) == ("detectron2", "resnet18", False, None)
    assert_same(state, expected)
    assert all(state[k].dtype == v.dtype for k, v in expected.items())


@pytest.mark.parametrize("legacy", [False, True])
def test_official_moco_format_drops_head_and_key_encoder(tmp_path, legacy):
    expected = official_moco(tmp_path / "moco_v2_800ep_pretrain.pth.tar", legacy=legacy)
    state, meta = read_backbone_state(tmp_path / "moco_v2_800ep_pretrain.pth.tar", verify=False)
    assert (meta.source, meta.arch) == ("moco", "resnet50")
    assert not any(k.startswith("fc.") for k in state)
    assert_same(state, expected)


def test_plain_torchvision_state_drops_fc(tmp_path):
    expected = torchvision_state(tmp_path / "r18.pth")
    state, meta = read_backbone_state(tmp_path / "r18.pth", verify=False)
    assert (meta.source, meta.arch, meta.small_stem) == ("torchvision", "resnet18", False)
    assert_same(state, expected)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("small_stem", [False, True])
def test_architecture_and_stem_are_inferred(arch, small_stem):
    backbone, _ = build_backbone(arch, small_stem)
    assert infer_resnet(backbone.state_dict()) == Architecture(arch, small_stem)


def test_loading_copies_weights_and_reports(tmp_path):
    expected = torchvision_state(tmp_path / "r18.pth")
    state, _ = read_backbone_state(tmp_path / "r18.pth", verify=False)
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    backbone, _ = build_backbone("resnet18")
    report = load_backbone_weights(backbone, state)
    assert report.missing == ["layer4.1.bn2.weight"] and report.unexpected == ["extra.weight"]
    assert report.loaded == len(expected) - 1
    assert torch.equal(backbone.state_dict()["layer1.0.conv1.weight"], expected["layer1.0.conv1.weight"])


def test_shape_mismatch_and_no_match_are_errors(tmp_path):
    torchvision_state(tmp_path / "r18.pth")
    state, _ = read_backbone_state(tmp_path / "r18.pth", verify=False)
    small, _ = build_backbone("resnet18", small_stem=True)
    with pytest.raises(WeightsError, match="wrong shape.*conv1.weight"):
        load_backbone_weights(small, state)
    backbone, _ = build_backbone("resnet18")
    before = backbone.state_dict()["conv1.weight"].clone()
    with pytest.raises(WeightsError, match="match no parameter"):
        load_backbone_weights(backbone, {f"encoder.{k}": v for k, v in state.items()})
    assert torch.equal(backbone.state_dict()["conv1.weight"], before)


def test_unreadable_and_unknown_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_backbone_state(tmp_path / "absent.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_backbone_state(tmp_path / "garbage.pth")
    torch.save({"net": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="unrecognised weights format"):
        read_backbone_state(tmp_path / "other.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="not a ResNet backbone"):
        read_backbone_state(tmp_path / "partial.pth")


PREFIXES = ["module.", "encoder_q.", "backbone.", "model.", "module.encoder_q.", "model.backbone.",
            "encoder_q.backbone.", "module.model.backbone."]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("container", [None, "state_dict", "model"])
def test_the_backbone_is_found_under_the_usual_prefixes_and_containers(tmp_path, prefix, container):
    net = torchvision.models.resnet18(weights=None)
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state = {f"{prefix}{k}": v for k, v in net.state_dict().items()}
    state["queue"] = torch.zeros(4, 8)  # beside the backbone: ignored
    torch.save(state if container is None else {container: state, "epoch": 3}, tmp_path / "w.pth")
    loaded, meta = read_backbone_state(tmp_path / "w.pth")
    assert_same(loaded, expected)
    where = f" under {prefix}*" + (f" in '{container}'" if container else "")
    moco = container == "state_dict" and prefix == "module.encoder_q."  # the official MoCo layout
    kind = "an official MoCo checkpoint" if moco else "a torch state dict"
    assert meta.source == ("moco" if moco else "torchvision")
    assert meta.found == (f"{kind}: resnet18 backbone ({len(expected)} tensors){where}; ignored queue, "
                          f"{prefix}fc.* (2)")


def test_official_moco_says_in_one_line_what_it_found_and_ignored(tmp_path):
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    expected = official_moco(path, "resnet50")
    _, meta = read_backbone_state(path)
    key_encoder = len(expected) + 4  # the key encoder's backbone and its MLP head (2 layers, weight and bias)
    assert meta.summary() == (
        f"{path}: an official MoCo checkpoint: resnet50 backbone ({len(expected)} tensors) under module.encoder_q.* in "
        f"'state_dict'; ignored module.encoder_k.* ({key_encoder}), module.queue, module.queue_ptr, "
        "module.encoder_q.fc.* (4); no SHA-256 digest (a file from elsewhere, read as data): not verified")


def test_a_safetensors_file_from_elsewhere_loads_with_a_note(tmp_path):
    net = torchvision.models.resnet34(weights=None)
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    safetensors.torch.save_file({f"model.{k}": v.contiguous() for k, v in net.state_dict().items()},
                                tmp_path / "r34.safetensors")
    state, meta = read_backbone_state(tmp_path / "r34.safetensors")
    assert_same(state, expected)
    assert (meta.source, meta.arch, meta.config) == ("safetensors", "resnet34", None)
    assert meta.summary() == (f"{tmp_path / 'r34.safetensors'}: a safetensors file: resnet34 backbone ({len(expected)} "
                              "tensors) under model.*; ignored model.fc.* (2); no SHA-256 digest (a file from "
                              "elsewhere, read as data): not verified")


def test_keys_under_two_prefixes_side_by_side_are_an_error(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({**{f"backbone.{k}": v for k, v in state.items()}, **{f"model.{k}": v for k, v in state.items()}},
               tmp_path / "two.pth")
    with pytest.raises(WeightsError, match="keys under both backbone., model.: cannot tell which holds the backbone"):
        read_backbone_state(tmp_path / "two.pth")


TINY_RUN = ["optim.batch_size=32", "moco.queue_size=64"]
CONVNEXT = ["model.arch=timm/convnext_atto", "model.arch_kwargs={patch_size: 1, depths: [1, 1, 1, 1]}",
            "model.bn_splits=1", "moco.shuffle_bn=false"]


@pytest.mark.parametrize(("settings", "expected_arch"), [
    (VIT, Architecture("timm/vit_tiny_patch16_224", False, VIT_KWARGS)),
    (CONVNEXT, Architecture("timm/convnext_atto", False, CONVNEXT_KWARGS)),
])
def test_any_arch_reads_back_with_the_architecture_its_config_names(tmp_path, settings, expected_arch):
    cfg = load_config(None, settings + TINY_RUN)
    expected = our_checkpoint(tmp_path / "last.pth", cfg)
    state, meta = read_backbone_state(tmp_path / "last.pth")
    assert meta.architecture == expected_arch and meta.config == to_dict(cfg)
    assert meta.found.startswith(f"our training checkpoint: {expected_arch} backbone ({len(expected)} tensors)")
    assert_same(state, expected)
    export_backbone(tmp_path / "last.pth", "safetensors", tmp_path / "backbone.safetensors")
    exported, meta = read_backbone_state(tmp_path / "backbone.safetensors")
    assert meta.architecture == expected_arch
    assert_same(exported, expected)
    backbone, _ = meta.architecture.build()  # what the evaluators and init_from build: every tensor loads
    assert not load_backbone_weights(backbone, exported).missing


def test_a_state_that_is_not_the_backbone_its_config_names_is_an_error(tmp_path):
    cfg = load_config(None, VIT + TINY_RUN)
    our_checkpoint(tmp_path / "last.pth", cfg)
    saved = torch.load(tmp_path / "last.pth")
    saved["config"]["model"]["arch_kwargs"]["depth"] = 3  # the config says three blocks, the state holds two
    torch.save(saved, tmp_path / "edited.pth")
    with pytest.raises(WeightsError, match=r"edited.pth: does not hold the timm/vit_tiny_patch16_224 \{.*'depth': 3"
                                           r".*\} backbone its config names: 12 missing \(blocks.2.norm1.weight, "):
        read_backbone_state(tmp_path / "edited.pth", verify=False)
    saved["config"]["model"]["arch"] = "timm/no_such_model"
    torch.save(saved, tmp_path / "edited.pth")
    with pytest.raises(WeightsError, match="edited.pth: its config names model.arch timm/no_such_model .*, which "
                                           "cannot be built here"):
        read_backbone_state(tmp_path / "edited.pth", verify=False)
