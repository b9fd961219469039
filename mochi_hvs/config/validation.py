"""Config validation: what each setting declares (its choices and bounds, settings.py) checked in every section by one
generic pass, then the rules that involve several settings, each registered section's own `validate`, and each
stage of a staged run as a run of its own. Every error is one line naming the key and where its value came from."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import typing
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..objectives.registry import OBJECTIVES
from ..objectives.registry import sections as objective_sections
from ..run_files import LAST
from .derived import backbone_facts_of, method_sections, objective_names, objective_needs
from .evaluators import LABEL_SOURCES, SemisupSettings, task_name_and_root
from .migrations import RETIRED_VALUES
from .schema import DATASETS, UNLABELLED_DATASETS, Config, section_values
from .settings import check, nullable
from .values import apply_file, apply_values

# Fewest samples per BatchNorm group: below 8, BN's error rises steeply (Wu & He, Group Normalization, 2018, fig. 1),
# and at 28 px ResNet's last stage is 1x1, so a group's statistics come from its samples alone.
MIN_BN_GROUP = 8


def validate(cfg: Config, source: str) -> None:
    """Reject impossible values with a message that names the key and the file."""
    check(cfg.objective in OBJECTIVES, source, "objective",
          f"must be one of {', '.join(objective_names())}; got {cfg.objective!r}")
    for prefix, values in section_values(cfg):
        check_declared(values, prefix, source)
    check(cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"), source, "device",
          f"must be auto, cpu, cuda or cuda:N; got {cfg.device!r}")
    _validate_optim(cfg, source)
    _validate_model(cfg, source)
    _validate_data(cfg, source)
    _validate_backbone(cfg, source)
    _validate_eval(cfg, source)
    for name in objective_sections():
        getattr(cfg, name).validate(cfg, source)
    _validate_methods(cfg, source)
    cfg.continual.validate(cfg, source)
    stage_configs(cfg, source)  # each stage must be a valid run of its own


def check_declared(section: Any, prefix: str, source: str) -> None:
    """Every setting of a section holds one of the choices it declares (naming the successor of a retired value) and
    lies within its bounds."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), prefix + f.name
        options, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
        if options is not None:
            successor = RETIRED_VALUES.get(key, {}).get(value)
            check(value in options, source, key, f"must be one of {', '.join(options)}; got {value!r}"
                  + (f" (replaced by {successor!r})" if successor else ""))
        if bounds is not None:
            check(bounds.holds(value), source, key, f"must be {bounds.describe(nullable(hints[f.name]))}; got {value}")


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
            apply_file(stage, Path(base))
        if "stages" in overrides or stage.stages:
            raise ConfigError(f"{where}: a stage cannot have stages of its own")
        apply_values(stage, overrides, "", where)
        stage.output_dir = str(cfg.run_dir)
        if stages and stage.model.init_from is None:
            stage.model.init_from = str(stages[-1].run_dir / LAST)
        validate(stage, where)
        stages.append(stage)
    names = [stage.name for stage in stages]
    check(len(set(names)) == len(names), source, "stages", f"need distinct names; got {names}")
    return stages


def _validate_methods(cfg: Config, source: str) -> None:
    """Each method section valid, and each enabled one given an objective that takes methods (with a queue where
    the method reads one)."""
    needs = objective_needs(cfg)
    for name, section in method_sections(cfg).items():
        section.validate(cfg, source)
        if not section.enabled:
            continue
        with_queue = "|".join(objective_names(queue=True, methods=True))
        check(needs.queue or not section.needs_queue, source, f"{name}.enabled",
              f"needs an objective with a memory queue (objective={with_queue}); objective={cfg.objective} has none")
        takers = objective_names(methods=True)
        if section.read_by:
            takers += objective_names(**{section.read_by: True})
        check(cfg.objective in takers, source, f"{name}.enabled",
              f"needs objective={'|'.join(dict.fromkeys(takers))} (objective={cfg.objective} takes no methods)")


def _increasing(values: list[Any]) -> bool:
    """Whether values are positive and strictly increasing."""
    return all(a < b for a, b in itertools.pairwise([0, *values]))


