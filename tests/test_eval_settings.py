"""One settings dialect for the four evaluators: config sections eval.linear / eval.semisup / eval.detection (and the
eval.knn_* keys), set with --set or a recipe, validated with the config, listed by --help."""

import argparse
import dataclasses
import functools
import re
import typing

import pytest
import torch
from weight_files import our_checkpoint

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.config.evaluators import DetectionSettings, LinearSettings, SelectSettings, SemisupSettings
from mochi_hvs.evaluation import commands
from mochi_hvs.evaluation.cli import prepare


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_recipes_and_overrides_set_evaluator_sections(tmp_path):
    path = write(tmp_path, "eval:\n  linear: {epochs: 50, mode: classic}\n  semisup: {label_fraction: 0.1}\n"
                           "  detection: {train: ['/data/voc:trainval'], norm: frozen}\n")
    cfg = load_config(path, ["eval.linear.lr=0.5", "eval.detection.val=/data/voc:test"])
    assert cfg.eval.linear == LinearSettings(epochs=50, mode="classic", lr=0.5)
    assert cfg.eval.semisup == SemisupSettings(label_fraction=0.1)
    assert cfg.eval.detection == DetectionSettings(train=["/data/voc:trainval"], val="/data/voc:test", norm="frozen")
    assert load_config().eval.linear == LinearSettings()  # the defaults are the dataclasses' own


@pytest.mark.parametrize(("override", "message"), [
    ("eval.linear.lr=0", "'eval.linear.lr' must be > 0; got 0.0"),
    ("eval.linear.mode=fast", "'eval.linear.mode' must be one of lbfgs, classic, sklearn; got 'fast'"),
    ("eval.linear.mode=cached", "'eval.linear.mode' must be one of lbfgs, classic, sklearn; got 'cached' "
                                "(replaced by 'lbfgs')"),
    ("eval.linear.standardize=true", "'eval.linear.standardize' no longer exists: the linear probe on cached "
                                     "features (eval.linear.mode=lbfgs) always standardises them"),
    ("eval.linear.batch_size=0", "'eval.linear.batch_size' must be positive; got 0"),
    ("eval.linear.l2_grid=[]", "'eval.linear.l2_grid' must list positive L2 strengths; got []"),
    ("eval.linear.l2_grid=[0.1,0]", "'eval.linear.l2_grid' must list positive L2 strengths; got [0.1, 0.0]"),
    ("eval.linear.val_fraction=1", "'eval.linear.val_fraction' must be in (0, 1); got 1.0"),
    ("eval.linear.max_iter=0", "'eval.linear.max_iter' must be positive; got 0"),
    ("eval.linear.tolerance=0", "'eval.linear.tolerance' must be > 0; got 0.0"),
    ("eval.linear.momentum=1", "'eval.linear.momentum' must be in [0, 1); got 1.0"),
    ("eval.linear.train_subset=0", "'eval.linear.train_subset' must be null or positive; got 0"),
    ("eval.semisup.schedule=linear", "'eval.semisup.schedule' must be one of step, cosine; got 'linear'"),
    ("eval.semisup.label_fraction=1.5", "'eval.semisup.label_fraction' must be null or in (0, 1]; got 1.5"),
    ("eval.semisup.epochs=0", "'eval.semisup.epochs' must be positive; got 0"),
    ("eval.semisup.random_labels=0", "'eval.semisup.random_labels' must be null or positive; got 0"),
    ("eval.select.budget=0", "'eval.select.budget' must be null or positive; got 0"),
    ("eval.select.pool=-3", "'eval.select.pool' must be null or positive; got -3"),
    ("eval.select.knn_k=0", "'eval.select.knn_k' must be positive; got 0"),
    ("eval.select.reg_lambda=-1", "'eval.select.reg_lambda' must be >= 0; got -1.0"),
    ("eval.select.reg_alpha=0", "'eval.select.reg_alpha' must be > 0; got 0.0"),
    ("eval.select.reg_momentum=1", "'eval.select.reg_momentum' must be in [0, 1); got 1.0"),
    ("eval.select.seed=2147483648", "'eval.select.seed' must be in [0, 2**31) (Faiss's k-means seed); got 2147483648"),
    ("eval.detection.norm=group", "'eval.detection.norm' must be one of sync, frozen; got 'group'"),
    ("eval.detection.trainable_layers=6", "'eval.detection.trainable_layers' must be in [0, 5] (ResNet stages); got 6"),
    ("eval.detection.milestones=[0.9,0.5]", "'eval.detection.milestones' must be fractions of training in (0, 1], "
                                            "increasing; got [0.9, 0.5]"),
    ("eval.linear.epochs=fast", "'eval.linear.epochs' must be int, got 'fast'"),
    ("eval.linear.epoch=5", "unknown key 'eval.linear.epoch' (did you mean 'eval.linear.epochs'?)"),
])
def test_evaluator_settings_are_validated_with_the_config(override, message):
    with pytest.raises(ConfigError, match=f"^--set: {re.escape(message)}$"):
        load_config(None, [override])


