"""Typed configuration: dataclasses, strict YAML loading, dotted CLI overrides, validation."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import itertools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from .errors import ConfigError
from .evaluator_settings import (
    LABEL_SOURCES,
    DetectionSettings,
    LinearSettings,
    SelectSettings,
    SemisupSettings,
    TransferabilitySettings,
    TransferSettings,
    setting,
    task_name_and_root,
)
from .objectives.registry import OBJECTIVES, Needs, declared
from .objectives.registry import sections as objective_sections
from .run_files import LAST
from .strict_yaml import DuplicateKeyError, load_yaml

if TYPE_CHECKING:
    from .models.backbone_facts import BackboneFacts

__all__ = ["METHOD_SECTIONS", "Config", "ConfigError", "LocalCrops", "MethodConfig", "ObjectiveConfig", "Section",
           "backbone_facts_of", "load_config", "local_crops", "objective_needs", "registered_sections", "setting",
           "validate", "views_per_image"]


@dataclass
class DataConfig:
    """Which images to train on and how views are made."""

    name: str = "fashion_mnist"  # fashion_mnist | mnist5k | sklearn_digits | opencv_digits | cifar10 | ... (CHOICES)
    root: str | None = None  # None: the dataset's default location
    image_size: int = 28
    augmentation: str = "mocov2"  # mocov2 (aug+, with blur) | mocov2_small (aug+ without blur)
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # RandomResizedCrop area range (aug+: 0.2-1)
    # ColorJitter strengths: brightness, contrast, saturation, hue (0: not jittered); aug+: 0.4, 0.4, 0.4, 0.1
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    augment_on: str = "auto"  # auto (device for in-memory sets) | device (batched, on the training device) | cpu
    train_subset: int | None = None  # train on a fixed, class-balanced subset of this size
    workers: int = 2
    skip_unreadable: bool = False  # undecodable image files: error (False) or warn and use the next readable one
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    """Backbone and projection head."""

    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 | timm/<name> | torchvision/<name> (models/arch.py)
    small_stem: bool = False  # resnet18|34|50: 3x3 stride-1 first conv, no max-pool (CIFAR-style)
    # timm/ and torchvision/ backbones: keyword arguments of timm.create_model or torchvision.models.get_model (e.g.
    # {img_size: 28, patch_size: 4} for a ViT at 28 px)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    frozen_patch_embed: bool = False  # MoCo v3: a ViT's patch projection stays at its random initialisation
    head: str = "mlp"  # mlp (MoCo-v2) | mlp_bn (BYOL's: BatchNorm after the hidden layer) | linear (MoCo-v1)
    head_hidden_dim: int | None = None  # None: the backbone's feature width
    feature_dim: int = 128
    bn_splits: int = 8  # BatchNorm groups across the global batch; each process gets bn_splits / world_size
    sync_bn: bool = False  # under torchrun: SyncBatchNorm over all processes instead of per-process groups
    init_from: str | None = None  # HPT: start from this backbone (our checkpoint, exported, official MoCo, torchvision)
    train_bn_only: bool = False  # HPT-BN: backbone frozen except BatchNorm layers (the head trains fully)


@dataclass(frozen=True)
class LocalCrops:
    """Small crops the data path draws per image beside its views (multi-crop): how many, their side in px and the
    range of the image's area each one covers."""

    count: int
    size: int
    scale: tuple[float, float]


@dataclass
class Section:
    """A config section declared in the module of what it configures (an objective, a training method) and registered
    with it: every Config holds one under its key (`registered_sections`), in recipes, --set and stored configs.
    Config validation checks the choices its fields declare (`setting(default, help, choices)`), then calls its
    `validate`."""

    def validate(self, cfg: Config, source: str) -> None:
        """Reject impossible values of this section (and combinations with the rest of `cfg`)."""

    @staticmethod
    def check(condition: bool, source: str, key: str, message: str) -> None:
        """A ConfigError "<source>: '<key>' <message>" unless `condition` holds."""
        _check(condition, source, key, message)


@dataclass
class ObjectiveConfig(Section):
    """The config section of an objective (mochi_hvs/objectives/), declared in the objective's own module as its
    `section` and keyed by its section_key or name (contrastive's `moco`)."""

    name: ClassVar[str] = ""  # the section's key: its objective's section_key or name (registry.register sets it)


@dataclass
class MethodConfig(Section):
    """The config section of a training method (mochi_hvs/methods/), declared in the method's own module as its
    `config_section` and keyed by its `section` (methods/base.py's register records it in METHOD_SECTIONS): whether
    it runs, the views per image it needs from the data path, and its own validation."""

    enabled: bool = setting(False, "train with this method")
    needs_queue: ClassVar[bool] = False  # it reads the objective's memory queue (MoCHi mixes negatives from it)
    # the Needs flag of objectives without method hooks whose step reads this method's data itself (multi-crop's
    # small crops: "local_views"); None: only objectives with method hooks take it
    read_by: ClassVar[str | None] = None

    def views_per_image(self) -> int:
        """Views the data path must draw per image while this method is enabled (a pair by default)."""
        return 2

    def local_crops_per_image(self, cfg: Config) -> LocalCrops | None:
        """Small crops the data path must draw per image besides the views while this method is enabled; none by
        default."""
        return None