def _validate_optim(cfg: Config, source: str) -> None:
    optim = cfg.optim
    check(0 <= optim.warmup_epochs <= optim.epochs, source, "optim.warmup_epochs",
          f"must be in [0, optim.epochs]; got {optim.warmup_epochs}")
    check(_increasing(optim.lr_milestones), source, "optim.lr_milestones",
          f"must be positive epochs in increasing order; got {optim.lr_milestones}")


def _validate_model(cfg: Config, source: str) -> None:
    model, batch = cfg.model, cfg.optim.batch_size
    check(model.bn_splits >= 1 and batch % model.bn_splits == 0, source, "model.bn_splits",
          f"must be >= 1 and divide optim.batch_size={batch}; got {model.bn_splits}")
    check(batch // model.bn_splits >= MIN_BN_GROUP, source, "model.bn_splits",
          f"leaves BatchNorm groups of optim.batch_size / model.bn_splits = {batch} / {model.bn_splits} = "
          f"{batch // model.bn_splits} samples; they need at least {MIN_BN_GROUP} (fewer splits or a larger batch)")
    check(not model.sync_bn or model.bn_splits == 1, source, "model.sync_bn",
          f"synchronises BatchNorm over all processes; set model.bn_splits=1 with it (got {model.bn_splits})")


def _validate_backbone(cfg: Config, source: str) -> None:
    """model.arch names a backbone (the closest name when not); the ResNets' small stem and the libraries'
    arch_kwargs each where it applies; a library backbone builds, encodes data.image_size px images and has what
    the BatchNorm and patch-projection settings act on."""
    from ..models.arch import RESNETS, arch_problem  # here: loading a config does not import torch (nor timm)

    model = cfg.model
    problem = arch_problem(model.arch)
    check(problem is None, source, "model.arch", problem or "")
    arch = f"model.arch={model.arch}"
    if model.arch in RESNETS:
        check(not model.arch_kwargs, source, "model.arch_kwargs", f"applies to timm/<name> and torchvision/<name> "
              f"backbones ({arch} is fitted to small images by model.small_stem); got {model.arch_kwargs}")
        check(not model.frozen_patch_embed, source, "model.frozen_patch_embed",
              f"needs a backbone with a patch projection (a ViT's patch_embed); {arch} has none")
        return
    check(not model.small_stem, source, "model.small_stem",
          f"applies to {'|'.join(RESNETS)}; fit {arch} to small images with model.arch_kwargs")
    facts = backbone_facts_of(cfg, source)
    if not facts.batchnorm:
        check(model.bn_splits == 1, source, "model.bn_splits", f"splits the backbone's BatchNorm into groups, and "
              f"{arch} has no BatchNorm layer (it normalises otherwise, e.g. LayerNorm); set model.bn_splits=1")
        check(not model.train_bn_only, source, "model.train_bn_only",
              f"trains the backbone's BatchNorm layers only, and {arch} has none")
        shuffles = cfg.moco.shuffle_bn and objective_needs(cfg).momentum_encoder
        check(not shuffles or model.head == "mlp_bn", source, "moco.shuffle_bn",
              f"shuffles the keys for BatchNorm, and neither {arch} nor model.head={model.head} has any; set "
              "moco.shuffle_bn=false (or model.head=mlp_bn)")
    check(not (model.sync_bn and facts.fused_batchnorm), source, "model.sync_bn",
          f"cannot convert the BatchNorm layers of {arch}: they carry their activation (timm's BatchNormAct2d), "
          "which SyncBatchNorm would drop")
    check(not model.frozen_patch_embed or facts.patch_embed, source, "model.frozen_patch_embed",
          f"needs a backbone with a patch projection (a ViT's patch_embed); {arch} has none")


