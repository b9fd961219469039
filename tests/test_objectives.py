"""The objective registry: an objective registered from outside the package is configured, built, trained, priced and
reported from its declarations alone; the declarations decide what methods it takes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from mochi_hvs.collapse import CollapseSignal
from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, ObjectiveConfig, load_config, to_dict, views_per_image
from mochi_hvs.objectives.base import Objective, Step, Wrap
from mochi_hvs.objectives.registry import OBJECTIVES, Forwards, Needs, register
from mochi_hvs.pretrain import report
from mochi_hvs.step import StepOutput
from mochi_hvs.train import Trainer


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
    with pytest.raises(ConfigError, match=r"'hvs.enabled' needs objective=contrastive \(objective=supervised takes "
                                          "no methods\\)"):
        load_config(None, ["objective=supervised", "hvs.enabled=true"])


def test_an_unknown_objective_is_refused_naming_the_registered_ones(toy):
    assert {"contrastive", "supervised", "toy"} <= set(OBJECTIVES)
    with pytest.raises(ConfigError, match=f"'objective' must be one of {', '.join(OBJECTIVES)}; got 'nope'"):
        load_config(None, ["objective=nope"])
