"""The method seam: hooks a method plugs into, the registry, the views per image, and stored configs."""

import ast
import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint import assert_resume_is_exact

from mochi_hvs import config
from mochi_hvs.config import (
    METHOD_SECTIONS,
    Config,
    ConfigError,
    MethodConfig,
    load_config,
    setting,
    to_dict,
    views_per_image,
)
from mochi_hvs.data.datasets import ImageSet
from mochi_hvs.loss import contrastive_logits, info_nce
from mochi_hvs.methods import METHODS, ExtraLoss, ExtraNegatives, Method, build_methods, register
from mochi_hvs.methods import base as methods_base
from mochi_hvs.models import MoCo
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep
from mochi_hvs.train import Trainer
from mochi_hvs.weights.checkpoint import load_checkpoint


class FixedNegatives(ExtraNegatives):
    def metrics(self, logits, ctx):
        return {"toy/positive": logits[:, 0].mean()}


class Toy(Method):
    """A method using two hooks: a constant synthetic negative per query, and an L2 penalty on the queries."""

    section = "toy"
    adds_negatives = True

    def active(self, epoch, step):
        return step % 2 == 0

    def extra_negatives(self, q, negative_logits, ctx, generator=None):
        self.seen_negatives = ctx.negatives
        return FixedNegatives(logits=q @ torch.ones(q.shape[1], 1) / q.shape[1] ** 0.5)

    def extra_loss(self, q, k, ctx):
        return ExtraLoss(loss=0.5 * (q * k).sum(dim=1).mean(), metrics={"toy/term": torch.tensor(1.0)})


def small_moco():
    torch.manual_seed(0)
    model = MoCo("resnet18", bn_splits=1, feature_dim=16, queue_size=64, shuffle_bn=False)
    model.eval()  # BatchNorm on running statistics: every forward of a view gives the same embedding
    return model


def test_a_method_adds_negatives_and_a_loss_term_through_the_step_hooks():
    model = small_moco()
    toy = Toy(load_config(None, []), model)
    views = torch.randn(4, 2, 3, 28, 28)
    out = ContrastiveStep(model, 0.2, False, [toy])(views, StepRandom(0, 0, 0, torch.device("cpu")), step=0)
    with torch.no_grad():
        q, k = model.encoder_q(views[:, 0]).embedding, model.key(views[:, 1]).embedding
        logits = contrastive_logits(q, k, model.queue.features)
        extra = q @ torch.ones(16, 1) / 4.0
        expected = info_nce(torch.cat([logits, extra], dim=1), 0.2) + 0.5 * (q * k).sum(dim=1).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert toy.seen_negatives is model.queue.features  # the queue, as the step read it
    assert {"toy/term", "toy/positive", "proxy_top1", "loss"} <= set(out.metrics)
    # An inactive method adds nothing: plain MoCo-v2 on the same views.
    off = ContrastiveStep(model, 0.2, False, [toy])(views, StepRandom(0, 1, 0, torch.device("cpu")), step=1)
    plain = ContrastiveStep(model, 0.2, False)(views, StepRandom(0, 1, 0, torch.device("cpu")))
    assert torch.equal(off.loss, plain.loss) and "toy/term" not in off.metrics


def test_the_registry_builds_the_enabled_methods_in_order():
    assert list(METHODS) == ["mochi", "hvs", "fast_moco", "multicrop", "lc", "ssql"]
    model = small_moco()
    cfg = load_config(None, ["hvs.enabled=true", "mochi.enabled=true", "moco.queue_size=4096"])
    assert [m.section for m in build_methods(cfg, model)] == ["mochi", "hvs"]
    assert build_methods(load_config(None, []), model) == []


def test_the_hook_order_is_declared_and_no_registration_order_changes_it(monkeypatch):
    shipped = list(METHODS.values())
    cfg = load_config(None, ["lc.enabled=true", "model.small_stem=true", "hvs.enabled=true", "mochi.enabled=true",
                             "moco.queue_size=4096", "fast_moco.enabled=true", "fast_moco.mode=add"])
    for registration in itertools.permutations(shipped):  # the order modules would be imported in
        monkeypatch.setattr(methods_base, "METHODS", {})
        for cls in registration:
            register(cls)
        assert list(methods_base.METHODS.values()) == shipped
    # registered last in reverse: the step still gets MoCHi's negatives first and LC's term last
    assert [m.section for m in build_methods(cfg, small_moco())] == ["mochi", "hvs", "fast_moco", "lc"]
    clash = type("Clash", (Method,), {"section": "clash", "order": shipped[0].order})
    with pytest.raises(ValueError, match=f"method 'clash' declares order {shipped[0].order}, which method 'mochi' has"):
        register(clash)