# The config sections of the registered training methods by key, in their hook order: methods/base.py's `register`
# records each method's `config_section` here, so that this module names no method (and imports none).
METHOD_SECTIONS: dict[str, type[MethodConfig]] = {}


def registered_sections() -> dict[str, type[Section]]:
    """The sections every Config holds besides its own fields, by key: the objectives' (objectives/registry.py), then
    the methods' in their hook order (the order to_dict stores them in, after `model`)."""
    return objective_sections() | METHOD_SECTIONS


@dataclass
class OptimConfig:
    """The optimiser (SGD or AdamW), learning-rate schedule and run length."""

    name: str = "sgd"  # sgd | adamw (MoCo v3's, for ViTs)
    batch_size: int = 256  # global batch (summed over processes)
    lr: float = 0.06  # learning rate at base_batch_size
    base_batch_size: int | None = None  # None: lr is used as is; else lr * batch_size / base_batch_size
    momentum: float = 0.9  # SGD's
    weight_decay: float = 5e-4  # decoupled (AdamW's) with adamw
    epochs: int = 200
    steps: int | None = None  # run length in optimisation steps; when set it replaces optim.epochs (HPT: 5000)
    warmup_epochs: float = 0.0
    schedule: str = "cosine"  # cosine | step | constant
    lr_milestones: list[int] = field(default_factory=lambda: [120, 160])  # epochs, for step
    grad_clip: float | None = None  # max global gradient norm


@dataclass
class EvalConfig:
    """Evaluation: the kNN monitor used during and at the end of training (and by eval/knn.py), and the sections
    of the other evaluators (eval/linear.py, eval/semisup.py, eval/select_labels.py, eval/detection.py,
    eval/transfer.py, eval/transferability.py)."""

    knn_every: int = setting(0, "epochs between kNN evaluations during training (0: only at the end)")
    knn_every_steps: int = setting(0, "steps between kNN evaluations, for runs measured in steps (0: off)")
    knn_k: int | list[int] = setting([20, 200], "neighbours voting, one value or a list (the largest is logged "
                                                "during training)")
    knn_temperature: float = setting(0.07, "temperature T of the exp(similarity / T) vote weights")
    knn_backend: str = setting("auto", "search backend: auto (Faiss when installed), faiss or torch (chunked matrix "
                                       "products)")
    knn_fp16: bool = setting(False, "half-precision bank in the search (halves its memory)")
    knn_train_subset: int | None = setting(None, "class-balanced subset of the labelled training images (the bank)")
    knn_test_subset: int | None = setting(None, "class-balanced subset of the test images (the queries)")
    knn_baseline: bool = setting(True, "also evaluate the backbone the run started from (random init or "
                                       "init_from) at the end of training")
    knn_pixels: bool = setting(True, "also evaluate the raw pixels at the end of training (the floor)")
    analysis_every: int = setting(0, "epochs between alignment/uniformity of embeddings on a held-out batch (0: off)")
    analysis_samples: int = setting(512, "size of that held-out batch (test split)")
    batch_size: int = setting(512, "images per batch of feature extraction and testing")
    linear: LinearSettings = field(default_factory=LinearSettings)
    semisup: SemisupSettings = field(default_factory=SemisupSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    transferability: TransferabilitySettings = field(default_factory=TransferabilitySettings)

    @property
    def knn_ks(self) -> list[int]:
        """The configured k values, distinct and sorted (knn_k holds one value or a list)."""
        return sorted(set(self.knn_k if isinstance(self.knn_k, list) else [self.knn_k]))


@dataclass
class CollapseConfig:
    """The collapse monitor (mochi_hvs/collapse.py): at every log point, the step's embeddings and loss are read for
    collapse; a run whose representation stays collapsed stops like a diverged one."""

    stop: bool = setting(True, "stop a run whose representation stays collapsed for `patience` checks (exit 2, "
                               "naming the step and the last good checkpoint); false: warn and keep going")
    patience: int = setting(5, "consecutive collapsed checks (one per log point) that stop the run")
    min_std: float = setting(0.02, "a check is collapsed when the per-dimension std of the L2-normalised embeddings "
                                   "falls below this many 1 / sqrt(dim) (spread embeddings: about 1)")
    min_rank: float = setting(1.5, "... or their RankMe effective rank falls below this (one direction: 1)")
    loss_tolerance: float = setting(1e-4, "... or the loss lies within this of its uniform value (ln of the number "
                                          "of logits: every logit equal)")


@dataclass
class Config:
    """A whole pretraining run."""

    name: str = "moco_v2"
    output_dir: str = "runs"
    seed: int = 0
    # a registered objective (mochi_hvs/objectives/): contrastive: MoCo-v2 (and the enabled methods) | supervised:
    # the same backbone, views and optimiser trained with labels and a linear classifier (the supervised reference)
    # | byol | twist | msbreg | relicv2. An objective with settings has its section here under its key (its name, or
    # its section_key: contrastive's is `moco`), and so has every training method (mochi_hvs/methods/: its section's
    # name), added by __post_init__.
    objective: str = "contrastive"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else off) | none | bf16 | fp16
    channels_last: bool | None = None  # None: on for CUDA unless BatchNorm is split on the device (see train/build.py)
    compile: bool = False  # torch.compile both encoders (in place: checkpoints keep their keys)
    log_every: int = 20  # steps between logged metrics
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: end of epoch only)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    # Staged (HPT) runs: each entry overrides this config for one stage (name, data, optim, model...);
    # stages run in order, each initialised from the previous stage's backbone.
    stages: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Each registered objective's and method's config section, at its defaults."""
        for name, section in registered_sections().items():
            if not hasattr(self, name):
                setattr(self, name, section())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and to_dict(self) == to_dict(other)

    @property
    def run_dir(self) -> Path:
        """Folder of this run's checkpoints, TensorBoard events and metrics."""
        return Path(self.output_dir) / self.name


CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("fashion_mnist", "mnist5k", "sklearn_digits", "opencv_digits", "cifar10", "cifar100", "stl10",
                  "imagefolder"),
    "data.augmentation": ("mocov2", "mocov2_small"),
    "data.augment_on": ("auto", "device", "cpu"),
    "model.head": ("mlp", "mlp_bn", "linear"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("cosine", "step", "constant"),
    "amp": ("auto", "none", "bf16", "fp16"),
    "eval.knn_backend": ("auto", "faiss", "torch"),
}


# Fewest samples per BatchNorm group: below 8, BN's error rises steeply (Wu & He, Group Normalization, 2018, fig. 1),
# and at 28 px ResNet's last stage is 1x1, so a group's statistics come from its samples alone.
MIN_BN_GROUP = 8


# Settings renamed or retired since checkpoints were first written. A checkpoint's stored config is upgraded
# (upgrade_stored), so older runs still resume and evaluate; a recipe or --set using an old name is told the new one.
RENAMED = {"eval.knn_random_baseline": "eval.knn_baseline"}
RETIRED = {"data.num_views": "the views per image follow from the enabled methods (hvs.num_views with HVS)",
           "eval.linear.standardize": "the linear probe on cached features (eval.linear.mode=lbfgs) always "
                                      "standardises them"}
# Values retired the same way: key -> {old value: new value}.
RETIRED_VALUES = {"eval.linear.mode": {"cached": "lbfgs"}}


