"""Backbones beyond the project's ResNets: timm and torchvision models by name, fitted to 28 px grey images; their
feature width, dense map where they have one, split BatchNorm where they have BatchNorm; the config's refusals; a
ViT trained with AdamW and a frozen patch projection, resumed exactly."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.data.datasets import load_fashion_mnist
from mochi_hvs.data.loader import three_channels
from mochi_hvs.models.backbone import build_backbone, feature_map, pooled_features
from mochi_hvs.models.backbone_facts import backbone_facts
from mochi_hvs.models.moco import MoCo
from mochi_hvs.models.split_bn import SplitBatchNormAct2d, convert_split_bn
from mochi_hvs.train import Trainer

VIT_KWARGS = {"img_size": 28, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}
VIT = ["model.arch=timm/vit_tiny_patch16_224", "model.arch_kwargs={img_size: 28, patch_size: 4, embed_dim: 64, "
       "depth: 2, num_heads: 2}", "model.bn_splits=1", "moco.shuffle_bn=false"]
CONVNEXT_KWARGS = {"patch_size": 1, "depths": [1, 1, 1, 1]}  # the stem at full resolution: 28 -> 14 -> 7 -> 3


@pytest.fixture(scope="module")
def grey_images() -> torch.Tensor:
    """16 Fashion-MNIST test images at 28 px, grey repeated to three channels and scaled as the data path does."""
    images = load_fashion_mnist(None, train=False).array[:16]
    return three_channels(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)


# ------------------------------------------------------------------------------------------------ build and encode

@pytest.mark.parametrize(("arch", "kwargs", "width", "side"), [
    ("timm/vit_tiny_patch16_224", VIT_KWARGS, 64, None),  # tokens: no map
    ("timm/convnext_atto", CONVNEXT_KWARGS, 320, 3),  # convnext_atto's last stage is 320 wide
])
def test_a_tiny_vit_and_convnext_encode_28px_grey_images_at_their_reported_width(grey_images, arch, kwargs, width,
                                                                                 side):
    torch.manual_seed(0)
    net, reported = build_backbone(arch, arch_kwargs=kwargs)
    net.eval()
    with torch.no_grad():
        features = net(grey_images)
    assert reported == width and features.shape == (16, width)
    assert features.std(dim=0).min() > 0  # the images are told apart
    facts = backbone_facts(arch, False, kwargs, 28)  # what the config reads, from a meta-device copy
    assert (facts.map_side, facts.batchnorm, facts.patch_embed) == (side, False, "vit" in arch)
    # timm's own parameter names, no classifier: timm builds the same network from the state
    fresh = timm.create_model(arch.removeprefix("timm/"), num_classes=0, **kwargs)
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh.eval()(grey_images), features)


def test_the_dense_map_is_the_cnns_last_map_and_its_pooling_is_the_forward(grey_images):
    net, _ = build_backbone("timm/convnext_atto", arch_kwargs=CONVNEXT_KWARGS)
    net.eval()
    with torch.no_grad():
        spatial = feature_map(net, grey_images)
        assert spatial.shape == (16, 320, 3, 3)
        assert torch.equal(pooled_features(net, spatial), net(grey_images))
    vit, _ = build_backbone("timm/vit_tiny_patch16_224", arch_kwargs=VIT_KWARGS)
    with pytest.raises(ValueError, match="VisionTransformer backbone has no spatial feature map"):
        feature_map(vit, grey_images)


def test_the_encoder_output_carries_a_dense_map_only_for_a_backbone_with_one(grey_images):
    cnn = MoCo("timm/mobilenetv3_small_050", feature_dim=16, queue_size=None)
    cnn.add_dense_heads(8)  # on the last map's 288 channels, not the 1024 pooled (a pre-logits layer after pooling)
    out = cnn.encoder_q(grey_images, dense=True)
    assert out.dense.shape == (16, 8, 1, 1) and out.pooled.shape == (16, 1024) and out.embedding.shape == (16, 16)
    vit = MoCo("timm/vit_tiny_patch16_224", arch_kwargs=VIT_KWARGS, feature_dim=16, queue_size=None)
    out = vit.encoder_q(grey_images)
    assert out.dense is None and out.pooled.shape == (16, 64) and vit.feature_width == 64


def test_a_torchvision_model_loses_its_classifier_and_returns_what_the_classifier_read(grey_images):
    torch.manual_seed(0)
    net, width = build_backbone("torchvision/mobilenet_v3_small")
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    read = []
    reference.classifier[-1].register_forward_hook(lambda module, args, out: read.append(args[0]))
    net.eval(), reference.eval()
    with torch.no_grad():
        reference(grey_images)
        assert width == 1024 and torch.equal(net(grey_images), read[0])
    assert not any(isinstance(m, nn.Dropout) for m in net.modules())  # the classifier's dropout went with it


# ----------------------------------------------------------------------------------------- split BatchNorm in timm

def test_split_batchnorm_keeps_the_activation_of_timms_batchnorm_act_and_normalises_per_group(grey_images):
    torch.manual_seed(0)
    net, _ = build_backbone("timm/mobilenetv3_small_050")
    fused = sum(type(m).__name__ == "BatchNormAct2d" for m in net.modules())
    one_group = convert_split_bn(copy.deepcopy(net), 1)
    assert fused > 0 and sum(isinstance(m, SplitBatchNormAct2d) for m in one_group.modules()) == fused
    assert one_group.state_dict().keys() == net.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(one_group(grey_images), copy.deepcopy(net)(grey_images))  # training mode, act kept
        # two groups: sample n in group n % 2, each normalised as a forward of its group alone
        split = convert_split_bn(copy.deepcopy(net), 2)(grey_images)
        for group in (0, 1):
            alone = copy.deepcopy(net)(grey_images[group::2])
            torch.testing.assert_close(split[group::2], alone, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize(("overrides", "message"), [
    (["model.arch=timm/convnext_tinyy"], r"'model.arch' must be resnet18, resnet34, resnet50, timm/<name> .* or "
                                         r"torchvision/<name> .*; got 'timm/convnext_tinyy' \(did you mean "
                                         r"'timm/convnext_tiny'\?\)"),
    (["model.arch=convnext_tiny"], r"got 'convnext_tiny' \(did you mean 'timm/convnext_tiny'\?\)"),
    (["model.arch=torchvision/efficientnet_b9"], r"\(did you mean 'torchvision/efficientnet_b\d'\?\)"),
    (["model.arch=keras/resnet18"], r"timm/<name> .*; got 'keras/resnet18' \(did you mean 'timm/resnet18'\?\)"),
    (["model.arch=timm/vit_tiny_patch16_224", "model.bn_splits=1", "moco.shuffle_bn=false"],
     r"'model.arch' timm/vit_tiny_patch16_224 cannot encode data.image_size=28 px images \(AssertionError: Input "
     r"height \(28\) doesn't match model \(224\).\); fit it with model.arch_kwargs, e.g. \{img_size: 28, patch_size: "
     r"4\} for a ViT"),
    ([*VIT, "model.arch_kwargs={img_size: 28, patch_sise: 4}"],
     r"'model.arch_kwargs' cannot build model.arch=timm/vit_tiny_patch16_224 with model.arch_kwargs=\{'img_size': "
     r"28, 'patch_sise': 4\}: TypeError: .*unexpected keyword argument 'patch_sise'"),
    (["model.arch=timm/convnext_atto", "model.small_stem=true"],
     r"'model.small_stem' applies to resnet18\|resnet34\|resnet50; fit model.arch=timm/convnext_atto to small images "
     r"with model.arch_kwargs"),
    (["model.arch_kwargs={img_size: 28}"], r"'model.arch_kwargs' applies to timm/<name> and torchvision/<name> "),
    (["model.frozen_patch_embed=true"], r"'model.frozen_patch_embed' needs a backbone with a patch projection"),
    ([*VIT, "lc.enabled=true"],
     r"'lc.enabled' needs the backbone's last feature map, and model.arch=timm/vit_tiny_patch16_224 has none"),
    ([*VIT, "model.train_bn_only=true"], r"'model.train_bn_only' trains the backbone's BatchNorm layers only, and "
                                         r"model.arch=timm/vit_tiny_patch16_224 has none"),
    (["model.arch=timm/efficientnet_b0", "model.sync_bn=true", "model.bn_splits=1"],
     r"'model.sync_bn' cannot convert the BatchNorm layers of model.arch=timm/efficientnet_b0: they carry their "
     r"activation"),
])
def test_config_errors_name_the_key_the_accepted_forms_and_the_closest_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_split_batchnorm_and_shuffle_bn_are_refused_for_a_layernorm_vit_in_one_line():
    vit = [*VIT[:2]]
    with pytest.raises(ConfigError) as err:
        load_config(None, vit)  # the defaults split BatchNorm into 8 groups
    assert str(err.value) == ("--set: 'model.bn_splits' splits the backbone's BatchNorm into groups, and "
                              "model.arch=timm/vit_tiny_patch16_224 has no BatchNorm layer (it normalises otherwise, "
                              "e.g. LayerNorm); set model.bn_splits=1")
    with pytest.raises(ConfigError) as err:
        load_config(None, [*vit, "model.bn_splits=1"])
    assert str(err.value) == ("--set: 'moco.shuffle_bn' shuffles the keys for BatchNorm, and neither "
                              "model.arch=timm/vit_tiny_patch16_224 nor model.head=mlp has any; set "
                              "moco.shuffle_bn=false (or model.head=mlp_bn)")
    assert load_config(None, [*vit, "model.bn_splits=1", "model.head=mlp_bn"]).moco.shuffle_bn  # the head's BN
    assert load_config(None, [*vit, "model.bn_splits=1", "objective=twist"]).model.bn_splits == 1  # no f_k
    cnn = load_config(None, ["model.arch=timm/convnext_atto", "model.arch_kwargs={patch_size: 1}", "model.bn_splits=1",
                             "moco.shuffle_bn=false", "lc.enabled=true"])
    assert cnn.lc.enabled  # a 3 x 3 map at 28 px
    assert load_config(None, ["model.arch=timm/efficientnet_b0"]).model.bn_splits == 8  # BatchNorm: split as usual


# --------------------------------------------------------------------------------------------------------- training

def test_a_vit_trains_moco_v2_with_adamw_and_a_frozen_patch_projection_and_resumes_exactly(quick_overrides):
    settings = [*quick_overrides, *VIT, "model.head=mlp_bn", "optim.name=adamw", "optim.lr=1e-3",
                "optim.weight_decay=0.1", "model.frozen_patch_embed=true"]
    resumed = assert_resume_is_exact(settings)
    optimizer = resumed.parts.optimizer
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.1
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    model = resumed.model
    patch = model.encoder_q.backbone.patch_embed.proj.weight
    assert id(patch) not in trained and not patch.requires_grad
    initial = Trainer(load_config(None, [*settings, "name=initial"])).model
    assert torch.equal(patch, initial.encoder_q.backbone.patch_embed.proj.weight)
    assert torch.equal(model.encoder_k.backbone.patch_embed.proj.weight, patch)  # the momentum copy stays with it
    block = "backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(model.encoder_q.state_dict()[block], initial.encoder_q.state_dict()[block])