def test_views_per_image_follow_the_enabled_methods():
    assert views_per_image(load_config(None, [])) == 2
    assert views_per_image(load_config(None, ["hvs.num_views=5"])) == 2  # HVS off
    assert views_per_image(load_config(None, ["hvs.enabled=true", "hvs.num_views=5"])) == 5
    with pytest.raises(ConfigError, match="'data.num_views' no longer exists: the views per image follow"):
        load_config(None, ["data.num_views=3"])
    with pytest.raises(ConfigError, match="'eval.knn_random_baseline' was renamed 'eval.knn_baseline'"):
        load_config(None, ["eval.knn_random_baseline=false"])


def test_a_checkpoint_written_with_retired_and_renamed_settings_resumes(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides + ["optim.steps=2", "eval.knn_baseline=false"])
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    path = trainer.state.checkpoint_path
    state = load_checkpoint(path)
    state["config"]["data"]["num_views"] = 2  # as stored before views were derived from the methods
    state["config"]["eval"]["knn_random_baseline"] = state["config"]["eval"].pop("knn_baseline")
    from mochi_hvs.weights.checkpoint import save_checkpoint

    del state["sha256"]
    save_checkpoint(state, path)
    resumed = Trainer(load_config(None, tiny_overrides + ["optim.steps=3", "eval.knn_baseline=false"]), resume=path)
    assert resumed.position.global_step == 2
    resumed.train()
    resumed.close()


def synthetic_images(count=64, size=28, classes=4, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(labels=np.arange(count) % classes, classes=[str(c) for c in range(classes)],
                    array=rng.integers(0, 256, (count, size, size, 1), dtype=np.uint8))


def test_a_training_step_needs_no_dataset_on_disk(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "data.root=/nonexistent", "optim.batch_size=16",
                             "moco.queue_size=32", "model.bn_splits=2", "optim.steps=2"])
    trainer = Trainer(cfg, images=synthetic_images())
    before_q = {k: v.clone() for k, v in trainer.model.encoder_q.state_dict().items()}
    before_k = {k: v.clone() for k, v in trainer.model.encoder_k.state_dict().items()}
    batch = next(iter(trainer.parts.batches))
    assert batch.views.shape == (16, 2, 3, 28, 28)
    metrics = trainer.train_step(batch)
    assert torch.isfinite(metrics["loss"]) and int(trainer.model.queue.pointer) == 16
    weight = "backbone.conv1.weight"
    assert not torch.equal(before_q[weight], trainer.model.encoder_q.state_dict()[weight])  # SGD moved f_q
    assert torch.equal(before_k[weight], trainer.model.encoder_k.state_dict()[weight])  # f_k = m f_k + (1-m) f_q_old
    trainer.train_step(batch)
    assert not torch.equal(before_k[weight], trainer.model.encoder_k.state_dict()[weight])  # now f_k follows
    trainer.close()


def test_the_time_estimate_uses_the_pace_after_the_warm_up_steps(monkeypatch):
    from mochi_hvs import tracking

    clock = iter([100.0, 110.0])  # read when timing starts and when it ends: 20 timed steps of 0.5 s
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: next(clock))
    estimate = tracking.TimeEstimate(first_step=40, total_steps=1030)
    lines = [estimate.step_done(step) for step in range(41, 1031)]
    assert [i + 41 for i, line in enumerate(lines) if line] == [40 + 10 + 20]  # once, after 10 untimed + 20 timed
    assert next(line for line in lines if line).startswith("0.50 s per step: about 8.0 min for the 960 steps left")


def test_training_logs_histograms_as_bin_counts_and_prints_its_estimated_time(tiny_overrides, tmp_path, capsys,
                                                                                monkeypatch):
    from mochi_hvs import tracking

    monkeypatch.setattr(tracking, "ESTIMATE_WARMUP_STEPS", 1)
    monkeypatch.setattr(tracking, "ESTIMATE_STEPS", 2)
    cfg = load_config(None, tiny_overrides + ["hvs.enabled=true", "hvs.num_views=3", "optim.epochs=1",
                                              "eval.knn_baseline=false"])
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    out = capsys.readouterr().out
    assert "s per step: about" in out and "for the 5 steps left" in out  # 8 steps: estimated after step 3
    lines = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    histograms = [line["histograms"] for line in lines if "histograms" in line]
    selected = next(h["hvs/iou_selected"] for h in histograms if "hvs/iou_selected" in h)
    assert selected["edges"][0] == 0.0 and selected["edges"][-1] == 1.0
    assert sum(selected["counts"]) == 8 * cfg.optim.batch_size