def _parent(values: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping that holds dotted `key` in nested `values` (None when a level is missing), and the last name."""
    *parents, name = key.split(".")
    node: Any = values
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), name


def upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A stored config (checkpoint) with renamed settings under their new names and retired ones dropped."""
    values = copy.deepcopy(values)
    for old, new in RENAMED.items():
        node, name = _parent(values, old)
        if node is not None and name in node:
            node.setdefault(new.split(".")[-1], node.pop(name))
    for old in RETIRED:
        node, name = _parent(values, old)
        if node is not None:
            node.pop(name, None)
    for key, renamed in RETIRED_VALUES.items():
        node, name = _parent(values, key)
        if node is not None and node.get(name) in renamed:
            node[name] = renamed[node[name]]
    return values


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; numbers in any notation are accepted where float is expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(tp) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:
            return _coerce(value, options[0], key, source)
        for option in options:
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is float:
        return _finite_float(value, key, source)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _finite_float(value: Any, key: str, source: str) -> float:
    """An int, float or numeric text as a finite float (YAML 1.1 reads `1e-4` and `1e6` as text); never a bool."""
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
        except OverflowError:  # an int beyond float range
            number = math.inf
    if number is None:
        raise ConfigError(f"{source}: '{key}' must be float, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
    return number


def _apply(obj: Any, values: dict[str, Any], prefix: str, source: str) -> None:
    """Write a nested mapping onto a dataclass instance, strictly."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if isinstance(obj, Config):
        names += list(registered_sections())
    for name, value in values.items():
        key = prefix + str(name)
        if name not in names:
            if key in RENAMED:
                raise ConfigError(f"{source}: '{key}' was renamed '{RENAMED[key]}'")
            if key in RETIRED:
                raise ConfigError(f"{source}: '{key}' no longer exists: {RETIRED[key]}")
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, key + ".", source)
        else:
            setattr(obj, name, _coerce(value, hints[name], key, source))


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str,
                         example: str = "optim.lr=0.06 data.root=/data device=cpu") -> None:
    """The `--config FILE` and `--set key=value ...` options shared by the command-line entry points; `example`
    shows overrides that command reads."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"override config values, e.g. --set {example}")


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set: expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        return key, load_yaml(raw) if raw.strip() else None
    except DuplicateKeyError as err:
        raise ConfigError(f"--set: in the value of '{key}', {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--set: the value of '{key}' is not valid YAML: {raw!r}") from err


def _expects_text(cfg: Config, key: str) -> bool:
    """True when the dotted key names a str (or optional str) field."""
    node: Any = cfg
    *parents, name = key.split(".")
    for part in parents:
        node = getattr(node, part, None)
        if not dataclasses.is_dataclass(node):
            return False
    tp = typing.get_type_hints(type(node)).get(name)
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = load_yaml(path.read_text()) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return values


def _apply_file(cfg: Config, path: Path, chain: tuple[Path, ...] = ()) -> None:
    """Apply a recipe onto cfg, after the recipe it names as `base:` (a path relative to it), recursively."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: 'base' chain loops back to itself ({' -> '.join(str(p) for p in chain)})")
    values = _read_yaml(path)
    base = values.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be the path of another recipe, got {base!r}")
        _apply_file(cfg, path.parent / base, (*chain, path))
    for stage in values.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("base"), str):
            stage["base"] = str((path.parent / stage["base"]).resolve())  # a stage's recipe, relative to this file
    _apply(cfg, values, "", str(path))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict[str, Any] | None = None) -> Config:
    """Build a Config from a YAML recipe (and its `base:` chain) and `key=value` overrides, then validate it.

    defaults: values applied first, before the recipe (e.g. settings stored in a checkpoint).
    """
    cfg = Config()
    if defaults is not None:
        _apply(cfg, upgrade_stored(defaults), "", "<checkpoint config>")
    if path is not None:
        path = Path(path)
        _apply_file(cfg, path)
    for text in overrides or []:
        key, value = parse_override(text)
        if value is not None and not isinstance(value, str) and _expects_text(cfg, key):
            value = text.split("=", 1)[1].strip()  # name=off or name=2024 stay text, not YAML's bool / int
        _apply(cfg, _nest(key, value), "", "--set")
    sources = [name for name, given in (("<checkpoint config>", defaults), (str(path), path), ("--set", overrides))
               if given]
    validate(cfg, " + ".join(sources) or "<defaults>")
    return cfg


def _check(condition: bool, source: str, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: '{key}' {message}")


def validate(cfg: Config, source: str) -> None:
    """Reject impossible values with a message that names the key and the file."""
    _check(cfg.objective in OBJECTIVES, source, "objective",
           f"must be one of {', '.join(_objective_names())}; got {cfg.objective!r}")
    for key, options in CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        _check(value in options, source, key, f"must be one of {', '.join(options)}; got {value!r}")
    for name in registered_sections():
        _validate_choices(getattr(cfg, name), f"{name}.", source)
    _check(
        cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"),
        source, "device", f"must be auto, cpu, cuda or cuda:N; got {cfg.device!r}",
    )
    _check(0 <= cfg.seed < 2**63, source, "seed", f"must be in [0, 2**63); got {cfg.seed}")
    _validate_optim(cfg, source)
    _validate_model(cfg, source)
    _validate_data(cfg, source)
    _validate_backbone(cfg, source)
    _validate_eval(cfg, source)
    _validate_collapse(cfg.collapse, source)
    for name in objective_sections():
        getattr(cfg, name).validate(cfg, source)
    _validate_methods(cfg, source)
    stage_configs(cfg, source)  # each stage must be a valid run of its own
    _check(cfg.log_every > 0, source, "log_every", "must be positive")
    _check(cfg.checkpoint_every >= 0, source, "checkpoint_every", "must be >= 0")


def _objective_names(**needed: bool) -> list[str]:
    """The registered objectives, or those whose needs have the values given (e.g. queue=True)."""
    return [name for name, cls in OBJECTIVES.items()
            if all(getattr(cls.needs, need) == value for need, value in needed.items())]


def objective_needs(cfg: Config) -> Needs:
    """What the configured objective needs (mochi_hvs/objectives/registry.py)."""
    return declared(cfg.objective).needs_for(cfg)


def _validate_methods(cfg: Config, source: str) -> None:
    """Each method section valid, and each enabled one given an objective that takes methods (with a queue where
    the method reads one)."""
    needs = objective_needs(cfg)
    for name, section in method_sections(cfg).items():
        section.validate(cfg, source)
        if not section.enabled:
            continue
        with_queue = "|".join(_objective_names(queue=True, methods=True))
        _check(needs.queue or not section.needs_queue, source, f"{name}.enabled",
               f"needs an objective with a memory queue (objective={with_queue}); objective={cfg.objective} has none")
        takers = _objective_names(methods=True)
        if section.read_by:
            takers += _objective_names(**{section.read_by: True})
        _check(cfg.objective in takers, source, f"{name}.enabled",
               f"needs objective={'|'.join(dict.fromkeys(takers))} (objective={cfg.objective} takes no methods)")


def _validate_optim(cfg: Config, source: str) -> None:
    optim = cfg.optim
    _check(optim.batch_size > 0, source, "optim.batch_size", f"must be positive; got {optim.batch_size}")
    _check(optim.lr > 0, source, "optim.lr", f"must be > 0; got {optim.lr}")
    _check(optim.base_batch_size is None or optim.base_batch_size > 0, source, "optim.base_batch_size",
           f"must be null or positive; got {optim.base_batch_size}")
    _check(0 <= optim.momentum < 1, source, "optim.momentum", f"must be in [0, 1) (SGD momentum); got {optim.momentum}")
    _check(optim.weight_decay >= 0, source, "optim.weight_decay", "must be >= 0")
    _check(optim.epochs > 0, source, "optim.epochs", f"must be positive; got {optim.epochs}")
    _check(optim.steps is None or optim.steps > 0, source, "optim.steps", f"must be null or positive; "
           f"got {optim.steps}")
    _check(0 <= optim.warmup_epochs <= optim.epochs, source, "optim.warmup_epochs",
           f"must be in [0, optim.epochs]; got {optim.warmup_epochs}")
    milestones = optim.lr_milestones
    _check(all(a < b for a, b in itertools.pairwise([0, *milestones])), source, "optim.lr_milestones",
           f"must be positive epochs in increasing order; got {milestones}")
    _check(optim.grad_clip is None or optim.grad_clip > 0, source, "optim.grad_clip", "must be > 0 or null")


def _validate_model(cfg: Config, source: str) -> None:
    model, batch = cfg.model, cfg.optim.batch_size
    _check(model.bn_splits >= 1 and batch % model.bn_splits == 0, source, "model.bn_splits",
           f"must be >= 1 and divide optim.batch_size={batch}; got {model.bn_splits}")
    _check(batch // model.bn_splits >= MIN_BN_GROUP, source, "model.bn_splits",
           f"leaves BatchNorm groups of optim.batch_size / model.bn_splits = {batch} / {model.bn_splits} = "
           f"{batch // model.bn_splits} samples; they need at least {MIN_BN_GROUP} (fewer splits or a larger batch)")
    _check(model.feature_dim > 0, source, "model.feature_dim", "must be positive")
    _check(model.head_hidden_dim is None or model.head_hidden_dim > 0, source, "model.head_hidden_dim",
           f"must be null or positive; got {model.head_hidden_dim}")
    _check(not model.sync_bn or model.bn_splits == 1, source, "model.sync_bn",
           f"synchronises BatchNorm over all processes; set model.bn_splits=1 with it (got {model.bn_splits})")


def _validate_backbone(cfg: Config, source: str) -> None:
    """model.arch names a backbone (the closest name when not); the ResNets' small stem and the libraries'
    arch_kwargs each where it applies; a library backbone builds, encodes data.image_size px images and has what
    the BatchNorm and patch-projection settings act on."""
    from .models.arch import RESNETS, arch_problem  # here: loading a config does not import torch (nor timm)

    model = cfg.model
    problem = arch_problem(model.arch)
    _check(problem is None, source, "model.arch", problem or "")
    arch = f"model.arch={model.arch}"
    if model.arch in RESNETS:
        _check(not model.arch_kwargs, source, "model.arch_kwargs", f"applies to timm/<name> and torchvision/<name> "
               f"backbones ({arch} is fitted to small images by model.small_stem); got {model.arch_kwargs}")
        _check(not model.frozen_patch_embed, source, "model.frozen_patch_embed",
               f"needs a backbone with a patch projection (a ViT's patch_embed); {arch} has none")
        return
    _check(not model.small_stem, source, "model.small_stem",
           f"applies to {'|'.join(RESNETS)}; fit {arch} to small images with model.arch_kwargs")
    facts = backbone_facts_of(cfg, source)
    if not facts.batchnorm:
        _check(model.bn_splits == 1, source, "model.bn_splits", f"splits the backbone's BatchNorm into groups, and "
               f"{arch} has no BatchNorm layer (it normalises otherwise, e.g. LayerNorm); set model.bn_splits=1")
        _check(not model.train_bn_only, source, "model.train_bn_only",
               f"trains the backbone's BatchNorm layers only, and {arch} has none")
        shuffles = cfg.moco.shuffle_bn and objective_needs(cfg).momentum_encoder
        _check(not shuffles or model.head == "mlp_bn", source, "moco.shuffle_bn",
               f"shuffles the keys for BatchNorm, and neither {arch} nor model.head={model.head} has any; set "
               "moco.shuffle_bn=false (or model.head=mlp_bn)")
    _check(not (model.sync_bn and facts.fused_batchnorm), source, "model.sync_bn",
           f"cannot convert the BatchNorm layers of {arch}: they carry their activation (timm's BatchNormAct2d), "
           "which SyncBatchNorm would drop")
    _check(not model.frozen_patch_embed or facts.patch_embed, source, "model.frozen_patch_embed",
           f"needs a backbone with a patch projection (a ViT's patch_embed); {arch} has none")


def backbone_facts_of(cfg: Config, source: str) -> BackboneFacts:
    """The BackboneFacts of a timm/ or torchvision/ backbone at data.image_size (models/backbone_facts.py), or a
    ConfigError naming the library's reason when it cannot be built or cannot encode that size."""
    from .models.backbone_facts import BackboneBuildError, BackboneInputError, backbone_facts

    model, size = cfg.model, cfg.data.image_size
    try:
        return backbone_facts(model.arch, model.small_stem, model.arch_kwargs, size)
    except BackboneBuildError as err:
        key = "model.arch_kwargs" if model.arch_kwargs else "model.arch"
        raise ConfigError(f"{source}: '{key}' cannot build model.arch={model.arch} with model.arch_kwargs="
                          f"{model.arch_kwargs}: {err}") from err
    except BackboneInputError as err:
        raise ConfigError(
            f"{source}: 'model.arch' {model.arch} cannot encode data.image_size={size} px images ({err}); fit it with "
            f"model.arch_kwargs, e.g. {{img_size: {size}, patch_size: 4}} for a ViT, {{patch_size: 1}} for a "
            "ConvNeXt") from err


def _validate_data(cfg: Config, source: str) -> None:
    data, batch = cfg.data, cfg.optim.batch_size
    _check(data.image_size >= 8, source, "data.image_size", f"must be >= 8; got {data.image_size}")
    scale = data.crop_scale
    _check(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, source, "data.crop_scale",
           f"must be [low, high] with 0 < low <= high <= 1; got {scale}")
    jitter = data.color_jitter
    _check(len(jitter) == 4 and all(math.isfinite(v) and v >= 0 for v in jitter) and jitter[3] <= 0.5, source,
           "data.color_jitter", "must be [brightness, contrast, saturation, hue], each finite and >= 0 (0: not "
           f"jittered), hue <= 0.5; got {jitter}")
    _check(data.workers >= 0, source, "data.workers", "must be >= 0")
    _check(len(data.mean) == 3 and len(data.std) == 3, source, "data.mean", "and data.std need 3 values")
    _check(min(data.std) > 0, source, "data.std", f"must be positive (images are divided by it); got {data.std}")
    _check(data.train_subset is None or data.train_subset >= batch, source, "data.train_subset",
           f"must be null or at least one batch ({batch})")


def _validate_eval(cfg: Config, source: str) -> None:
    ev = cfg.eval
    _check(ev.knn_every >= 0, source, "eval.knn_every", f"must be >= 0; got {ev.knn_every}")
    _check(ev.knn_every_steps >= 0, source, "eval.knn_every_steps", "must be >= 0")
    knn_k = ev.knn_ks
    _check(bool(knn_k) and min(knn_k) > 0, source, "eval.knn_k", f"must be positive (one value or a list); got {knn_k}")
    _check(ev.knn_temperature > 0, source, "eval.knn_temperature", "must be > 0")
    for key, subset in (("eval.knn_train_subset", ev.knn_train_subset), ("eval.knn_test_subset", ev.knn_test_subset)):
        _check(subset is None or subset > 0, source, key, f"must be null or positive; got {subset}")
    _check(ev.knn_train_subset is None or max(knn_k) <= ev.knn_train_subset, source, "eval.knn_k",
           f"must not exceed eval.knn_train_subset={ev.knn_train_subset} (the size of the kNN bank); got {knn_k}")
    _check(ev.batch_size > 0, source, "eval.batch_size", f"must be positive; got {ev.batch_size}")
    _check(ev.analysis_every >= 0, source, "eval.analysis_every", "must be >= 0")
    _check(ev.analysis_samples >= 2, source, "eval.analysis_samples", "must be >= 2")
    for name in ("linear", "semisup", "select", "detection", "transfer", "transferability"):
        _validate_choices(getattr(ev, name), f"eval.{name}.", source)
    _validate_linear(ev.linear, source)
    _validate_semisup(ev.semisup, source)
    _validate_select(ev.select, source)
    _validate_detection(ev.detection, source)
    _validate_transfer(ev.transfer, source)
    _validate_transferability(ev.transferability, source)


def _validate_collapse(collapse: CollapseConfig, source: str) -> None:
    p = "collapse."
    _check(collapse.patience >= 1, source, p + "patience", f"must be >= 1; got {collapse.patience}")
    for name in ("min_std", "min_rank", "loss_tolerance"):
        _check(getattr(collapse, name) >= 0, source, p + name, f"must be >= 0 (0: not checked); got "
               f"{getattr(collapse, name)}")


def _validate_choices(section: Any, prefix: str, source: str) -> None:
    """Every field of a section that declares choices (in its metadata) holds one of them."""
    for f in dataclasses.fields(section):
        options, value = f.metadata.get("choices"), getattr(section, f.name)
        if options is None:
            continue
        successor = RETIRED_VALUES.get(prefix + f.name, {}).get(value)
        _check(value in options, source, prefix + f.name,
               f"must be one of {', '.join(options or ())}; got {value!r}"
               + (f" (replaced by {successor!r})" if successor else ""))


def _validate_supervised(section: LinearSettings | SemisupSettings, prefix: str, source: str) -> None:
    """The settings the linear probe and semi-supervised fine-tuning share."""
    _check(0 <= section.momentum < 1, source, prefix + "momentum", f"must be in [0, 1); got {section.momentum}")
    _check(section.weight_decay >= 0, source, prefix + "weight_decay", f"must be >= 0; got {section.weight_decay}")
    _check(0 <= section.seed < 2**63, source, prefix + "seed", f"must be in [0, 2**63); got {section.seed}")
    _check(section.epochs > 0, source, prefix + "epochs", f"must be positive; got {section.epochs}")
    _check(section.test_subset is None or section.test_subset > 0, source, prefix + "test_subset",
           f"must be null or positive; got {section.test_subset}")


def _validate_linear(linear: LinearSettings, source: str) -> None:
    p = "eval.linear."
    _validate_supervised(linear, p, source)
    _check(linear.lr > 0, source, p + "lr", f"must be > 0; got {linear.lr}")
    _check(linear.batch_size > 0, source, p + "batch_size", f"must be positive; got {linear.batch_size}")
    _check(bool(linear.l2_grid) and min(linear.l2_grid) > 0, source, p + "l2_grid",
           f"must list positive L2 strengths; got {linear.l2_grid}")
    _check(0 < linear.val_fraction < 1, source, p + "val_fraction", f"must be in (0, 1); got {linear.val_fraction}")
    _check(linear.max_iter > 0, source, p + "max_iter", f"must be positive; got {linear.max_iter}")
    _check(linear.tolerance > 0, source, p + "tolerance", f"must be > 0; got {linear.tolerance}")
    _check(linear.train_subset is None or linear.train_subset > 0, source, p + "train_subset",
           f"must be null or positive; got {linear.train_subset}")
    _check(linear.sklearn_c > 0, source, p + "sklearn_c", f"must be > 0; got {linear.sklearn_c}")
    _check(linear.sklearn_max_iter > 0, source, p + "sklearn_max_iter",
           f"must be positive; got {linear.sklearn_max_iter}")


def _validate_semisup(semisup: SemisupSettings, source: str) -> None:
    p = "eval.semisup."
    _validate_supervised(semisup, p, source)
    _check(semisup.batch_size > 0, source, p + "batch_size", f"must be positive; got {semisup.batch_size}")
    _check(semisup.lr_backbone >= 0, source, p + "lr_backbone", f"must be >= 0; got {semisup.lr_backbone}")
    _check(semisup.lr_head > 0, source, p + "lr_head", f"must be > 0; got {semisup.lr_head}")
    _check(0 <= semisup.warmup_epochs <= semisup.epochs, source, p + "warmup_epochs",
           f"must be in [0, eval.semisup.epochs={semisup.epochs}]; got {semisup.warmup_epochs}")
    fraction, per_class = semisup.label_fraction, semisup.labels_per_class
    _check(fraction is None or 0 < fraction <= 1, source, p + "label_fraction",
           f"must be null or in (0, 1]; got {fraction}")
    _check(per_class is None or per_class > 0, source, p + "labels_per_class",
           f"must be null or positive; got {per_class}")
    _check(semisup.split_file != "", source, p + "split_file", "must be null or a file name; got ''")
    _check(semisup.random_labels is None or semisup.random_labels > 0, source, p + "random_labels",
           f"must be null or positive; got {semisup.random_labels}")
    given = semisup.label_sources()
    if len(given) > 1:
        raise ConfigError(f"{source}: '{p}{given[1]}' cannot be set together with '{p}{given[0]}': give exactly one "
                          f"of {', '.join(p + name for name in LABEL_SOURCES)}")


def _validate_select(select: SelectSettings, source: str) -> None:
    p, s = "eval.select.", select
    for name in ("budget", "pool"):
        _check(getattr(s, name) is None or getattr(s, name) > 0, source, p + name,
               f"must be null or positive; got {getattr(s, name)}")
    for name in ("knn_k", "kmeans_iterations", "restarts", "iterations"):
        _check(getattr(s, name) > 0, source, p + name, f"must be positive; got {getattr(s, name)}")
    _check(s.reg_lambda >= 0, source, p + "reg_lambda", f"must be >= 0; got {s.reg_lambda}")
    _check(s.reg_alpha > 0, source, p + "reg_alpha", f"must be > 0; got {s.reg_alpha}")
    _check(0 <= s.reg_momentum < 1, source, p + "reg_momentum", f"must be in [0, 1); got {s.reg_momentum}")
    _check(0 <= s.seed < 2**31, source, p + "seed", f"must be in [0, 2**31) (Faiss's k-means seed); got {s.seed}")


def _validate_detection(detection: DetectionSettings, source: str) -> None:
    p, d = "eval.detection.", detection
    for name in ("iterations", "batch_size", "min_size", "proposals", "roi_batch"):
        _check(getattr(d, name) > 0, source, p + name, f"must be positive; got {getattr(d, name)}")
    _check(d.lr > 0, source, p + "lr", f"must be > 0; got {d.lr}")
    _check(0 <= d.momentum < 1, source, p + "momentum", f"must be in [0, 1); got {d.momentum}")
    _check(d.weight_decay >= 0, source, p + "weight_decay", f"must be >= 0; got {d.weight_decay}")
    _check(d.warmup_iterations >= 0, source, p + "warmup_iterations", f"must be >= 0; got {d.warmup_iterations}")
    _check(all(a < b for a, b in itertools.pairwise([0, *d.milestones])) and all(m <= 1 for m in d.milestones),
           source, p + "milestones", f"must be fractions of training in (0, 1], increasing; got {d.milestones}")
    _check(0 <= d.trainable_layers <= 5, source, p + "trainable_layers",
           f"must be in [0, 5] (ResNet stages); got {d.trainable_layers}")
    _check(d.max_size >= d.min_size, source, p + "max_size",
           f"must be >= eval.detection.min_size={d.min_size}; got {d.max_size}")
    _check(d.workers >= 0, source, p + "workers", f"must be >= 0; got {d.workers}")
    _check(0 <= d.seed < 2**63, source, p + "seed", f"must be in [0, 2**63); got {d.seed}")


def _validate_tasks(tasks: list[str], key: str, source: str) -> None:
    """A non-empty list of distinct tasks, each a known dataset name as NAME or NAME=ROOT."""
    unknown = [name for name in (task_name_and_root(task)[0] for task in tasks) if name not in CHOICES["data.name"]]
    _check(bool(tasks), source, key, "must list at least one task")
    _check(not unknown, source, key, f"must name datasets ({', '.join(CHOICES['data.name'])}), each as NAME "
           f"or NAME=ROOT; got {unknown[0] if unknown else ''!r}")
    repeated = sorted({task for task in tasks if tasks.count(task) > 1})
    _check(not repeated, source, key, f"lists {repeated[0] if repeated else ''!r} twice")


def _validate_transfer(transfer: TransferSettings, source: str) -> None:
    p, t = "eval.transfer.", transfer
    _validate_tasks(t.tasks, p + "tasks", source)
    _check(t.ways >= 2, source, p + "ways", f"must be >= 2; got {t.ways}")
    _check(bool(t.shots) and min(t.shots) > 0 and len(set(t.shots)) == len(t.shots), source, p + "shots",
           f"must be distinct positive numbers; got {t.shots}")
    _check(t.queries > 0, source, p + "queries", f"must be positive; got {t.queries}")
    _check(t.episodes > 1, source, p + "episodes", f"must be >= 2 (the interval needs a spread); got {t.episodes}")
    _check(0 <= t.seed < 2**63, source, p + "seed", f"must be in [0, 2**63); got {t.seed}")


def _validate_transferability(transferability: TransferabilitySettings, source: str) -> None:
    p, t = "eval.transferability.", transferability
    _validate_tasks([t.source], p + "source", source)
    _validate_tasks(t.tasks, p + "tasks", source)
    for name in ("batches", "batch_size"):
        _check(getattr(t, name) > 0, source, p + name, f"must be positive; got {getattr(t, name)}")
    _check(bool(t.parameters) and all(isinstance(prefix, str) for prefix in t.parameters), source, p + "parameters",
           f"must list parameter-name prefixes ('' for all); got {t.parameters}")
    _check(0 <= t.seed < 2**63, source, p + "seed", f"must be in [0, 2**63); got {t.seed}")


def stage_configs(cfg: Config, source: str = "<config>") -> list[Config]:
    """The config of each stage of a staged run: this config, then the recipe the stage names as `base`, then the
    stage's own keys; its folder under output_dir/<name>/, and model.init_from chained to the previous stage's
    checkpoint unless the stage sets one."""
    stages: list[Config] = []
    for index, stage_values in enumerate(cfg.stages):
        where = f"{source}: stages[{index}]"
        overrides = dict(stage_values)
        base = overrides.pop("base", None)
        stage = copy.deepcopy(cfg)
        stage.stages = []
        stage.name = f"stage{index + 1}"
        if base is not None:
            _apply_file(stage, Path(base))
        if "stages" in overrides or stage.stages:
            raise ConfigError(f"{where}: a stage cannot have stages of its own")
        _apply(stage, overrides, "", where)
        stage.output_dir = str(cfg.run_dir)
        if stages and stage.model.init_from is None:
            stage.model.init_from = str(stages[-1].run_dir / LAST)
        validate(stage, where)
        stages.append(stage)
    names = [stage.name for stage in stages]
    _check(len(set(names)) == len(names), source, "stages", f"need distinct names; got {names}")
    return stages


def method_sections(cfg: Config) -> dict[str, MethodConfig]:
    """The config sections of the training methods, by name (enabled or not)."""
    return {name: getattr(cfg, name) for name in METHOD_SECTIONS}


def views_per_image(cfg: Config) -> int:
    """How many views the data path draws per image: a pair, or more when an enabled method needs them."""
    methods = (section.views_per_image() for section in method_sections(cfg).values() if section.enabled)
    return max([2, objective_needs(cfg).views, *methods])


def local_crops(cfg: Config) -> LocalCrops | None:
    """The small crops the data path draws per image besides the views: those an enabled method asks for, or None."""
    return next((crops for section in method_sections(cfg).values()
                 if section.enabled and (crops := section.local_crops_per_image(cfg)) is not None), None)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the config (YAML- and checkpoint-safe), the objectives' and methods' sections after
    `model`."""
    values: dict[str, Any] = {}
    for name, value in dataclasses.asdict(cfg).items():
        values[name] = value
        if name == "model":
            values |= {key: dataclasses.asdict(getattr(cfg, key)) for key in registered_sections()}
    return values
