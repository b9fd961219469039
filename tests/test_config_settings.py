"""One way to declare a setting: help, choices, bounds and resume policy on the field (mochi_hvs/config/settings.py),
read by --help, by one generic validator and by the resume check, for every section a config holds."""

import dataclasses
import re
from dataclasses import dataclass

import pytest

from mochi_hvs.config import Config, ConfigError, load_config, registered_sections, setting, to_dict, validate
from mochi_hvs.config.commandline import yaml_value
from mochi_hvs.config.schema import METHOD_SECTIONS, MethodConfig, resume_policy, section_types, settings_of
from mochi_hvs.config.settings import APPLY, REFUSE, Bounds, default_of, help_of
from mochi_hvs.evaluation import commands
from mochi_hvs.pretrain import build_parser
from mochi_hvs.study.__main__ import build_parser as study_parser


def every_setting() -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every setting of every section of a Config, the registered ones included."""
    return [(prefix + f.name, f) for prefix, cls in section_types() for f in settings_of(cls)]


def undocumented() -> list[str]:
    """The keys of the settings, and of the sections held as fields, whose help is empty."""
    return [prefix + f.name for prefix, cls in section_types() for f in dataclasses.fields(cls)
            if not help_of(f).strip()]


# ------------------------------------------------------------------------------------------------------- help

def test_every_setting_of_every_section_has_help():
    prefixes = {prefix for prefix, _ in section_types()}
    assert {f"{key}." for key in registered_sections()} | {"", "data.", "eval.", "eval.linear.", "eval.detection.",
                                                           "eval.transferability.", "collapse."} <= prefixes
    assert len(every_setting()) > 180
    assert undocumented() == []


@dataclass
class BareConfig(MethodConfig):
    documented: int = setting(1, "a documented setting")
    bare: float = 0.5


def test_a_setting_without_help_is_found(monkeypatch):
    monkeypatch.setitem(METHOD_SECTIONS, "bare", BareConfig)
    assert undocumented() == ["bare.bare"]


def test_pretrain_help_names_every_key_with_its_default_and_help():
    text = " ".join(build_parser().format_help().split())  # help lines are wrapped
    missing = [key for key, f in every_setting()
               if f"{key}={yaml_value(default_of(f))} {' '.join(help_of(f).split())}" not in text]
    assert missing == []
    assert "optim.momentum=0.9 SGD's momentum (must be in [0, 1) (SGD momentum))" in text
    assert "data.augment_on=auto auto: the device for in-memory sets; device: batched, on the training device; cpu " \
           "(one of: auto, device, cpu)" in text


def test_the_study_and_evaluator_commands_list_the_keys_they_read(capsys):
    study = " ".join(study_parser().format_help().split())
    assert all(f"{key}=" in study for key, _ in every_setting())
    with pytest.raises(SystemExit):
        commands.knn_main(["--help"])
    knn = " ".join(capsys.readouterr().out.split())
    for key in ("eval.knn_k=[20,200]", "data.root=null", "data.image_size=28", "device=auto", "amp=auto", "seed=0"):
        assert f" {key} " in knn
    assert "data.train_subset" not in knn and "optim.lr" not in knn  # pretraining keys evaluation does not read


# ----------------------------------------------------------------------------------------------------- bounds

@pytest.mark.parametrize(("spec", "inside", "outside", "described"), [
    ("positive", [1, 0.5, 10**30], [0, -1], "positive"),
    (">= 0", [0, 3.5], [-1e-9], ">= 0"),
    ("> -1", [-0.5, 0], [-1, -2], "> -1"),
    ("[0, 1)", [0, 0.999], [1, -0.1], "in [0, 1)"),
    ("(0, 1]", [1, 1e-9], [0, 1.1], "in (0, 1]"),
    ("[0, 2**63) (a seed)", [0, 2**63 - 1], [2**63, -1], "in [0, 2**63) (a seed)"),
    ("[0, 5] (ResNet stages)", [0, 5], [6, -1], "in [0, 5] (ResNet stages)"),
])
def test_bounds_read_as_their_messages_and_hold_what_they_say(spec, inside, outside, described):
    bounds = Bounds.parse(spec)
    assert bounds.describe() == described and bounds.describe(nullable=True) == f"null or {described}"
    assert all(bounds.holds(value) for value in inside) and not any(bounds.holds(value) for value in outside)
    assert bounds.holds(None) and bounds.holds(inside) and not bounds.holds([*inside, outside[0]])


@pytest.mark.parametrize("spec", ["> 0 or null", "between 0 and 1", "[0, 1", "=> 0"])
def test_a_bounds_spec_that_does_not_parse_is_refused_where_it_is_declared(spec):
    with pytest.raises(ValueError, match=re.escape(f"bounds {spec!r}: expected positive")):
        setting(0, "a setting", bounds=spec)


# The bounds each section declares, one bad value each, and the one-line error the generic validator gives: the
# messages of the checks it replaces, word for word. Those that named no value (log_every, checkpoint_every,
# data.workers, model.feature_dim, optim.weight_decay, optim.grad_clip (was "must be > 0 or null"),
# eval.knn_every_steps, eval.knn_temperature, eval.analysis_every, eval.analysis_samples, mochi.warmup_epochs,
# hvs.start_epoch) now end with "; got <value>" like the others.
BAD_VALUES = [
    ('seed=-1', "'seed' must be in [0, 2**63); got -1"),
    ('seed=9223372036854775808', "'seed' must be in [0, 2**63); got 9223372036854775808"),
    ('log_every=0', "'log_every' must be positive; got 0"),
    ('checkpoint_every=-1', "'checkpoint_every' must be >= 0; got -1"),
    ('data.image_size=7', "'data.image_size' must be >= 8; got 7"),
    ('data.workers=-1', "'data.workers' must be >= 0; got -1"),
    ('data.std=[0.2,0,0.2]', "'data.std' must be positive (images are divided by it); got [0.2, 0.0, 0.2]"),
    ('model.head_hidden_dim=0', "'model.head_hidden_dim' must be null or positive; got 0"),
    ('model.feature_dim=0', "'model.feature_dim' must be positive; got 0"),
    ('byol.momentum=2', "'byol.momentum' must be in [0, 1]; got 2.0"),
    ('moco.momentum=1.5', "'moco.momentum' must be in [0, 1]; got 1.5"),
    ('moco.momentum=-0.1', "'moco.momentum' must be in [0, 1]; got -0.1"),
    ('moco.temperature=0', "'moco.temperature' must be > 0; got 0.0"),
    ('msbreg.centroid=-1', "'msbreg.centroid' must be >= 0; got -1.0"),
    ('msbreg.singular=-1', "'msbreg.singular' must be >= 0; got -1.0"),
    ('msbreg.brownian=-1', "'msbreg.brownian' must be >= 0; got -1.0"),
    ('relicv2.momentum=-1', "'relicv2.momentum' must be in [0, 1]; got -1.0"),
    ('relicv2.temperature=0', "'relicv2.temperature' must be > 0; got 0.0"),
    ('relicv2.alpha=-1', "'relicv2.alpha' must be >= 0; got -1.0"),
    ('twist.lam1=-1', "'twist.lam1' must be > -1; got -1.0"),
    ('twist.lam2=-1', "'twist.lam2' must be >= 0; got -1.0"),
    ('twist.tau=0', "'twist.tau' must be > 0; got 0.0"),
    ('twist.eps=0', "'twist.eps' must be in (0, 1); got 0.0"),
    ('twist.eps=1', "'twist.eps' must be in (0, 1); got 1.0"),
    ('mochi.num_mix=-1', "'mochi.num_mix' must be >= 0; got -1"),
    ('mochi.num_query_mix=-1', "'mochi.num_query_mix' must be >= 0; got -1"),
    ('mochi.query_mix_max=0', "'mochi.query_mix_max' must be in (0, 1]; got 0.0"),
    ('mochi.query_mix_max=1.5', "'mochi.query_mix_max' must be in (0, 1]; got 1.5"),
    ('mochi.warmup_epochs=-1', "'mochi.warmup_epochs' must be >= 0; got -1"),
    ('hvs.num_views=1', "'hvs.num_views' must be >= 2; got 1"),
    ('hvs.select_every=0', "'hvs.select_every' must be >= 1; got 0"),
    ('hvs.start_epoch=-1', "'hvs.start_epoch' must be >= 0; got -1"),
    ('fast_moco.grid=0', "'fast_moco.grid' must be >= 1; got 0"),
    ('fast_moco.weight=0', "'fast_moco.weight' must be > 0; got 0.0"),
    ('multicrop.local_crops=0', "'multicrop.local_crops' must be >= 1; got 0"),
    ('multicrop.local_size=4', "'multicrop.local_size' must be null or >= 8; got 4"),
    ('multicrop.weight=0', "'multicrop.weight' must be > 0; got 0.0"),
    ('lc.weight=0', "'lc.weight' must be > 0; got 0.0"),
    ('lc.temperature=0', "'lc.temperature' must be > 0; got 0.0"),
    ('lc.dim=0', "'lc.dim' must be positive; got 0"),
    ('lc.hidden_dim=0', "'lc.hidden_dim' must be null or positive; got 0"),
    ('optim.batch_size=0', "'optim.batch_size' must be positive; got 0"),
    ('optim.lr=0', "'optim.lr' must be > 0; got 0.0"),
    ('optim.lr=-1', "'optim.lr' must be > 0; got -1.0"),
    ('optim.base_batch_size=0', "'optim.base_batch_size' must be null or positive; got 0"),
    ('optim.momentum=1', "'optim.momentum' must be in [0, 1) (SGD momentum); got 1.0"),
    ('optim.momentum=-0.5', "'optim.momentum' must be in [0, 1) (SGD momentum); got -0.5"),
    ('optim.weight_decay=-1', "'optim.weight_decay' must be >= 0; got -1.0"),
    ('optim.epochs=0', "'optim.epochs' must be positive; got 0"),
    ('optim.steps=0', "'optim.steps' must be null or positive; got 0"),
    ('optim.grad_clip=0', "'optim.grad_clip' must be null or > 0; got 0.0"),
    ('optim.grad_clip=-1', "'optim.grad_clip' must be null or > 0; got -1.0"),
    ('eval.knn_every=-1', "'eval.knn_every' must be >= 0; got -1"),
    ('eval.knn_every_steps=-1', "'eval.knn_every_steps' must be >= 0; got -1"),
    ('eval.knn_temperature=0', "'eval.knn_temperature' must be > 0; got 0.0"),
    ('eval.knn_train_subset=0', "'eval.knn_train_subset' must be null or positive; got 0"),
    ('eval.knn_test_subset=-1', "'eval.knn_test_subset' must be null or positive; got -1"),
    ('eval.analysis_every=-1', "'eval.analysis_every' must be >= 0; got -1"),
    ('eval.analysis_samples=1', "'eval.analysis_samples' must be >= 2; got 1"),
    ('eval.batch_size=0', "'eval.batch_size' must be positive; got 0"),
    ('eval.linear.momentum=1', "'eval.linear.momentum' must be in [0, 1); got 1.0"),
    ('eval.linear.weight_decay=-1', "'eval.linear.weight_decay' must be >= 0; got -1.0"),
    ('eval.linear.batch_size=0', "'eval.linear.batch_size' must be positive; got 0"),
    ('eval.linear.seed=-1', "'eval.linear.seed' must be in [0, 2**63); got -1"),
    ('eval.linear.val_fraction=1', "'eval.linear.val_fraction' must be in (0, 1); got 1.0"),
    ('eval.linear.val_fraction=0', "'eval.linear.val_fraction' must be in (0, 1); got 0.0"),
    ('eval.linear.max_iter=0', "'eval.linear.max_iter' must be positive; got 0"),
    ('eval.linear.tolerance=0', "'eval.linear.tolerance' must be > 0; got 0.0"),
    ('eval.linear.epochs=0', "'eval.linear.epochs' must be positive; got 0"),
    ('eval.linear.lr=0', "'eval.linear.lr' must be > 0; got 0.0"),
    ('eval.linear.train_subset=0', "'eval.linear.train_subset' must be null or positive; got 0"),
    ('eval.linear.test_subset=0', "'eval.linear.test_subset' must be null or positive; got 0"),
    ('eval.linear.sklearn_c=0', "'eval.linear.sklearn_c' must be > 0; got 0.0"),
    ('eval.linear.sklearn_max_iter=0', "'eval.linear.sklearn_max_iter' must be positive; got 0"),
    ('eval.semisup.momentum=1', "'eval.semisup.momentum' must be in [0, 1); got 1.0"),
    ('eval.semisup.weight_decay=-1', "'eval.semisup.weight_decay' must be >= 0; got -1.0"),
    ('eval.semisup.batch_size=0', "'eval.semisup.batch_size' must be positive; got 0"),
    ('eval.semisup.seed=-1', "'eval.semisup.seed' must be in [0, 2**63); got -1"),
    ('eval.semisup.label_fraction=0', "'eval.semisup.label_fraction' must be null or in (0, 1]; got 0.0"),
    ('eval.semisup.label_fraction=1.5', "'eval.semisup.label_fraction' must be null or in (0, 1]; got 1.5"),
    ('eval.semisup.labels_per_class=0', "'eval.semisup.labels_per_class' must be null or positive; got 0"),
    ('eval.semisup.random_labels=0', "'eval.semisup.random_labels' must be null or positive; got 0"),
    ('eval.semisup.epochs=0', "'eval.semisup.epochs' must be positive; got 0"),
    ('eval.semisup.lr_backbone=-1', "'eval.semisup.lr_backbone' must be >= 0; got -1.0"),
    ('eval.semisup.lr_head=0', "'eval.semisup.lr_head' must be > 0; got 0.0"),
    ('eval.semisup.test_subset=0', "'eval.semisup.test_subset' must be null or positive; got 0"),
    ('eval.select.budget=0', "'eval.select.budget' must be null or positive; got 0"),
    ('eval.select.pool=0', "'eval.select.pool' must be null or positive; got 0"),
    ('eval.select.knn_k=0', "'eval.select.knn_k' must be positive; got 0"),
    ('eval.select.kmeans_iterations=0', "'eval.select.kmeans_iterations' must be positive; got 0"),
    ('eval.select.restarts=0', "'eval.select.restarts' must be positive; got 0"),
    ('eval.select.reg_lambda=-1', "'eval.select.reg_lambda' must be >= 0; got -1.0"),
    ('eval.select.reg_alpha=0', "'eval.select.reg_alpha' must be > 0; got 0.0"),
    ('eval.select.reg_momentum=1', "'eval.select.reg_momentum' must be in [0, 1); got 1.0"),
    ('eval.select.iterations=0', "'eval.select.iterations' must be positive; got 0"),
    ('eval.select.seed=-1', "'eval.select.seed' must be in [0, 2**31) (Faiss's k-means seed); got -1"),
    ('eval.select.seed=2147483648', "'eval.select.seed' must be in [0, 2**31) (Faiss's k-means seed); got 2147483648"),
    ('eval.detection.iterations=0', "'eval.detection.iterations' must be positive; got 0"),
    ('eval.detection.batch_size=0', "'eval.detection.batch_size' must be positive; got 0"),
    ('eval.detection.lr=0', "'eval.detection.lr' must be > 0; got 0.0"),
    ('eval.detection.momentum=1', "'eval.detection.momentum' must be in [0, 1); got 1.0"),
    ('eval.detection.weight_decay=-1', "'eval.detection.weight_decay' must be >= 0; got -1.0"),
    ('eval.detection.warmup_iterations=-1', "'eval.detection.warmup_iterations' must be >= 0; got -1"),
    ('eval.detection.trainable_layers=6', "'eval.detection.trainable_layers' must be in [0, 5] (ResNet stages); got 6"),
    ('eval.detection.trainable_layers=-1',
     "'eval.detection.trainable_layers' must be in [0, 5] (ResNet stages); got -1"),
    ('eval.detection.min_size=0', "'eval.detection.min_size' must be positive; got 0"),
    ('eval.detection.proposals=0', "'eval.detection.proposals' must be positive; got 0"),
    ('eval.detection.roi_batch=0', "'eval.detection.roi_batch' must be positive; got 0"),
    ('eval.detection.workers=-1', "'eval.detection.workers' must be >= 0; got -1"),
    ('eval.detection.seed=-1', "'eval.detection.seed' must be in [0, 2**63); got -1"),
    ('eval.transfer.ways=1', "'eval.transfer.ways' must be >= 2; got 1"),
    ('eval.transfer.queries=0', "'eval.transfer.queries' must be positive; got 0"),
    ('eval.transfer.episodes=1', "'eval.transfer.episodes' must be >= 2 (the interval needs a spread); got 1"),
    ('eval.transfer.seed=-1', "'eval.transfer.seed' must be in [0, 2**63); got -1"),
    ('eval.transferability.batches=0', "'eval.transferability.batches' must be positive; got 0"),
    ('eval.transferability.batch_size=0', "'eval.transferability.batch_size' must be positive; got 0"),
    ('eval.transferability.seed=-1', "'eval.transferability.seed' must be in [0, 2**63); got -1"),
    ('collapse.patience=0', "'collapse.patience' must be >= 1; got 0"),
    ('collapse.min_std=-1', "'collapse.min_std' must be >= 0 (0: not checked); got -1.0"),
    ('collapse.min_rank=-1', "'collapse.min_rank' must be >= 0 (0: not checked); got -1.0"),
    ('collapse.loss_tolerance=-1', "'collapse.loss_tolerance' must be >= 0 (0: not checked); got -1.0"),
    ('continual.split=-1', "'continual.split' must be >= 0; got -1"),
    ('continual.split_seed=-1', "'continual.split_seed' must be >= 0; got -1"),
    ('continual.steps_per_task=0', "'continual.steps_per_task' must be positive; got 0"),
    ('continual.distill_weight=0', "'continual.distill_weight' must be > 0; got 0.0"),
    ('continual.predictor_hidden=0', "'continual.predictor_hidden' must be positive; got 0"),
    ("msbreg.momentum=2", "'msbreg.momentum' must be in [0, 1]; got 2.0"),
    ("distill.head_layers=0", "'distill.head_layers' must be >= 1; got 0"),
    ("distill.head_hidden_dim=0", "'distill.head_hidden_dim' must be null or positive; got 0"),
    ("distill.teacher_cost=0", "'distill.teacher_cost' must be > 0; got 0.0"),
    ("dspnet.distill_weight=0", "'dspnet.distill_weight' must be > 0; got 0.0"),
    ("dspnet.distill_temperature=0", "'dspnet.distill_temperature' must be null or > 0; got 0.0"),
    ("ssql.weight_bits=[1, 8]", "'ssql.weight_bits' must be in [2, 8]; got [1, 8]"),
    ("ssql.act_bits=[4, 9]", "'ssql.act_bits' must be in [2, 8]; got [4, 9]"),
    ("ssql.weight=0", "'ssql.weight' must be > 0; got 0.0"),
    ("burn.temperature=0", "'burn.temperature' must be > 0; got 0.0"),
    ("burn.lambda_start=-0.1", "'burn.lambda_start' must be in [0, 1]; got -0.1"),
    ("burn.lambda_end=1.5", "'burn.lambda_end' must be in [0, 1]; got 1.5"),
    ("burn.real_weights_until=2", "'burn.real_weights_until' must be in [0, 1]; got 2.0"),
    ('data.tile_size=4', "'data.tile_size' must be >= 8; got 4"),
    ('data.tile_stride=0', "'data.tile_stride' must be null or positive; got 0"),
    ('eval.nuclei.crop=16', "'eval.nuclei.crop' must be >= 32; got 16"),
    ('eval.nuclei.iterations=0', "'eval.nuclei.iterations' must be positive; got 0"),
    ('eval.nuclei.batch_size=0', "'eval.nuclei.batch_size' must be positive; got 0"),
    ('eval.nuclei.lr=0', "'eval.nuclei.lr' must be > 0; got 0.0"),
    ('eval.nuclei.backbone_lr=0', "'eval.nuclei.backbone_lr' must be > 0; got 0.0"),
    ('eval.nuclei.channels=0', "'eval.nuclei.channels' must be positive; got 0"),
    ('eval.nuclei.min_size=0', "'eval.nuclei.min_size' must be positive; got 0"),
    ('eval.nuclei.seed=-1', "'eval.nuclei.seed' must be in [0, 2**63); got -1"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[override for override, _ in BAD_VALUES])
def test_a_value_out_of_its_declared_bounds_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"--set: {message}"


def test_every_declared_bound_is_in_the_table():
    declared = {key for key, f in every_setting() if "bounds" in f.metadata}
    assert declared == {override.split("=")[0] for override, _ in BAD_VALUES}


@pytest.mark.parametrize("overrides", [
    ["optim.momentum=0"], [f"seed={2**63 - 1}"], ["eval.semisup.label_fraction=1"],
    ["eval.detection.trainable_layers=0"], ["eval.detection.trainable_layers=5"], ["twist.lam1=-0.99"],
    ["mochi.query_mix_max=1"], ["optim.grad_clip=null"], ["model.head_hidden_dim=1"], ["collapse.min_std=0"],
    ["eval.select.seed=2147483647"], ["data.image_size=8"],
])
def test_values_at_the_edge_of_their_bounds_are_accepted(overrides):
    load_config(None, overrides)


def test_bounds_are_checked_in_configs_built_in_python_and_in_registered_sections():
    cfg = Config()
    cfg.eval.linear.tolerance = -1.0
    with pytest.raises(ConfigError, match=r"^<test>: 'eval.linear.tolerance' must be > 0; got -1.0$"):
        validate(cfg, "<test>")


# ----------------------------------------------------------------------------------------------- resume policy

# The resume policy as resume_changes.py tabled it before each setting declared its own: a dotted key or a section
# (ending in "."), the longest entry matching a key decides, and keys no entry covers are refused.
TABLED_POLICY = {
    "name": APPLY, "output_dir": APPLY, "device": APPLY, "amp": APPLY, "channels_last": APPLY, "compile": APPLY,
    "log_every": APPLY, "checkpoint_every": APPLY,
    "seed": REFUSE, "stages": REFUSE,
    "data.": REFUSE, "data.root": APPLY, "data.workers": APPLY, "data.augment_on": APPLY,
    "data.skip_unreadable": APPLY,
    "model.": REFUSE,
    "moco.": REFUSE, "moco.momentum": APPLY, "moco.momentum_schedule": APPLY, "moco.temperature": APPLY,
    "mochi.": REFUSE, "mochi.retrieval": APPLY, "mochi.faiss_index": APPLY, "mochi.faiss_nlist": APPLY,
    "mochi.faiss_nprobe": APPLY, "mochi.path": APPLY,
    "hvs.": REFUSE,
    "fast_moco.": REFUSE,
    "multicrop.": REFUSE,
    "lc.": REFUSE, "lc.weight": APPLY, "lc.temperature": APPLY,
    "optim.": APPLY, "optim.batch_size": REFUSE,
    "optim.name": REFUSE,
    "eval.": APPLY,
    "collapse.": APPLY,
}


def tabled(key: str) -> str:
    matches = [entry for entry in TABLED_POLICY if entry == key or (entry.endswith(".") and key.startswith(entry))]
    return TABLED_POLICY[max(matches, key=len)] if matches else REFUSE


def flat_keys(values: dict, prefix: str = "") -> list[str]:
    return [key for name, value in values.items()
            for key in (flat_keys(value, f"{prefix}{name}.") if isinstance(value, dict) and value
                        else [prefix + name])]


def test_the_resume_policy_read_from_the_fields_gives_the_tabled_verdicts():
    stored = to_dict(Config())
    stored["model"]["arch_kwargs"] = {"img_size": 28}  # a mapping setting is stored key by key
    keys = flat_keys(stored) + [entry for entry in TABLED_POLICY if not entry.endswith(".")] + [
        entry + "unknown" for entry in TABLED_POLICY if entry.endswith(".")] + ["future.setting", "eval.linear.new"]
    assert "model.arch_kwargs.img_size" in keys and "eval.transfer.shots" in keys and "lc.weight" in keys
    assert {key: resume_policy(key) for key in keys} == {key: tabled(key) for key in keys}
    assert {resume_policy(key) for key in keys} == {APPLY, REFUSE}


def test_a_setting_declares_its_own_policy_over_its_sections(monkeypatch):
    @dataclass
    class Declared(MethodConfig):
        rate: float = setting(0.5, "applied on resume", resume=APPLY)
        size: int = setting(3, "the section's policy")

    monkeypatch.setitem(METHOD_SECTIONS, "declared", Declared)
    assert (resume_policy("declared.rate"), resume_policy("declared.size")) == (APPLY, REFUSE)
