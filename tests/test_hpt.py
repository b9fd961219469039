import json

import numpy as np
import pytest
import torch

from mochi_hvs.config import ConfigError, load_config, stage_configs
from mochi_hvs.data.datasets import DatasetError, load_images
from mochi_hvs.errors import Interrupted
from mochi_hvs.train import Trainer
from mochi_hvs.weights.checkpoint import resolve_resume


def is_batchnorm_key(name: str, backbone: torch.nn.Module) -> bool:
    module = backbone.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def test_bn_only_training_changes_batchnorm_and_head_but_no_other_backbone_weight(tiny_overrides):
    trainer = Trainer(load_config(None, tiny_overrides + ["model.train_bn_only=true", "optim.epochs=1"]))
    backbone = trainer.model.encoder_q.backbone
    before = {k: v.clone() for k, v in trainer.model.encoder_q.state_dict().items()}
    trainer.train()
    after = trainer.model.encoder_q.state_dict()
    frozen = [k for k in before if k.startswith("backbone.") and not is_batchnorm_key(k[9:], backbone)]
    batchnorm = [k for k in before if k.startswith("backbone.") and is_batchnorm_key(k[9:], backbone)]
    assert frozen and batchnorm
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"{key} moved"
    for kind in ("weight", "bias", "running_mean", "running_var"):
        assert any(not torch.equal(before[k], after[k]) for k in batchnorm if k.endswith(kind)), kind
    assert not torch.equal(before["head.0.weight"], after["head.0.weight"])
    trained = {id(p) for group in trainer.parts.optimizer.param_groups for p in group["params"]}
    assert all(id(p) not in trained for n, p in trainer.model.encoder_q.named_parameters() if n in frozen)


def test_a_run_measured_in_steps_ends_mid_epoch_and_resumes_exactly(quick_overrides, tmp_path):
    over = quick_overrides + ["optim.steps=7", "checkpoint_every=0"]  # 4 steps per epoch
    straight = Trainer(load_config(None, over + ["name=straight"]))
    straight.train()
    assert (straight.position.global_step, straight.parts.total_steps, straight.parts.num_epochs) == (7, 7, 2)
    assert straight.parts.scheduler.state_dict()["last_epoch"] == 7
    cfg = load_config(None, over + ["name=split"])
    interrupted = Trainer(cfg)
    real_step = interrupted.train_step

    def stop_at_six(batch):
        out = real_step(batch)
        if interrupted.position.global_step == 5:  # this step is the 6th
            interrupted.request_stop()
        return out

    interrupted.train_step = stop_at_six
    with pytest.raises(Interrupted):
        interrupted.train()
    resumed = Trainer(cfg, resume=resolve_resume("auto", cfg.run_dir))
    assert (resumed.position.epoch, resumed.position.batch_in_epoch) == (1, 2)
    resumed.train()
    assert resumed.position.global_step == 7
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_stage_configs_chain_folders_and_initialisation(tmp_path):
    recipe = tmp_path / "hpt.yaml"
    recipe.write_text(
        "name: chain\noutput_dir: " + str(tmp_path / "runs") + "\n"
        "stages:\n"
        "  - {name: source, optim: {steps: 20}}\n"
        "  - {name: target, data: {name: mnist5k}, model: {train_bn_only: true}, optim: {steps: 5, lr: 0.01}}\n")
    source, target = stage_configs(load_config(recipe))
    assert source.run_dir == tmp_path / "runs" / "chain" / "source"
    assert source.model.init_from is None and source.optim.steps == 20
    assert target.model.init_from == str(source.run_dir / "last.pth")
    assert (target.data.name, target.model.train_bn_only, target.optim.lr) == ("mnist5k", True, 0.01)
    assert target.optim.batch_size == source.optim.batch_size  # everything else comes from the run's config


