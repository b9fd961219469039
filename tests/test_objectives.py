"""The objective registry: an objective registered from outside the package is configured, built, trained, priced and
reported from its declarations alone; the declarations decide what methods it takes and whether the model has a
momentum encoder."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from test_checkpoint import assert_resume_is_exact
from weight_files import our_checkpoint

from mochi_hvs.collapse import CollapseSignal
from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, ObjectiveConfig, load_config, to_dict, views_per_image
from mochi_hvs.objectives.base import Objective, Step, Wrap
from mochi_hvs.objectives.registry import OBJECTIVES, Forwards, Needs, register
from mochi_hvs.pretrain import report
from mochi_hvs.step import StepOutput
from mochi_hvs.train import Trainer
from mochi_hvs.weights.errors import ExportError
from mochi_hvs.weights.export import export_backbone, torchvision_builds
from mochi_hvs.weights.loader import read_backbone_state


@dataclass
class ToyConfig(ObjectiveConfig):
    weight: float = 1.0

    def validate(self, cfg, source: str) -> None:
        self.check(self.weight > 0, source, "toy.weight", f"must be > 0; got {self.weight}")


class ToyStep:
    """The predictor's output of view 0 regresses the momentum encoder's embedding of view 2."""

    def __init__(self, model, encoder, weight: float) -> None:
        self.model, self.encoder, self.weight = model, encoder, weight

    def __call__(self, views, rng, labels=None, boxes=None, epoch=0, step=0, flips=None, **_) -> StepOutput:
        online = self.encoder(views[:, 0])
        target = self.model.key(views[:, 2], rng("shuffle")).embedding
        loss = self.weight * (1 - F.cosine_similarity(self.model.predictor(online.projection), target).mean())
        return StepOutput(loss, None, metrics={"loss": loss.detach(), "proxy_top1": torch.tensor(0.0)},
                          signal=CollapseSignal(online.embedding.detach(), loss.detach()))


class Toy(Objective):
    name = "toy"
    label = "toy-pretrained"
    needs = Needs(views=3, queue=False, predictor=True, methods=True)
    section = ToyConfig

    def forwards(self) -> Forwards:
        return Forwards(trained=1, target=1)

    def build_step(self, model, methods, wrap: Wrap, num_classes: int) -> Step:
        return ToyStep(model, wrap(model.encoder_q), self.cfg.toy.weight)


@pytest.fixture
def toy():
    register(Toy)
    yield Toy
    del OBJECTIVES[Toy.name]


def test_an_objective_registered_outside_the_package_is_configured_built_trained_and_reported(toy, quick_overrides):
    cfg = load_config(None, quick_overrides + ["objective=toy", "toy.weight=2", "optim.steps=3",
                                               "moco.queue_size=7"])  # no queue: its size is not checked
    assert cfg.toy.weight == 2.0 and to_dict(cfg)["toy"] == {"weight": 2.0}
    assert load_config(defaults=to_dict(cfg)) == cfg  # as evaluation rebuilds a checkpoint's stored config
    assert views_per_image(cfg) == 3
    assert units_per_image(cfg, selecting=False) == 3 + 1
    trainer = Trainer(cfg)
    summary = trainer.fit()
    model = trainer.model
    assert model.queue is None and "queue.features" not in model.state_dict()
    assert any(p is q for p in model.predictor.parameters() for group in trainer.parts.optimizer.param_groups
               for q in group["params"])  # the predictor is trained
    lines = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(line.get("train/loss", 0) > 0 for line in lines) and "collapse" in summary
    assert report(summary).splitlines()[2].startswith("toy-pretrained")
    with pytest.raises(ConfigError, match="'toy.weight' must be > 0"):
        load_config(None, ["objective=toy", "toy.weight=0"])


def test_a_method_that_reads_the_queue_refuses_an_objective_without_one_in_one_line(toy):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["objective=toy", "mochi.enabled=true"])
    assert str(err.value) == ("--set: 'mochi.enabled' needs an objective with a memory queue "
                              "(objective=contrastive); objective=toy has none")
    load_config(None, ["objective=toy", "hvs.enabled=true"])  # a method that reads no queue: taken


def test_methods_need_an_objective_that_takes_them():
    with pytest.raises(ConfigError, match=r"'fast_moco.enabled' needs objective=contrastive \(objective=supervised "
                                          "takes no methods\\)"):
        load_config(None, ["objective=supervised", "fast_moco.enabled=true"])


def test_an_unknown_objective_is_refused_naming_the_registered_ones(toy):
    assert {"contrastive", "supervised", "toy"} <= set(OBJECTIVES)
    with pytest.raises(ConfigError, match=f"'objective' must be one of {', '.join(OBJECTIVES)}; got 'nope'"):
        load_config(None, ["objective=nope"])


class SoloStep:
    """One network, no momentum encoder: the embeddings of views 0 and 1 agree (cosine)."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def __call__(self, views, rng, labels=None, boxes=None, epoch=0, step=0, flips=None, **_) -> StepOutput:
        a, b = self.encoder(views[:, 0]), self.encoder(views[:, 1])
        loss = 1 - F.cosine_similarity(a.embedding, b.embedding).mean()
        return StepOutput(loss, None, metrics={"loss": loss.detach(), "proxy_top1": torch.tensor(0.0)},
                          signal=CollapseSignal(a.embedding.detach(), loss.detach()))