def test_validation_names_the_recipe_that_set_the_value(tmp_path):
    path = write(tmp_path, "eval:\n  linear:\n    sklearn_c: -1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: 'eval.linear.sklearn_c' must be > 0; got -1.0$"):
        load_config(path)


def test_two_label_sources_are_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match=re.escape(
            "--set: 'eval.semisup.labels_per_class' cannot be set together with 'eval.semisup.label_fraction': give "
            "exactly one of eval.semisup.label_fraction, eval.semisup.labels_per_class, eval.semisup.split_file, "
            "eval.semisup.random_labels")):
        load_config(None, ["eval.semisup.label_fraction=0.1", "eval.semisup.labels_per_class=3"])


def as_set_value(value) -> str:
    """How a default reads after --set KEY=."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ",".join(map(as_set_value, value)) + "]"
    if isinstance(value, float) and "e" in str(value) and "." not in str(value):
        return str(value).replace("e", ".0e")  # YAML reads 1e-05 as a string, 1.0e-05 as a number
    return str(value) or "''"


@pytest.mark.parametrize(("main", "section", "settings"), [
    (commands.linear_main, "eval.linear.", LinearSettings),
    (commands.semisup_main, "eval.semisup.", SemisupSettings),
    (commands.select_main, "eval.select.", SelectSettings),
    (commands.detection_main, "eval.detection.", DetectionSettings),
])
def test_help_lists_every_key_of_the_section_with_default_and_help(main, section, settings, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # help lines are wrapped
    for f in dataclasses.fields(settings):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert f"{section}{f.name}={as_set_value(default)} {f.metadata['help']}" in text
    if settings is DetectionSettings:
        assert "(one of: sync, frozen)" in text


def test_knn_help_lists_the_knn_keys(capsys):
    with pytest.raises(SystemExit):
        commands.knn_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "eval.knn_k=[20,200] neighbours voting" in text and "eval.knn_backend=auto search backend" in text
    assert "eval.knn_every" not in text  # a training-monitor key, not an evaluator setting
    assert "--pixels" in text and "--random-init" in text


def test_an_old_flag_points_to_its_config_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        commands.linear_main(["--checkpoint", "x.pth", "--mode", "cached"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --mode cached; evaluator settings are config keys: --set eval.linear.mode=VALUE" \
        in err
    with pytest.raises(SystemExit):
        commands.semisup_main(["--checkpoint", "x.pth", "--label-fraction=0.1"])
    assert "--set eval.semisup.label_fraction=VALUE" in capsys.readouterr().err


def test_a_checkpoints_evaluator_settings_are_not_inherited(tmp_path):
    stored = load_config(None, ["optim.batch_size=32", "moco.queue_size=64", "model.bn_splits=4",
                                "eval.linear.epochs=3", "eval.knn_k=5", "data.image_size=32"])
    our_checkpoint(tmp_path / "last.pth", stored)
    args = argparse.Namespace(checkpoint=[str(tmp_path / "last.pth")], config=None, set=["device=cpu"],
                              random_init=False, pixels=False, no_verify=False)
    ctx = prepare(args)
    assert ctx.cfg.data.image_size == 32  # data settings come from the checkpoint
    assert ctx.cfg.eval.linear == LinearSettings() and ctx.cfg.eval.knn_ks == [20, 200]
    (backbone,) = ctx.backbones
    assert backbone.report.loaded == 120 and backbone.module.conv1.weight.device == torch.device("cpu")


def section_float_keys() -> list[str]:
    """Dotted keys of the float fields of the evaluator sections."""
    return [f"eval.{name}.{f.name}" for name, settings in (("linear", LinearSettings), ("semisup", SemisupSettings),
                                                            ("detection", DetectionSettings))
            for f, tp in ((f, typing.get_type_hints(settings)[f.name]) for f in dataclasses.fields(settings))
            if tp in (float, float | None)]


@pytest.mark.parametrize("key", section_float_keys())
def test_evaluator_floats_take_exponents_and_refuse_non_finite_values(key):
    assert functools.reduce(getattr, key.split("."), load_config(None, [f"{key}=1e-1"])) == 0.1
    with pytest.raises(ConfigError, match=rf"^--set: '{re.escape(key)}' must be a finite number, got inf$"):
        load_config(None, [f"{key}=.inf"])


def test_the_study_evaluations_linear_probe_uses_the_configs_linear_section(monkeypatch):
    from mochi_hvs.evaluation import frozen

    used = []
    monkeypatch.setattr(frozen, "probe_metrics", lambda *args: used.append(args[5]) or {"top1": 0.0})
    cfg = load_config(None, ["eval.linear.l2_grid=[0.5]", "eval.linear.val_fraction=0.3", "eval.knn_train_subset=20",
                             "eval.knn_test_subset=10", "eval.knn_k=5"])
    evaluation = frozen.FrozenEvaluation(cfg, torch.device("cpu"))
    features = frozen.FrozenFeatures(torch.zeros(20, 4), torch.zeros(20, dtype=torch.long), torch.zeros(10, 4),
                                     torch.zeros(10, dtype=torch.long), 10)
    evaluation.linear(features)
    assert used == [LinearSettings(l2_grid=[0.5], val_fraction=0.3)]
