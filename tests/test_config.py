from pathlib import Path

import pytest

from mochi_hvs.config import ConfigError, config_from_dict, load_config, to_dict

CONFIGS = sorted(p for p in Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml")
                 if "detectron2" not in p.parts)  # detectron2 recipes are in its own format


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


def test_round_trip_through_dict():
    cfg = load_config(None, ["moco.symmetric=true", "optim.grad_clip=1.5"])
    assert config_from_dict(to_dict(cfg)) == cfg


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