def _validate_data(cfg: Config, source: str) -> None:
    data, batch = cfg.data, cfg.optim.batch_size
    scale = data.crop_scale
    check(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, source, "data.crop_scale",
          f"must be [low, high] with 0 < low <= high <= 1; got {scale}")
    jitter = data.color_jitter
    check(len(jitter) == 4 and all(math.isfinite(v) and v >= 0 for v in jitter) and jitter[3] <= 0.5, source,
          "data.color_jitter", "must be [brightness, contrast, saturation, hue], each finite and >= 0 (0: not "
          f"jittered), hue <= 0.5; got {jitter}")
    check(len(data.mean) == 3 and len(data.std) == 3, source, "data.mean", "and data.std need 3 values")
    stain = data.stain_jitter
    check(len(stain) == 2 and all(math.isfinite(v) and v >= 0 for v in stain) and stain[0] < 1, source,
          "data.stain_jitter", f"must be [scale, shift], each finite and >= 0, scale < 1; got {stain}")
    check(bool(data.magnifications) and all(m >= 1 for m in data.magnifications)
          and len(set(data.magnifications)) == len(data.magnifications), source, "data.magnifications",
          f"must list distinct whole factors >= 1; got {data.magnifications}")
    if data.name in UNLABELLED_DATASETS:
        for key in ("knn_every", "knn_every_steps", "analysis_every"):
            check(not getattr(cfg.eval, key), source, f"eval.{key}", f"must be 0 with data.name={data.name}: its "
                  "images have no labels to score kNN or the embedding analysis with")
    check(data.train_subset is None or data.train_subset >= batch, source, "data.train_subset",
          f"must be null or at least one batch ({batch})")


def _validate_eval(cfg: Config, source: str) -> None:
    ev = cfg.eval
    knn_k = ev.knn_ks
    check(bool(knn_k) and min(knn_k) > 0, source, "eval.knn_k", f"must be positive (one value or a list); got {knn_k}")
    check(ev.knn_train_subset is None or max(knn_k) <= ev.knn_train_subset, source, "eval.knn_k",
          f"must not exceed eval.knn_train_subset={ev.knn_train_subset} (the size of the kNN bank); got {knn_k}")
    linear, detection = ev.linear, ev.detection
    check(bool(linear.l2_grid) and min(linear.l2_grid) > 0, source, "eval.linear.l2_grid",
          f"must list positive L2 strengths; got {linear.l2_grid}")
    _validate_semisup(ev.semisup, source)
    check(ev.nuclei.crop % 32 == 0, source, "eval.nuclei.crop",
          f"must be a multiple of 32 (the backbone's largest stride); got {ev.nuclei.crop}")
    check(_increasing(detection.milestones) and all(m <= 1 for m in detection.milestones), source,
          "eval.detection.milestones", f"must be fractions of training in (0, 1], increasing; got "
          f"{detection.milestones}")
    check(detection.max_size >= detection.min_size, source, "eval.detection.max_size",
          f"must be >= eval.detection.min_size={detection.min_size}; got {detection.max_size}")
    transfer, transferability = ev.transfer, ev.transferability
    _validate_tasks(transfer.tasks, "eval.transfer.tasks", source)
    shots = transfer.shots
    check(bool(shots) and min(shots) > 0 and len(set(shots)) == len(shots), source, "eval.transfer.shots",
          f"must be distinct positive numbers; got {shots}")
    _validate_tasks([transferability.source], "eval.transferability.source", source)
    _validate_tasks(transferability.tasks, "eval.transferability.tasks", source)
    parameters = transferability.parameters
    check(bool(parameters) and all(isinstance(prefix, str) for prefix in parameters), source,
          "eval.transferability.parameters", f"must list parameter-name prefixes ('' for all); got {parameters}")


def _validate_semisup(semisup: SemisupSettings, source: str) -> None:
    p = "eval.semisup."
    check(0 <= semisup.warmup_epochs <= semisup.epochs, source, p + "warmup_epochs",
          f"must be in [0, eval.semisup.epochs={semisup.epochs}]; got {semisup.warmup_epochs}")
    check(semisup.split_file != "", source, p + "split_file", "must be null or a file name; got ''")
    given = semisup.label_sources()
    if len(given) > 1:
        raise ConfigError(f"{source}: '{p}{given[1]}' cannot be set together with '{p}{given[0]}': give exactly one "
                          f"of {', '.join(p + name for name in LABEL_SOURCES)}")


def _validate_tasks(tasks: list[str], key: str, source: str) -> None:
    """A non-empty list of distinct tasks, each a known dataset name as NAME or NAME=ROOT."""
    unknown = [name for name in (task_name_and_root(task)[0] for task in tasks) if name not in DATASETS]
    check(bool(tasks), source, key, "must list at least one task")
    check(not unknown, source, key, f"must name datasets ({', '.join(DATASETS)}), each as NAME or NAME=ROOT; got "
          f"{unknown[0] if unknown else ''!r}")
    repeated = sorted({task for task in tasks if tasks.count(task) > 1})
    check(not repeated, source, key, f"lists {repeated[0] if repeated else ''!r} twice")
