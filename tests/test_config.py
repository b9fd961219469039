import dataclasses
import math
import typing
from pathlib import Path

import pytest

from mochi_hvs.config import Config, ConfigError, load_config, registered_sections, to_dict, validate
from mochi_hvs.objectives.contrastive import MocoConfig
from mochi_hvs.objectives.registry import declared, sections

# The pretraining recipes: not detectron2's own format, the study recipes or the campaign files.
CONFIGS = sorted(p for p in Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml")
                 if not {"detectron2", "studies", "campaigns", "video"} & set(p.parts))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_map_onto_typed_fields(tmp_path):
    path = write(tmp_path, "moco:\n  queue_size: 1024\noptim:\n  lr: 1\n  batch_size: 128\n")
    cfg = load_config(path, ["optim.lr=0.06", "moco.queue_size=4096", "data.root=/x"])
    assert cfg.moco.queue_size == 4096
    assert cfg.optim.lr == 0.06 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.batch_size == 128
    assert cfg.data.root == "/x"


def test_int_is_accepted_for_float_and_becomes_float(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\n  lr: 1\n"))
    assert isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    "text, key",
    [
        ("moco:\n  queue_sz: 10\n", "moco.queue_sz"),
        ("optim:\n  lr: fast\n", "optim.lr"),
        ("optim:\n  epochs: 2.5\n", "optim.epochs"),
        ("model:\n  small_stem: 1\n", "model.small_stem"),
        ("moco:\n  temperature: 0\n", "moco.temperature"),
        ("moco:\n  temperature: -0.2\n", "moco.temperature"),
        ("moco:\n  queue_size: 1000\n", "moco.queue_size"),
        ("moco:\n  queue_size: 0\n", "moco.queue_size"),
        ("model:\n  arch: resnet7\n", "model.arch"),
        ("data: 3\n", "data"),
        ("data:\n  crop_scale: [0.5, 0.2]\n", "data.crop_scale"),
        ("data:\n  color_jitter: [0.4, 0.4, 0.4]\n", "data.color_jitter"),
        ("data:\n  color_jitter: [0.4, -0.1, 0.4, 0.1]\n", "data.color_jitter"),
        ("data:\n  color_jitter: [0.4, 0.4, 0.4, 0.6]\n", "data.color_jitter"),
        ("data:\n  color_jitter: [0.4, 0.4, 0.4, .inf]\n", "data.color_jitter[3]"),
        ("model:\n  bn_splits: 3\n", "model.bn_splits"),
        ("devcie: cpu\n", "devcie"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"'{key}'" in message
    assert str(path) in message


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'moco.queue_size'"):
        load_config(write(tmp_path, "moco:\n  queue_sz: 10\n"))


def test_override_errors_name_the_key():
    with pytest.raises(ConfigError, match="'optim.lrr'"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_queue_must_be_multiple_of_global_batch():
    load_config(None, ["optim.batch_size=256", "moco.queue_size=4096"])
    with pytest.raises(ConfigError, match="multiple of the global batch"):
        load_config(None, ["optim.batch_size=512", "moco.queue_size=4352"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "moco: [unclosed\n"))


def test_color_jitter_takes_four_strengths_in_torchvisions_ranges():
    assert load_config(None, ["data.color_jitter=[0.8,0.8,0,0]"]).data.color_jitter == [0.8, 0.8, 0.0, 0.0]
    assert load_config(None, ["data.color_jitter=[2,0,0,0.5]"]).data.color_jitter == [2.0, 0.0, 0.0, 0.5]
    stored = to_dict(Config())
    del stored["data"]["color_jitter"]  # a checkpoint written before the key existed
    assert load_config(defaults=stored).data.color_jitter == [0.4, 0.4, 0.4, 0.1]
    with pytest.raises(ConfigError, match=r"^--set: 'data.color_jitter' must be \[brightness, contrast, saturation, "
                                          r"hue\], each finite and >= 0 \(0: not jittered\), hue <= 0.5; got "
                                          r"\[0.4, 0.4, 0.4, 0.6\]$"):
        load_config(None, ["data.color_jitter=[0.4,0.4,0.4,0.6]"])
    cfg = Config()
    cfg.data.color_jitter = [math.inf, 0.4, 0.4, 0.1]  # built in Python, not read through the typed loader
    with pytest.raises(ConfigError, match="'data.color_jitter' must be"):
        validate(cfg, "<test>")


def test_round_trip_through_dict():
    cfg = load_config(None, ["moco.symmetric=true", "optim.grad_clip=1.5", "hvs.enabled=true"])
    assert load_config(defaults=to_dict(cfg)) == cfg  # as evaluation rebuilds a checkpoint's stored config


def test_the_moco_section_is_the_contrastive_objectives_and_old_stored_configs_load():
    assert sections()["moco"] is MocoConfig and declared("contrastive").section is MocoConfig
    assert sections()["byol"] is declared("byol").section  # a section's key is its objective's name by default
    # the `moco` section as checkpoints stored it while it was a field of Config, between `model` and `mochi`
    old = {"queue_size": 1024, "momentum": 0.999, "momentum_schedule": "cosine", "temperature": 0.2,
           "symmetric": True, "shuffle_bn": False}
    stored = {"model": {"arch": "resnet18"}, "moco": old, "mochi": {"enabled": False}, "optim": {"batch_size": 64}}
    cfg = load_config(defaults=stored, overrides=["moco.temperature=0.07"])
    assert dataclasses.asdict(cfg.moco) == old | {"temperature": 0.07}
    keys = list(to_dict(cfg))
    assert keys.index("model") < keys.index("moco") < keys.index("mochi")  # where checkpoints have always kept it
    assert load_config(defaults=to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_recipes_load(path):
    load_config(path)


def test_paper_recipes_hold_the_published_values():
    root = Path(__file__).resolve().parents[1] / "configs"
    cifar = load_config(root / "cifar10" / "moco_v2_r18.yaml")
    moco, optim = cifar.moco, cifar.optim
    assert (cifar.model.small_stem, moco.queue_size, moco.momentum, moco.temperature) == (True, 4096, 0.99, 0.1)
    assert (optim.lr, optim.batch_size, optim.weight_decay, optim.schedule) == (0.06, 512, 5e-4, "cosine")
    assert cifar.model.bn_splits > 1
    imagenet = load_config(root / "imagenet" / "moco_v2_r50.yaml")
    assert (imagenet.model.arch, imagenet.moco.queue_size, imagenet.moco.momentum, imagenet.moco.temperature) == (
        "resnet50", 65536, 0.999, 0.2)
    assert (imagenet.optim.lr, imagenet.optim.batch_size, imagenet.optim.weight_decay, imagenet.optim.epochs) == (
        0.03, 256, 1e-4, 200)
    assert imagenet.model.head == "mlp" and imagenet.data.augmentation == "mocov2"


def test_mochi_recipes_hold_the_paper_settings():
    root = Path(__file__).resolve().parents[1] / "configs"
    in1k = load_config(root / "imagenet" / "moco_mochi_r50.yaml")
    m = in1k.mochi
    assert m.enabled and (m.num_hard, m.num_mix, m.num_query_mix, m.query_mix_max) == (1024, 512, 256, 0.5)
    assert (in1k.moco.queue_size, in1k.model.arch, in1k.optim.lr) == (65536, "resnet50", 0.03)  # from its base
    in100 = load_config(root / "imagenet100" / "moco_mochi_r50.yaml")
    assert (in100.mochi.num_hard, in100.mochi.num_mix, in100.mochi.num_query_mix) == (1024, 1024, 128)
    assert in100.moco.queue_size == 16384
    assert load_config(root / "moco_mochi.yaml").mochi.enabled


def test_the_long_recipe_is_the_default_stretched_to_30_epochs():
    root = Path(__file__).resolve().parents[1] / "configs"
    default, long = load_config(root / "moco_v2.yaml"), load_config(root / "fmnist_long.yaml")
    assert (long.data, long.model, long.moco) == (default.data, default.model, default.moco)
    assert long.optim == dataclasses.replace(default.optim, epochs=30)
    assert long.optim.schedule == "cosine" and long.name == "fmnist_long"


def test_base_chain_applies_the_base_first_and_reports_errors_with_the_right_file(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\noptim:\n  lr: 0.5\n  epochs: 7\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nname: b\noptim:\n  lr: 0.1\n")
    cfg = load_config(tmp_path / "sub" / "b.yaml", ["optim.epochs=9"])
    assert (cfg.name, cfg.optim.lr, cfg.optim.epochs) == ("b", 0.1, 9)
    (tmp_path / "a.yaml").write_text("optim:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: unknown key 'optim.lrr'"):
        load_config(tmp_path / "sub" / "b.yaml")
    (tmp_path / "a.yaml").write_text("base: sub/b.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "sub" / "b.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    ("override", "key"),
    [("mochi.num_hard=5000", "mochi.num_hard"), ("mochi.num_hard=1", "mochi.num_hard"),
     ("mochi.query_mix_max=0", "mochi.query_mix_max"), ("mochi.retrieval=annoy", "mochi.retrieval")],
)
def test_mochi_values_are_validated_when_enabled(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["mochi.enabled=true", override])


def test_overrides_of_text_fields_keep_the_text_yaml_would_convert():
    cfg = load_config(None, ["name=off", "data.root=2024", "output_dir=yes"])
    assert (cfg.name, cfg.data.root, cfg.output_dir) == ("off", "2024", "yes")
    assert load_config(None, ["data.root=null"]).data.root is None
    assert load_config(None, ["moco.symmetric=yes"]).moco.symmetric is True  # booleans still parse as YAML


def float_fields() -> list[str]:
    """Dotted keys of every float (or optional float) field of the config, the objectives' and methods' sections
    included."""
    keys = []
    for section, section_type in (typing.get_type_hints(Config) | registered_sections()).items():
        hints = typing.get_type_hints(section_type) if dataclasses.is_dataclass(section_type) else {}
        keys += [f"{section}.{name}" for name, tp in hints.items() if tp in (float, float | None)]
    return keys


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1e-4", 1e-4), ("1e6", 1e6), ("1E+6", 1e6), ("1.5e-3", 1.5e-3), ("1.5E3", 1500.0), (".5", 0.5), ("5.", 5.0),
     ("1_000.0", 1000.0), ("3", 3.0)],
)
def test_float_fields_take_every_common_number_notation(tmp_path, text, expected):
    # YAML 1.1 reads exponents without a dot or sign (1e6, 1e-4 has a sign but no dot) as text.
    from_file = load_config(write(tmp_path, f"optim:\n  lr: {text}\n")).optim.lr
    from_set = load_config(None, [f"optim.lr={text}"]).optim.lr
    assert from_file == from_set == expected
    assert isinstance(from_file, float) and isinstance(from_set, float)


def test_a_negative_exponent_number_is_read_as_a_number():
    with pytest.raises(ConfigError, match=r"^--set: 'optim.lr' must be > 0; got -2000.0$"):
        load_config(None, ["optim.lr=-2E+3"])


def test_numbers_stay_text_in_text_fields_and_booleans_are_never_numbers(tmp_path):
    assert load_config(write(tmp_path, "name: 1e6\n")).name == "1e6"
    assert load_config(None, ["name=1e6"]).name == "1e6"
    for value in ("true", "false"):
        with pytest.raises(ConfigError, match=f"'optim.lr' must be float, got {value.title()}"):
            load_config(None, [f"optim.lr={value}"])
    with pytest.raises(ConfigError, match="'optim.lr' must be float, got 'fast'"):
        load_config(None, ["optim.lr=fast"])


def test_float_fields_are_found():
    assert {"optim.lr", "optim.momentum", "optim.grad_clip", "moco.temperature", "eval.knn_temperature",
            "lc.temperature"} <= set(float_fields())


@pytest.mark.parametrize("key", float_fields())
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "-Infinity", "nan", "1e999"])
def test_non_finite_floats_are_refused_for_every_float_field(key, value):
    with pytest.raises(ConfigError, match=rf"^--set: '{key}' must be a finite number, got "):
        load_config(None, [f"{key}={value}"])


def test_non_finite_floats_are_refused_in_files_and_in_lists(tmp_path):
    path = write(tmp_path, "moco:\n  temperature: .inf\n")
    with pytest.raises(ConfigError, match=rf"^{path}: 'moco.temperature' must be a finite number, got inf$"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'data.mean\[1\]' must be a finite number, got nan"):
        load_config(None, ["data.mean=[0.5, .nan, 0.5]"])


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("optim.momentum=1.5", "optim.momentum", "must be in [0, 1) (SGD momentum); got 1.5"),
        ("optim.momentum=1", "optim.momentum", "must be in [0, 1) (SGD momentum); got 1.0"),
        ("optim.momentum=-1", "optim.momentum", "must be in [0, 1) (SGD momentum); got -1.0"),
        ("seed=-1", "seed", "must be in [0, 2**63); got -1"),
        (f"seed={2**63}", "seed", f"must be in [0, 2**63); got {2**63}"),
        ("eval.batch_size=0", "eval.batch_size", "must be positive; got 0"),
        ("eval.knn_train_subset=-5", "eval.knn_train_subset", "must be null or positive; got -5"),
        ("eval.knn_train_subset=0", "eval.knn_train_subset", "must be null or positive; got 0"),
        ("eval.knn_test_subset=-5", "eval.knn_test_subset", "must be null or positive; got -5"),
        ("eval.knn_train_subset=100", "eval.knn_k",
         "must not exceed eval.knn_train_subset=100 (the size of the kNN bank); got [20, 200]"),
        ("eval.knn_every=-1", "eval.knn_every", "must be >= 0; got -1"),
        ("optim.base_batch_size=0", "optim.base_batch_size", "must be null or positive; got 0"),
        ("model.head_hidden_dim=0", "model.head_hidden_dim", "must be null or positive; got 0"),
        ("optim.lr_milestones=[160,120]", "optim.lr_milestones",
         "must be positive epochs in increasing order; got [160, 120]"),
        ("optim.lr_milestones=[0,10]", "optim.lr_milestones",
         "must be positive epochs in increasing order; got [0, 10]"),
        ("optim.lr_milestones=[10,10]", "optim.lr_milestones",
         "must be positive epochs in increasing order; got [10, 10]"),
        ("data.std=[0.2,0,0.2]", "data.std", "must be positive (images are divided by it); got [0.2, 0.0, 0.2]"),
    ],
)
def test_range_checks_name_the_key_and_the_source(override, key, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"--set: '{key}' {message}"


@pytest.mark.parametrize(
    "overrides",
    [["optim.momentum=0"], ["seed=0"], [f"seed={2**63 - 1}"], ["eval.knn_train_subset=200"],
     ["eval.knn_train_subset=20", "eval.knn_k=20"], ["optim.lr_milestones=[]"], ["optim.lr_milestones=[1,2]"]],
)
def test_values_at_the_edge_of_the_ranges_are_accepted(overrides):
    load_config(None, overrides)


def test_validation_errors_name_every_source_of_values(tmp_path):
    path = write(tmp_path, "optim:\n  batch_size: 128\n")
    with pytest.raises(ConfigError, match=rf"^{path} \+ --set: 'eval.batch_size' must be positive; got 0$"):
        load_config(path, ["eval.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^<checkpoint config>: 'data.std' must be positive"):
        load_config(defaults={"data": {"std": [0.2, 0.0, 0.2]}})


def test_symmetric_loss_needs_a_queue_for_both_directions_keys():
    small = ["optim.batch_size=16", "model.bn_splits=2"]
    load_config(None, [*small, "moco.queue_size=16"])  # one direction: 16 keys per step fit
    with pytest.raises(ConfigError) as err:
        load_config(None, [*small, "moco.queue_size=16", "moco.symmetric=true"])
    assert str(err.value) == ("--set: 'moco.queue_size' must hold the 2 x optim.batch_size=32 keys enqueued per step "
                              "with moco.symmetric; got 16")
    load_config(None, [*small, "moco.queue_size=32", "moco.symmetric=true"])


@pytest.mark.parametrize("hvs", [[], ["hvs.enabled=true"]])
def test_batchnorm_groups_below_eight_samples_are_refused(hvs):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.batch_size=16", "model.bn_splits=8", "moco.queue_size=64", *hvs])
    assert str(err.value) == ("--set: 'model.bn_splits' leaves BatchNorm groups of optim.batch_size / model.bn_splits "
                              "= 16 / 8 = 2 samples; they need at least 8 (fewer splits or a larger batch)")
    load_config(None, ["optim.batch_size=16", "model.bn_splits=2", "moco.queue_size=64", *hvs])


def test_an_ivf_index_needs_no_more_centroids_than_queue_entries():
    ivf = ["mochi.enabled=true", "mochi.num_hard=64", "mochi.retrieval=faiss", "mochi.faiss_index=ivf"]
    with pytest.raises(ConfigError) as err:
        load_config(None, [*ivf, "moco.queue_size=256", "mochi.faiss_nlist=512", "mochi.faiss_nprobe=16"])
    assert str(err.value) == ("--set: 'mochi.faiss_nlist' must be positive, and at most moco.queue_size=256 with the "
                              "ivf index (its centroids are trained on the queue); got 512")
    load_config(None, [*ivf, "moco.queue_size=256", "mochi.faiss_nlist=256"])
    load_config(None, ["moco.queue_size=256", "mochi.faiss_nlist=512"])  # not used: flat index, MoCHi off


def test_duplicated_keys_are_errors_naming_the_key_lines_and_file(tmp_path):
    cases = {
        "optim:\n  lr: 0.1\n  lr: 0.2\n": "'optim.lr' is given twice (line 3; first on line 2)",
        "name: a\nseed: 1\nname: b\n": "'name' is given twice (line 3; first on line 1)",
        "optim:\n  lr: 0.1\noptim:\n  epochs: 2\n": "'optim' is given twice (line 3; first on line 1)",
        "data: {root: /a, root: /b}\n": "'data.root' is given twice (line 1; first on line 1)",
        "stages:\n  - name: a\n    optim:\n      lr: 0.1\n      lr: 0.2\n":
            "'stages[0].optim.lr' is given twice (line 5; first on line 4)",
    }
    for text, message in cases.items():
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value) == f"{path}: {message}"


def test_a_merged_key_may_be_overridden(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\nstages:\n  - &s {name: a, seed: 1}\n  - {<<: *s, name: b}\n"))
    assert [(stage["name"], stage["seed"]) for stage in cfg.stages] == [("a", 1), ("b", 1)]


def test_an_override_that_is_not_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^--set: the value of 'data.mean' is not valid YAML: '\[1, 2'$"):
        load_config(None, ["data.mean=[1, 2"])
    with pytest.raises(ConfigError, match=r"^--set: in the value of 'data', 'mean' is given twice \(line 1; first on"):
        load_config(None, ["data={mean: [1, 1, 1], mean: [0, 0, 0]}"])


@pytest.mark.parametrize(
    ("override", "error"),
    [("eval.batch_size=0", "error: --set: 'eval.batch_size' must be positive; got 0"),
     ("data.mean=[1, 2", "error: --set: the value of 'data.mean' is not valid YAML: '[1, 2'"),
     ("optim.lr=.inf", "error: --set: 'optim.lr' must be a finite number, got inf")],
)
def test_pretraining_refuses_bad_values_in_one_line_before_creating_the_run_folder(
        tiny_overrides, tmp_path, capsys, override, error):
    from mochi_hvs.pretrain import main as pretrain

    assert pretrain(["--set", *tiny_overrides, "optim.epochs=1", override]) == 2
    assert capsys.readouterr().err.strip() == error
    assert list(tmp_path.iterdir()) == []