class Solo(Objective):
    """One trained network: no momentum encoder, no queue."""

    def build_step(self, model, methods, wrap: Wrap, num_classes: int) -> Step:
        return SoloStep(wrap(model.encoder_q))

    def forwards(self) -> Forwards:
        return Forwards(trained=2, target=0)

    name, label = "solo", "solo-pretrained"
    needs = Needs(views=2, momentum_encoder=False, queue=False)


@pytest.fixture
def solo():
    register(Solo)
    yield Solo
    del OBJECTIVES[Solo.name]


def test_an_objective_without_a_momentum_encoder_trains_resumes_exports_and_initialises(solo, quick_overrides,
                                                                                        tmp_path):
    cfg = load_config(None, quick_overrides + ["objective=solo", "optim.steps=2", "log_every=1"])
    assert units_per_image(cfg, selecting=False) == 2 * 3  # two trained forwards (+ backward), no target
    trainer = Trainer(cfg)
    assert trainer.parts.objective.target_momentum(0, 2) is None
    summary = trainer.fit()
    model = trainer.model
    assert model.encoder_k is None and not any(k.startswith("encoder_k.") for k in model.state_dict())
    lines = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [line for line in lines if "train/loss" in line]
    assert len(trained) == 2 and not any("train/momentum" in line for line in trained)  # no EMA update
    assert "knn_top1" in json.dumps(summary) and report(summary).splitlines()[2].startswith("solo-pretrained")
    assert_exports_and_initialises(trainer, quick_overrides + ["objective=solo"], tmp_path)
    assert_resume_is_exact(quick_overrides + ["objective=solo", "output_dir=" + str(tmp_path / "resume")])


def assert_exports_and_initialises(trainer: Trainer, overrides: list[str], tmp_path) -> None:
    """The trained run's checkpoint exports its query backbone (torchvision, where torchvision builds it, and
    safetensors files read back by the one loader), and a second stage with model.init_from starts from exactly that
    backbone."""
    backbone = trainer.model.backbone.state_dict()
    checkpoint = trainer.state.checkpoint_path
    if torchvision_builds(trainer.cfg.model.arch):
        _, line = export_backbone(checkpoint, "torchvision", tmp_path / "r18.pth")
        exported = torch.load(tmp_path / "r18.pth")
        assert all(torch.equal(exported[k], v) for k, v in backbone.items()), line
    else:  # BURN's binary network: a torchvision ResNet would load its latent weights as a float network
        with pytest.raises(ExportError, match=f"torchvision does not build {trainer.cfg.model.arch}"):
            export_backbone(checkpoint, "torchvision", tmp_path / "r18.pth")
    _, line = export_backbone(checkpoint, "safetensors", tmp_path / "r18.safetensors")
    read, _ = read_backbone_state(tmp_path / "r18.safetensors")
    assert read.keys() == backbone.keys() and all(torch.equal(read[k], v) for k, v in backbone.items()), line
    staged = Trainer(load_config(None, overrides + ["name=stage2", f"model.init_from={checkpoint}"]))
    assert all(torch.equal(staged.model.backbone.state_dict()[k], v) for k, v in backbone.items())
    staged.close()


SHIPPED = sorted(set(OBJECTIVES))  # the catalogue's objectives (the test-registered ones come and go in fixtures)


def required_settings(name: str, base: list[str], tmp_path, checkpoint) -> list[str]:
    """What an objective cannot run without: distill's teacher (a checkpoint of the ResNet-18 the base settings
    build), BURN's binary network and its pretrained teacher."""
    if name == "burn":
        return ["model.arch=binary/resnet18", f"burn.teacher={checkpoint}"]
    if name != "distill":
        return []
    teacher = tmp_path / "teacher.pth"
    our_checkpoint(teacher, load_config(None, base))
    return [f"distill.teachers=[{teacher}]"]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_objective_trains_reports_exports_and_initialises(name, quick_overrides, tmp_path, checkpoint):
    # Whatever the objective, the run ends with the kNN report under its label, and its checkpoint feeds export and
    # the next stage (HPT's init_from) like MoCo-v2's. BURN's binary network needs a pretrained teacher.
    overrides = quick_overrides + [f"objective={name}", "model.head=mlp_bn", "optim.steps=2", "log_every=1"]
    overrides += required_settings(name, quick_overrides, tmp_path, checkpoint)
    trainer = Trainer(load_config(None, overrides))
    summary = trainer.fit()
    assert "knn_top1" in json.dumps(summary)
    assert report(summary).splitlines()[2].startswith(OBJECTIVES[name].label)
    assert_exports_and_initialises(trainer, overrides, tmp_path)