@pytest.mark.parametrize(
    ("stages", "message"),
    [("  - {optim: {lrr: 0.1}}\n", r"stages\[0\]: unknown key 'optim.lrr'"),
     ("  - {name: a}\n  - {name: b, optim: {steps: 0}}\n", r"stages\[1\]: 'optim.steps'"),
     ("  - {name: a}\n  - {name: a}\n", "distinct names"),
     ("  - 3\n", r"'stages\[0\]' must be a mapping")],
)
def test_stage_errors_name_the_stage_and_the_key(tmp_path, stages, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n" + stages)
    with pytest.raises(ConfigError, match=message):
        load_config(recipe)


def test_mnist5k_is_a_fixed_stratified_split_of_real_digits():
    train, test = load_images("mnist5k", None, "train"), load_images("mnist5k", None, "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(test.labels).tolist() == [100] * 10
    assert train.array.shape[1:] == (28, 28, 1) and train.array.dtype == np.uint8
    # Disjoint: no test image appears in the training split.
    train_rows = {row.tobytes() for row in train.array}
    assert not any(row.tobytes() in train_rows for row in test.array)
    assert np.array_equal(load_images("mnist5k", None, "test").labels, test.labels)
    # Digits: the mean image is bright in the centre and dark at the border, unlike noise.
    mean = train.array[..., 0].mean(axis=0)
    assert mean[10:18, 10:18].mean() > 5 * mean[:3].mean()


def test_mnist5k_missing_file_says_what_to_install_or_set(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_images("mnist5k", str(tmp_path), "train")


# ------------------------------------------------------------------------------------------- init_from

def assert_backbone_equals(backbone, expected):
    state = backbone.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("fmt", ["ours", "torchvision", "moco"])
def test_init_from_loads_only_the_backbone_from_each_format(tiny_overrides, tmp_path, fmt):
    from weight_files import official_moco, our_checkpoint, torchvision_state

    from mochi_hvs.weights.checkpoint import save_checkpoint

    path = tmp_path / f"weights_{fmt}.pth"
    arch = "resnet18"
    if fmt == "ours":
        source_cfg = load_config(None, ["moco.queue_size=256", "optim.batch_size=32", "model.bn_splits=4"])
        expected = our_checkpoint(path, source_cfg)
        saved = torch.load(path)
        saved["model"]["encoder_q.head.0.weight"] += 1.0  # a head that training moved away from its init
        save_checkpoint(saved, path)
    elif fmt == "torchvision":
        expected = torchvision_state(path, arch)
    else:
        expected = official_moco(path, arch)
    # Files from elsewhere carry no digest: they load all the same (ours is verified).
    trainer = Trainer(load_config(None, tiny_overrides + [f"model.init_from={path}"]))
    assert_backbone_equals(trainer.model.encoder_q.backbone, expected)
    assert_backbone_equals(trainer.model.encoder_k.backbone, expected)  # the momentum encoder starts as a copy
    assert trainer.parts.init_report.loaded == len(expected) and not trainer.parts.init_report.missing
    assert int(trainer.model.queue.pointer) == 0 and not trainer.parts.optimizer.state  # queue and optimiser fresh
    if fmt == "ours":
        source_head = torch.load(path)["model"]["encoder_q.head.0.weight"]
        assert not torch.equal(trainer.model.encoder_q.head[0].weight.detach(), source_head)  # head re-initialised
    # The random-init baseline of such a run is its starting point, the loaded backbone.
    assert all(torch.equal(trainer.parts.initial_backbone[k], v) for k, v in expected.items())


def test_init_from_with_the_wrong_architecture_or_no_match_is_an_error(tiny_overrides, tmp_path):
    from weight_files import torchvision_state

    from mochi_hvs.weights.errors import WeightsError

    path = tmp_path / "r34.pth"
    torchvision_state(path, "resnet34")
    with pytest.raises(WeightsError, match="resnet34 backbone .* builds resnet18"):
        Trainer(load_config(None, tiny_overrides + [f"model.init_from={path}"]), verify=False)
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="r34.pth: not a ResNet backbone state .* keys like something.else"):
        Trainer(load_config(None, tiny_overrides + [f"model.init_from={path}"]))


def test_init_from_takes_a_vit_checkpoint_and_refuses_other_arch_kwargs(tiny_overrides, tmp_path):
    from test_backbones import VIT
    from weight_files import our_checkpoint

    from mochi_hvs.weights.errors import WeightsError

    path = tmp_path / "vit.pth"
    expected = our_checkpoint(path, load_config(None, VIT + ["optim.batch_size=32", "moco.queue_size=64"]))
    trainer = Trainer(load_config(None, tiny_overrides + VIT + [f"model.init_from={path}"]))
    assert_backbone_equals(trainer.model.encoder_q.backbone, expected)
    assert trainer.parts.init_report.loaded == len(expected) and not trainer.parts.init_report.missing
    trainer.close()
    wider = [o.replace("embed_dim: 64", "embed_dim: 32") for o in VIT]
    with pytest.raises(WeightsError, match=r"holds a timm/vit_tiny_patch16_224 \{.*'embed_dim': 64.*\} backbone but "
                                           r"the run builds timm/vit_tiny_patch16_224 \{.*'embed_dim': 32"):
        Trainer(load_config(None, tiny_overrides + wider + [f"model.init_from={path}"]))


def staged_recipe(tmp_path, tiny_overrides):
    recipe = tmp_path / "staged.yaml"
    recipe.write_text(
        "name: staged\n"
        "stages:\n"
        "  - {name: source, optim: {steps: 2}}\n"
        "  - {name: target, data: {name: mnist5k, train_subset: 128}, model: {train_bn_only: true},\n"
        "     optim: {steps: 4, lr: 0.02}}\n")
    return load_config(recipe, [o for o in tiny_overrides if not o.startswith(("name=", "optim.epochs"))]
                       + ["eval.knn_baseline=false", "eval.knn_pixels=false"])


def test_staged_run_chains_stages_and_resumes_mid_stage(tiny_overrides, tmp_path):
    from mochi_hvs import pretrain

    cfg = staged_recipe(tmp_path, tiny_overrides)
    source, target = stage_configs(cfg)
    results = pretrain.run(cfg, None)
    assert [name for name, _ in results] == ["source", "target"]
    assert results[1][1]["init_from"] == str(source.run_dir / "last.pth") and results[1][1]["steps"] == 4
    straight = torch.load(target.run_dir / "last.pth")["model"]
    source_backbone = {k: v for k, v in torch.load(source.run_dir / "last.pth")["model"].items()
                       if k.startswith("encoder_q.backbone.") and "bn" not in k and "downsample.1" not in k}
    for key, value in source_backbone.items():  # BN-only target stage: every other weight is the source's
        assert torch.equal(straight[key], value), key

    # Interrupt the target stage after 2 steps, then --resume auto: the source stage is skipped (finished),
    # the target stage continues from its checkpoint and ends where the straight run ended.
    (target.run_dir / "summary.json").unlink()
    (target.run_dir / "last.pth").unlink()
    real_init = Trainer.__init__

    def init_then_stop_after_two(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real_step = self.train_step

        def step(batch):
            out = real_step(batch)
            if self.position.global_step == 1:
                self.request_stop()
            return out

        self.train_step = step

    Trainer.__init__ = init_then_stop_after_two
    try:
        with pytest.raises(Interrupted):
            pretrain.run(cfg, "auto")
    finally:
        Trainer.__init__ = real_init
    assert torch.load(target.run_dir / "last.pth")["global_step"] == 2
    resumed = pretrain.run(cfg, "auto")
    assert resumed[0][1] == results[0][1]  # read back from the finished source stage, not retrained
    final = torch.load(target.run_dir / "last.pth")["model"]
    for key, value in straight.items():
        assert torch.equal(final[key], value), key


def test_a_stage_can_name_a_recipe_relative_to_the_staged_recipe(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "target.yaml").write_text("name: from_file\ndata: {name: mnist5k}\noptim: {steps: 7}\n")
    staged = tmp_path / "recipes" / "staged.yaml"
    staged.write_text("name: chain\nstages:\n  - {name: base, optim: {steps: 3}}\n"
                      "  - {name: target, base: target.yaml, optim: {lr: 0.01}}\n")
    base, target = stage_configs(load_config(staged))
    assert (target.name, target.data.name, target.optim.steps, target.optim.lr) == ("target", "mnist5k", 7, 0.01)
    assert base.data.name == "fashion_mnist" and target.model.init_from.endswith("chain/base/last.pth")
    shipped = stage_configs(load_config("configs/hpt/fmnist_to_mnist.yaml"))
    assert [(s.name, s.data.name) for s in shipped] == [("base", "fashion_mnist"), ("target", "mnist5k")]


def test_an_interrupted_and_resumed_hpt_run_reports_its_init_from_backbone_as_the_baseline(quick_overrides, tmp_path):
    from weight_files import torchvision_state

    path = tmp_path / "source.pth"
    torch.manual_seed(1)  # a starting point unlike the run's own initialisation (seed 0)
    start = torchvision_state(path)
    over = quick_overrides + [f"model.init_from={path}", "optim.steps=2"]
    straight = Trainer(load_config(None, over + ["name=straight"]), verify=False).fit()  # a file from elsewhere
    cfg = load_config(None, over + ["name=split"])
    interrupted = Trainer(cfg, verify=False)
    real_step = interrupted.train_step

    def stop_after_one(batch):
        out = real_step(batch)
        interrupted.request_stop()
        return out

    interrupted.train_step = stop_after_one
    with pytest.raises(Interrupted):
        interrupted.fit()
    resumed = Trainer(cfg, resume=resolve_resume("auto", cfg.run_dir), verify=False)
    assert resumed.position.global_step == 1
    assert all(torch.equal(resumed.parts.initial_backbone[k], v) for k, v in start.items())
    summary = resumed.fit()
    assert summary["init_knn_top1"] == straight["init_knn_top1"]
    assert json.loads((cfg.run_dir / "summary.json").read_text())["init_knn_top1"] == straight["init_knn_top1"]