@dataclass
class SpreadConfig(MethodConfig):
    """A section declared outside the package: a weight, a choice and the views per image its method asks for."""

    weight: float = setting(1.0, "factor on the term")
    reduce: str = setting("mean", "how the query similarities are reduced", ("mean", "max"))
    views: int = setting(2, "views per image")

    def views_per_image(self) -> int:
        return self.views

    def validate(self, cfg, source: str) -> None:
        self.check(self.weight > 0, source, "spread.weight", f"must be > 0; got {self.weight}")


class Spread(Method):
    """Adds weight x the mean (or max) similarity between the batch's queries to the loss."""

    section = "spread"
    config_section = SpreadConfig
    order = 90  # after every shipped method

    def extra_loss(self, q, k, ctx):
        similarity = q @ q.t()
        term = self.cfg.spread.weight * (similarity.max() if self.cfg.spread.reduce == "max" else similarity.mean())
        return ExtraLoss(term, {"spread/term": term.detach()})


@pytest.fixture
def spread():
    register(Spread)
    yield Spread
    del METHODS[Spread.section], METHOD_SECTIONS[Spread.section]


def test_a_method_registered_outside_the_package_has_its_section_read_validated_stored_and_resumed(
        spread, quick_overrides, tmp_path):
    recipe = tmp_path / "spread.yaml"
    recipe.write_text("spread:\n  enabled: true\n  weight: 0.5\n")
    cfg = load_config(recipe, quick_overrides + ["spread.reduce=max", "spread.views=3"])
    values = {"enabled": True, "weight": 0.5, "reduce": "max", "views": 3}
    assert to_dict(cfg)["spread"] == values
    keys = list(to_dict(cfg))
    assert keys.index("lc") < keys.index("spread") < keys.index("optim")  # stored after the shipped ones: hook order
    assert views_per_image(cfg) == 3
    assert [m.section for m in build_methods(cfg, small_moco())] == ["spread"]
    for override, message in [("spread.weight=0", "'spread.weight' must be > 0; got 0.0"),
                              ("spread.reduce=sum", "'spread.reduce' must be one of mean, max; got 'sum'"),
                              ("spread.wieght=1", "unknown key 'spread.wieght' (did you mean 'spread.weight'?)")]:
        with pytest.raises(ConfigError) as err:
            load_config(None, [override])
        assert str(err.value) == f"--set: {message}"
    with pytest.raises(ConfigError, match=r"^--set: 'spread.enabled' needs objective=contrastive \(objective=byol "
                                          r"takes no methods\)$"):
        load_config(None, ["objective=byol", "spread.enabled=true"])

    sets = [f"spread.{key}={str(value).lower()}" for key, value in values.items()]
    resumed = assert_resume_is_exact(quick_overrides + sets)  # the stored section is read back on resume
    stored = load_checkpoint(resumed.state.checkpoint_path)["config"]
    assert stored["spread"] == values
    assert load_config(defaults=stored) == resumed.cfg
    lines = [json.loads(line) for line in (resumed.cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/spread/term" in line for line in lines)
    del stored["spread"]  # a checkpoint written before the method was registered
    assert load_config(defaults=stored).spread == SpreadConfig()


def test_the_config_package_declares_reads_and_checks_no_methods_section():
    assert set(METHOD_SECTIONS) == set(METHODS)
    for name, section in METHOD_SECTIONS.items():
        assert section is METHODS[name].config_section and section.__module__ == METHODS[name].__module__
    assert not set(METHOD_SECTIONS) & {f.name for f in dataclasses.fields(Config)}
    modules = sorted(Path(config.__file__).parent.glob("*.py"))
    assert len(modules) > 5  # the package's modules, not only its __init__
    nodes = [node for path in modules for node in ast.walk(ast.parse(path.read_text()))]
    read = {node.attr for node in nodes if isinstance(node, ast.Attribute)}
    read |= {node.value for node in nodes if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not read & set(METHOD_SECTIONS)  # no cfg.mochi, cfg.hvs... nor a "mochi" key in its code
