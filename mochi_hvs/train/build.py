"""The composition root of a pretraining run: data, model, methods, step, optimiser and schedules from a Config.

It builds what the configured objective declares it needs (objectives/registry.py), lets the objective build
its step and the objective seam wrap it (objectives/base.wrapped_step); it names no objective."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config, ConfigError, local_crops, objective_needs, views_per_image
from ..config.continual import task_specs
from ..data.batches import BatchSource, build_batches
from ..data.datasets import ImageSet, balanced_subset, load_images
from ..data.tasks import TaskBatches, task_batches
from ..data.tiles import Tiling
from ..distributed import DistEnv
from ..methods import Method, build_methods
from ..models.backbone import freeze_all_but_batchnorm, freeze_patch_embed
from ..models.moco import MoCo
from ..objectives.base import Objective, Step, objective_of, wrapped_step
from ..runtime import resolve_amp, resolve_device, seed_everything
from ..schedule import lr_multiplier
from ..weights.architecture import Architecture
from ..weights.errors import WeightsError
from ..weights.loader import LoadReport, load_backbone_weights, read_backbone_state


@dataclass
class TrainingParts:
    """Everything a run trains with."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    batches: BatchSource | TaskBatches
    steps_per_epoch: int
    total_steps: int
    model: MoCo
    objective: Objective
    methods: list[Method]
    step: Step
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    initial_backbone: dict[str, torch.Tensor]  # the starting point (random init or model.init_from), for its baseline
    init_report: LoadReport | None = None  # what model.init_from loaded

    @property
    def num_epochs(self) -> int:
        """Epochs the run touches (the last may be partial for runs measured in steps)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)


def check_world(cfg: Config, env: DistEnv) -> None:
    """The global batch and the BatchNorm splits must divide over the processes."""
    if cfg.optim.batch_size % env.world_size:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} must divide over the {env.world_size} processes")
    if cfg.model.bn_splits % env.world_size and cfg.model.bn_splits > 1:
        raise ConfigError(f"model.bn_splits={cfg.model.bn_splits} must be 1 or a multiple of the {env.world_size} "
                          "processes")


def pretraining_images(cfg: Config) -> ImageSet:
    """The pretraining images (data.train_subset: a fixed class-balanced subset)."""
    images = load_images(cfg.data.name, cfg.data.root, "pretrain", Tiling.of(cfg.data))
    if cfg.data.train_subset:
        images = images.subset(balanced_subset(images.labels, cfg.data.train_subset, cfg.seed))
    return images


def default_channels_last(cfg: Config, env: DistEnv, device: torch.device) -> bool:
    """channels_last when unset: on CUDA, unless BatchNorm is split on this device. Split BatchNorm groups samples
    through a view of the contiguous layout, so channels_last would cost two copies of every BatchNorm's input and
    output (measured on an H100: 0.67x lightly's step for ResNet-18 at 32 px, 0.41x for ResNet-50 at 224 px)."""
    return device.type == "cuda" and cfg.model.bn_splits // env.world_size <= 1


def build_model(cfg: Config, env: DistEnv, channels_last: bool = False) -> MoCo:
    """The model the configured objective needs (a momentum encoder, a queue, a predictor): this process's share of
    the BatchNorm splits, SyncBatchNorm when asked."""
    needs = objective_needs(cfg)
    model = MoCo(cfg.model.arch, small_stem=cfg.model.small_stem, arch_kwargs=cfg.model.arch_kwargs,
                 head=cfg.model.head, head_hidden_dim=cfg.model.head_hidden_dim, feature_dim=cfg.model.feature_dim,
                 queue_size=cfg.moco.queue_size if needs.queue else None, shuffle_bn=cfg.moco.shuffle_bn,
                 bn_splits=max(1, cfg.model.bn_splits // env.world_size), channels_last=channels_last,
                 predictor=needs.predictor, momentum_encoder=needs.momentum_encoder)
    if cfg.model.sync_bn and env.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def initialise_backbone(model: MoCo, cfg: Config, verify: bool, announce: bool) -> LoadReport:
    """HPT: the query backbone from model.init_from, copied into the momentum encoder where there is one. The
    projection head keeps its fresh initialisation, the queue starts empty and the optimiser fresh."""
    path = cfg.model.init_from
    state, meta = read_backbone_state(path, verify=verify)
    wanted = Architecture(cfg.model.arch, cfg.model.small_stem, cfg.model.arch_kwargs)
    if meta.architecture != wanted:
        raise WeightsError(f"model.init_from={path} holds a {meta.architecture} backbone but the run builds {wanted}; "
                           "set model.arch, model.small_stem and model.arch_kwargs to match")
    report = load_backbone_weights(model.encoder_q.backbone, state)
    if model.encoder_k is not None:
        model.encoder_k.load_state_dict(model.encoder_q.state_dict())
    if announce:
        print(f"init_from {meta.summary()}; {report.summary()}", file=sys.stderr)
    return report


def data_parallel(module: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """The module itself, or its DistributedDataParallel wrapper (gradients averaged over processes during
    backward) when several processes take part: what the trained forward goes through."""
    if not env.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def base_lr(cfg: Config) -> float:
    """The configured lr, linearly scaled when optim.base_batch_size is set."""
    optim = cfg.optim
    return optim.lr * (optim.batch_size / optim.base_batch_size if optim.base_batch_size else 1.0)


def build_optimisation(cfg: Config, model: MoCo, steps_per_epoch: int, total_steps: int, device: torch.device,
                       amp_dtype: torch.dtype | None, period: int | None = None):
    """SGD or AdamW (optim.name) over the trainable parameters (f_q's; f_k follows by momentum), its per-step lr
    schedule and the AMP loss scaler. period: the schedule restarts every `period` steps (continual's tasks; None:
    one schedule over total_steps)."""
    optim = cfg.optim
    trained = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "adamw":
        optimizer = torch.optim.AdamW(trained, lr=base_lr(cfg), weight_decay=optim.weight_decay)
    else:
        optimizer = torch.optim.SGD(trained, lr=base_lr(cfg), momentum=optim.momentum, weight_decay=optim.weight_decay)
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    milestones = [m * steps_per_epoch for m in optim.lr_milestones]
    period = period or total_steps
    last_cycle = total_steps // period - 1  # the step after the last one stays on the last cycle's curve
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s - period * min(s // period, last_cycle), period, warmup, optim.schedule,
                                           milestones))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return optimizer, scheduler, scaler


def build_parts(cfg: Config, env: DistEnv, resume: Path | None = None, verify: bool = True,
                images: ImageSet | None = None) -> TrainingParts:
    """Build a run from its config. `images`: the pretraining images when given in memory (else read from disk;
    a continual run reads its tasks' images, data/tasks.py).

    A resume restores the model from its checkpoint; model.init_from is then loaded only when the starting point's
    kNN baseline will be evaluated (it is that baseline).
    """
    device = resolve_device(cfg.device, env.local_rank)
    amp_dtype = resolve_amp(cfg.amp, device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else default_channels_last(cfg, env, device)
    check_world(cfg, env)
    seed_everything(cfg.seed)

    def batches_of(pretrain: ImageSet) -> BatchSource:
        return build_batches(pretrain, cfg.data, views_per_image(cfg), cfg.optim.batch_size // env.world_size,
                             cfg.seed, device, env.rank, env.world_size, local_crops(cfg))

    objective = objective_of(cfg)
    if cfg.continual.enabled:  # epoch t is task t (data/tasks.py)
        c = cfg.continual
        batches, images = task_batches(task_specs(cfg), c.steps_per_task, c.joint, cfg.data.image_size, batches_of)
        steps_per_epoch = batches.batches_per_epoch
        total_steps = steps_per_epoch * len(batches.sources)
    else:
        images = pretraining_images(cfg) if images is None else images
        batches = batches_of(images)
        steps_per_epoch = batches.sampler.batches_per_epoch
        total_steps = cfg.optim.steps or cfg.optim.epochs * steps_per_epoch
    objective.check_images(images)
    model = build_model(cfg, env, channels_last)
    init_report = None
    if cfg.model.init_from and (resume is None or cfg.eval.knn_baseline):
        init_report = initialise_backbone(model, cfg, verify, announce=env.is_main)
    if cfg.model.train_bn_only:
        freeze_all_but_batchnorm(model.encoder_q.backbone)
    if cfg.model.frozen_patch_embed:
        freeze_patch_embed(model.encoder_q.backbone)
    model.to(device)
    if cfg.compile:
        model.encoder_q.compile()
        if model.encoder_k is not None:
            model.encoder_k.compile()
    initial_backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    methods = build_methods(cfg, model)
    step = wrapped_step(cfg, objective.build_step(model, methods, lambda module: data_parallel(module, env, device),
                                                  len(images.classes)), model)
    period = steps_per_epoch if cfg.continual.enabled else total_steps  # the schedule restarts with each task
    optimizer, scheduler, scaler = build_optimisation(cfg, model, steps_per_epoch, total_steps, device, amp_dtype,
                                                      period)
    return TrainingParts(device, amp_dtype, channels_last, batches, steps_per_epoch, total_steps, model, objective,
                         methods, step, optimizer, scheduler, scaler, initial_backbone, init_report)
