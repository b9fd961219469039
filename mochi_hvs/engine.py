"""The training loop: steps, schedules, AMP, checkpoint/resume, logging and the kNN monitor."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .checkpoint import (
    FORMAT,
    LAST,
    CheckpointError,
    NoSpaceError,
    capture_rng,
    load_checkpoint,
    nonfinite_entries,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from .config import Config, to_dict, views_per_image
from .data.batches import build_batches
from .data.datasets import balanced_subset, check_splits, load_images
from .distributed import DistEnv, all_gather_cat, all_reduce_mean, init_distributed
from .evaluation.embedding import EmbeddingAnalysis
from .evaluation.knn import KnnMonitor, KnnResult
from .hvs import HardViewSelector
from .mochi import HardNegativeMixer
from .models.backbone import freeze_all_but_batchnorm
from .models.moco import MoCo
from .resume_changes import check_resume_changes, config_changes
from .retrieval import build_retrieval
from .run_lock import RunLock
from .runtime import autocast, resolve_amp, resolve_device, seed_everything
from .schedule import lr_multiplier, momentum_at
from .step import ContrastiveStep, StepRandom
from .tracking import MetricWindow, RunLogger
from .weights import LoadReport, WeightsError, load_backbone_weights, read_backbone_state

SUMMARY = "summary.json"  # written when a run (or stage) has finished, with its final figures
# The splits a run reads: the pretraining images, then the kNN bank and test set (final evaluation, kNN monitor,
# embedding analysis). All are checked on disk before the first step.
RUN_SPLITS = ("pretrain", "train", "test")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class Interrupted(RuntimeError):
    """The run stopped on request (Ctrl-C, SIGTERM); the message says what was kept and how to go on."""


@contextlib.contextmanager
def on_stop_signal(action: Callable[[], None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call `action` (which may raise); the previous handlers return after."""
    previous = {sig: signal.signal(sig, lambda *_: action()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Position:
    """Where training stands: the epoch, batches done in it, and the global step."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0


class Trainer:
    """Builds data, model and optimiser from a Config and runs (or resumes) pretraining."""

    def __init__(self, cfg: Config, resume: Path | None = None, env: DistEnv | None = None,
                 verify: bool = True) -> None:
        """Build the run; SIGINT/SIGTERM meanwhile stop it cleanly, and a failure releases the run folder.

        verify: check the SHA-256 digest of the resumed checkpoint and of model.init_from.
        """
        self.cfg = cfg
        self.verify = verify
        self.run_lock: RunLock | None = None  # the main process holds the run folder until close()
        self.logger: RunLogger | None = None
        with on_stop_signal(lambda: self._stop_during_startup(resume)), self._closing_on_error():
            self.env = env or init_distributed(cfg.device)
            if self.env.is_main:
                self.run_lock = RunLock.acquire(cfg.run_dir)
            self.device = resolve_device(cfg.device, self.env.local_rank)
            self.amp_dtype = resolve_amp(cfg.amp, self.device)
            self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
            if cfg.optim.batch_size % self.env.world_size:
                raise ValueError(f"optim.batch_size={cfg.optim.batch_size} must divide over "
                                 f"{self.env.world_size} processes")
            if cfg.model.bn_splits % self.env.world_size and cfg.model.bn_splits > 1:
                raise ValueError(f"model.bn_splits={cfg.model.bn_splits} must be 1 or a multiple of the "
                                 f"{self.env.world_size} processes")
            self.local_batch = cfg.optim.batch_size // self.env.world_size
            seed_everything(cfg.seed)

            check_splits(cfg.data.name, cfg.data.root, RUN_SPLITS)
            images = load_images(cfg.data.name, cfg.data.root, "pretrain")
            if cfg.data.train_subset:
                images = images.subset(balanced_subset(images.labels, cfg.data.train_subset, cfg.seed))
            data_cfg = dataclasses.replace(cfg.data, num_views=views_per_image(cfg))
            self.batches = build_batches(images, data_cfg, self.local_batch, cfg.seed, self.device,
                                         self.env.rank, self.env.world_size)
            self.steps_per_epoch = self.batches.sampler.batches_per_epoch
            self.total_steps = cfg.optim.steps or cfg.optim.epochs * self.steps_per_epoch
            self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

            local_splits = max(1, cfg.model.bn_splits // self.env.world_size)
            self.model = MoCo(cfg.model, cfg.moco, self.channels_last, local_splits)
            if cfg.model.sync_bn and self.env.distributed:
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            # A resume restores the model itself; it reads init_from again only for the starting point's baseline.
            starts_from = cfg.model.init_from if resume is None or cfg.eval.knn_random_baseline else None
            self.init_report = self._init_backbone(starts_from) if starts_from else None
            if cfg.model.train_bn_only:
                freeze_all_but_batchnorm(self.model.encoder_q.backbone)
            self.model.to(self.device)
            if cfg.compile:
                self.model.encoder_q.compile()
                self.model.encoder_k.compile()
            self.initial_backbone_state = {k: v.clone() for k, v in self.model.backbone.state_dict().items()}
            mixer = self._build_mixer()
            self.step_fn = ContrastiveStep(self.model, cfg.moco.temperature, cfg.moco.symmetric, mixer,
                                           self._build_selector(mixer), cfg.hvs.score_with_mochi,
                                           query_encoder=self._query_encoder())
            self.optimizer = torch.optim.SGD(
                [p for p in self.model.encoder_q.parameters() if p.requires_grad], lr=self.base_lr,
                momentum=cfg.optim.momentum,
                weight_decay=cfg.optim.weight_decay,
            )
            warmup = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
            milestones = [m * self.steps_per_epoch for m in cfg.optim.lr_milestones]
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: lr_multiplier(s, self.total_steps, warmup, cfg.optim.schedule, milestones),
            )
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
            self.position = Position()
            self.last_metrics: dict[str, float] = {}
            self.stop_requested = False
            self._knn: KnnMonitor | None = None
            self._analysis: EmbeddingAnalysis | None = None
            self.epoch_samples: dict[str, list[torch.Tensor]] = {}  # per-sample values of this epoch (histograms)
            self.last_good: tuple[Path, int] | None = None  # the last checkpoint written or resumed from, and its step
            if self.env.is_main and (stale := remove_stale_temporaries(self.checkpoint_path)):  # after the lock
                print(f"removed {len(stale)} temporary checkpoint file(s) left by interrupted writes", file=sys.stderr)
            if resume is not None:
                self.load(resume)
            self.logger = RunLogger(cfg.run_dir, enabled=self.env.is_main, start_step=self.position.global_step)

    @contextlib.contextmanager
    def _closing_on_error(self) -> Iterator[None]:
        """Close the run (logs, run-folder lock) when the block raises: the run is over."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _stop_during_startup(self, resume: Path | None) -> None:
        kept = "" if resume is None else f" since the checkpoint {resume}, which is untouched: resume from it again"
        raise Interrupted(f"stopped during start-up, before the first step in {self.cfg.run_dir}: nothing was trained "
                          f"there{kept}")

    def _stop_during_evaluation(self) -> None:
        path = self.checkpoint_path
        raise Interrupted(f"stopped during the final evaluation; training had finished and its checkpoint {path} is "
                          f"saved. Evaluate it with `python eval/knn.py --checkpoint {path}`, or rerun the final "
                          "evaluation with --resume auto")

    def close(self) -> None:
        """Close the logs and release the run folder (idempotent; fit() does it on every exit)."""
        if self.logger is not None:
            self.logger.close()
        if self.run_lock is not None:
            self.run_lock.release()

    def _init_backbone(self, path: str) -> LoadReport:
        """HPT: the query backbone from a weights file, copied into the momentum encoder. The projection head
        keeps its fresh initialisation, the queue starts empty and the optimiser fresh."""
        state, meta = read_backbone_state(path, verify=self.verify)
        wanted = (self.cfg.model.arch, self.cfg.model.small_stem)
        if (meta.arch, meta.small_stem) != wanted:
            raise WeightsError(f"model.init_from={path} holds a {meta.arch} backbone (small stem: {meta.small_stem}) "
                               f"but the run builds {wanted[0]} (small stem: {wanted[1]}); set model.arch and "
                               "model.small_stem to match")
        report = load_backbone_weights(self.model.encoder_q.backbone, state)
        self.model.encoder_k.load_state_dict(self.model.encoder_q.state_dict())
        if self.env.is_main:
            print(f"init_from {path} ({meta.source} format): {report.summary()}", file=sys.stderr)
        return report

    def _query_encoder(self) -> torch.nn.Module:
        """What trained queries go through: f_q itself, or its DistributedDataParallel wrapper (gradients
        averaged over processes during backward) when several processes take part."""
        if not self.env.distributed:
            return self.model.encoder_q
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model.encoder_q, device_ids=device_ids)

    def _build_mixer(self) -> HardNegativeMixer | None:
        """The MoCHi mixer over the queue when mochi.enabled."""
        mochi = self.cfg.mochi
        if not mochi.enabled:
            return None
        retrieval = build_retrieval(mochi.retrieval, self.model.queue, mochi.faiss_index, mochi.faiss_nlist,
                                    mochi.faiss_nprobe)
        return HardNegativeMixer(retrieval, mochi.num_hard, mochi.num_mix, mochi.num_query_mix,
                                 mochi.query_mix_max, reference=mochi.path == "reference")

    def _build_selector(self, mixer: HardNegativeMixer | None) -> HardViewSelector | None:
        """The HVS view selector when hvs.enabled."""
        hvs = self.cfg.hvs
        if not hvs.enabled:
            return None
        return HardViewSelector(self.model, self.cfg.moco.temperature, self.cfg.moco.symmetric, hvs.mode,
                                hvs.scorer, hvs.score_resolution, hvs.reuse_keys, mixer)

    def selecting(self, step: int) -> bool:
        """True when HVS picks this step's pairs: enabled, from hvs.start_epoch, every hvs.select_every steps."""
        hvs = self.cfg.hvs
        return hvs.enabled and self.position.epoch >= hvs.start_epoch and step % hvs.select_every == 0

    @property
    def mixing(self) -> bool:
        """True once MoCHi is enabled and past its warm-up epochs."""
        return self.cfg.mochi.enabled and self.position.epoch >= self.cfg.mochi.warmup_epochs

    @property
    def base_lr(self) -> float:
        """The configured lr, linearly scaled when optim.base_batch_size is set."""
        optim = self.cfg.optim
        return optim.lr * (optim.batch_size / optim.base_batch_size if optim.base_batch_size else 1.0)

    @property
    def checkpoint_path(self) -> Path:
        """The run's rolling checkpoint file."""
        return self.cfg.run_dir / LAST

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, queue, optimiser, schedules, position, RNG."""
        return {
            "format": FORMAT,
            "config": to_dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.position.epoch,
            "batch_in_epoch": self.position.batch_in_epoch,
            "global_step": self.position.global_step,
            "rng": capture_rng(),
        }

    def _last_good_text(self) -> str:
        return "none written yet" if self.last_good is None else f"{self.last_good[0]} (step {self.last_good[1]})"

    def save(self) -> Path | None:
        """Atomically write the rolling checkpoint with its digest (main process only), then remove temporaries that
        interrupted writes left. A state holding NaN or infinity (weights, buffers, queue, optimiser state) is never
        written: TrainingDiverged names it; a full disk is a CheckpointError. Either way the last good one stays."""
        state = self.state_dict()
        bad = nonfinite_entries({"model": state["model"], "optimizer": state["optimizer"]["state"]})
        step = self.position.global_step
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise TrainingDiverged(f"training diverged: at step {step} (epoch {self.position.epoch + 1}) the state to "
                                   f"save holds non-finite values in {', '.join(bad[:3])}{more}; it was not saved. "
                                   f"Last good checkpoint: {self._last_good_text()}")
        if not self.env.is_main:
            return None
        try:
            path = save_checkpoint(state, self.checkpoint_path)
        except NoSpaceError as err:
            kept = "no checkpoint was written before" if self.last_good is None else (
                f"the previous one at step {self.last_good[1]} is intact")
            raise CheckpointError(f"no space left on {err.folder} while writing the checkpoint; {kept}") from err
        remove_stale_temporaries(path)
        self.last_good = (path, step)
        return path

    def load(self, path: Path) -> None:
        """Restore a checkpoint written by `save` (its digest checked unless verify is off)."""
        state = load_checkpoint(path, map_location=self.device, verify=self.verify)
        self._adapt_checkpoint(state, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.position = Position(state["epoch"], state["batch_in_epoch"], state["global_step"])
        restore_rng(state["rng"])
        self.last_good = (Path(path), self.position.global_step)
        if self.env.is_main:
            print(f"resumed from {path} at epoch {self.position.epoch + 1}, "
                  f"batch {self.position.batch_in_epoch}, step {self.position.global_step}", file=sys.stderr)

    def _adapt_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint whose config differs in a setting a resume cannot change (one error naming them
        all); print the changes that apply, and make the stored optimiser hyperparameters, schedule base and loss
        scaler the ones this run's config defines, so that what is restored never overrides the config in use."""
        changes = config_changes(state["config"], self.cfg)
        check_resume_changes(changes, str(path))
        if self.env.is_main:
            for change in changes:
                print(f"resume: {change} (applied)", file=sys.stderr)
        step = state["scheduler"]["last_epoch"]
        groups = zip(state["optimizer"]["param_groups"], self.optimizer.param_groups, self.scheduler.lr_lambdas,
                     strict=True)
        for stored, configured, multiplier in groups:
            stored.update({key: value for key, value in configured.items() if key != "params"})
            stored["lr"] = configured["initial_lr"] * multiplier(step)  # the schedule at the resumed step
        state["scheduler"]["base_lrs"] = [group["initial_lr"] for group in self.optimizer.param_groups]
        state["scheduler"]["_last_lr"] = [group["lr"] for group in state["optimizer"]["param_groups"]]
        if any(change.key == "amp" for change in changes):
            state["scaler"] = self.scaler.state_dict()  # a fresh loss scaler for the new precision

    # ------------------------------------------------------------------ step

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step; returns detached device scalars."""
        step = self.position.global_step
        momentum = momentum_at(step, self.total_steps, self.cfg.moco.momentum, self.cfg.moco.momentum_schedule)
        self.model.momentum_update(momentum)
        rng = StepRandom(self.cfg.seed, step, self.env.rank, self.device)
        with autocast(self.device, self.amp_dtype):
            out = self.step_fn(batch["views"], rng, batch["label"], mix=self.mixing, boxes=batch["boxes"],
                               select=self.selecting(step))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.encoder_q.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.model.queue.enqueue(all_gather_cat(out.keys.float()), all_gather_cat(out.key_labels))
        for key, values in out.per_sample.items():
            self.epoch_samples.setdefault(key, []).append(values.detach())
        return {**out.metrics, "lr": torch.tensor(self.optimizer.param_groups[0]["lr"]),
                "momentum": torch.tensor(momentum)}

    # ------------------------------------------------------------------ loop

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and stop after the current step (at the next log point when
        several processes run, so that all of them stop after the same step)."""
        self.stop_requested = True

    def _stop_agreed(self, log_point: bool) -> bool:
        """Whether to stop now: this process's request alone, or any process's request at a log point."""
        if not self.env.distributed:
            return self.stop_requested
        if not log_point:
            return False
        flag = torch.tensor(float(self.stop_requested), device=self.device)
        return bool(all_reduce_mean(flag) > 0)

    def _flush(self, window: MetricWindow, bar: tqdm | None) -> None:
        if not len(window):
            return
        metrics, first_bad = window.reduce()
        self.last_metrics = metrics
        if first_bad is not None:
            kept = self.checkpoint_path if self.checkpoint_path.is_file() else "none written yet"
            raise TrainingDiverged(
                f"loss became non-finite at step {first_bad} (epoch {self.position.epoch + 1}); "
                f"training stopped. Last good checkpoint: {kept}"
            )
        self.logger.log(self.position.global_step, {f"train/{k}": v for k, v in metrics.items()},
                        epoch=self.position.epoch + 1)
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", top1=f"{metrics['proxy_top1']:.2f}",
                            img_s=f"{metrics['images_per_s']:.0f}", refresh=False)

    def _run_epoch(self) -> None:
        pos = self.position
        self.batches.set_epoch(pos.epoch, pos.batch_in_epoch)
        epoch_steps = min(self.steps_per_epoch, self.total_steps - pos.global_step + pos.batch_in_epoch)
        bar = tqdm(total=epoch_steps, initial=pos.batch_in_epoch, disable=not self.env.is_main,
                   desc=f"epoch {pos.epoch + 1}/{self.num_epochs}", dynamic_ncols=True, leave=False)
        window = MetricWindow(pos.global_step)
        global_batch = self.cfg.optim.batch_size
        tick = time.perf_counter()
        for batch in self.batches:
            waited = time.perf_counter() - tick
            window.add(self.train_step(batch), waited, global_batch)
            pos.global_step += 1
            pos.batch_in_epoch += 1
            bar.update(1)
            log_point = pos.global_step % self.cfg.log_every == 0
            if log_point:
                self._flush(window, bar)
                window = MetricWindow(pos.global_step)
            stop = self._stop_agreed(log_point)
            periodic = self.cfg.checkpoint_every and pos.global_step % self.cfg.checkpoint_every == 0
            ends_epoch = pos.batch_in_epoch == self.steps_per_epoch or pos.global_step >= self.total_steps
            if stop or (periodic and not ends_epoch):  # the end of the epoch saves its own checkpoint
                self._flush(window, bar)
                window = MetricWindow(pos.global_step)
                self.save()
                if stop:
                    bar.close()
                    raise Interrupted(f"stopped at step {pos.global_step}; checkpoint {self.checkpoint_path} "
                                      "holds everything: continue with --resume auto")
            every = self.cfg.eval.knn_every_steps
            if every and pos.global_step % every == 0 and pos.global_step < self.total_steps:
                self._report_knn(f"step {pos.global_step}")
            if pos.global_step >= self.total_steps:  # a run measured in steps may end mid-epoch
                break
            tick = time.perf_counter()
        self._flush(window, bar)
        bar.close()
        for key, values in self.epoch_samples.items():
            self.logger.histogram(key, torch.cat(values).float().cpu(), pos.global_step)
        self.epoch_samples = {}
        pos.epoch += 1
        pos.batch_in_epoch = 0
        self.save()
        if self.env.is_main and self.last_metrics:
            m = self.last_metrics
            tqdm.write(f"epoch {pos.epoch}/{self.num_epochs}: loss {m['loss']:.3f}, proxy top-1 "
                       f"{m['proxy_top1']:.3f}, {m['images_per_s']:.0f} img/s, "
                       f"data wait {100 * m['data_wait_frac']:.1f}%")

    def knn_monitor(self) -> KnnMonitor:
        """The kNN evaluator (datasets loaded on first use)."""
        if self._knn is None:
            self._knn = KnnMonitor(self.cfg, self.device, self.amp_dtype, self.channels_last)
        return self._knn

    def evaluate_knn(self) -> KnnResult:
        """kNN accuracy of the current query backbone, logged."""
        result = self.knn_monitor().evaluate(self.model.backbone)
        self.logger.log(self.position.global_step, {"knn/top1": result.top1, "knn/top5": result.top5},
                        epoch=self.position.epoch, k=result.k)
        return result

    def _report_knn(self, when: str) -> None:
        result = self.evaluate_knn()
        if self.env.is_main:
            tqdm.write(f"{when}: kNN top-1 {result.top1:.2f}%")

    def random_init_knn(self) -> KnnResult:
        """kNN accuracy of the same backbone as it started: its random initialisation, or model.init_from."""
        trained = {k: v.clone() for k, v in self.model.backbone.state_dict().items()}
        self.model.backbone.load_state_dict(self.initial_backbone_state)
        try:
            return self.knn_monitor().evaluate(self.model.backbone)
        finally:
            self.model.backbone.load_state_dict(trained)

    def analyse_embeddings(self) -> dict[str, float]:
        """Alignment and uniformity of the query encoder on the held-out batch, logged."""
        if self._analysis is None:
            self._analysis = EmbeddingAnalysis(self.cfg, self.device)
        with autocast(self.device, self.amp_dtype):
            metrics = self._analysis.evaluate(self.model.encoder_q)
        self.logger.log(self.position.global_step, metrics, epoch=self.position.epoch)
        return metrics

    def _end_of_epoch_evaluations(self) -> None:
        epoch, last = self.position.epoch, self.position.global_step >= self.total_steps
        every = self.cfg.eval.knn_every
        if every and epoch % every == 0 and not last:
            self._report_knn(f"epoch {epoch}")
        every = self.cfg.eval.analysis_every
        if every and epoch % every == 0:
            metrics = self.analyse_embeddings()
            if self.env.is_main:
                tqdm.write(f"epoch {epoch}: alignment {metrics['analysis/alignment']:.3f}, "
                           f"uniformity {metrics['analysis/uniformity']:.3f}")

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs (kNN every eval.knn_every epochs); returns steps and seconds. SIGINT/SIGTERM
        save a checkpoint and stop (Interrupted); any exception closes the run."""
        start = time.perf_counter()
        start_step = self.position.global_step
        with on_stop_signal(self.request_stop), self._closing_on_error():
            while self.position.global_step < self.total_steps:
                self._run_epoch()
                self._end_of_epoch_evaluations()
        return {"steps": self.position.global_step - start_step,
                "train_seconds": round(time.perf_counter() - start, 1)}

    def fit(self) -> dict[str, Any]:
        """Train, then report kNN of the trained backbone beside its starting point (random init or init_from);
        closes the run on every exit."""
        try:
            summary = self.train()
            with on_stop_signal(self._stop_during_evaluation):
                trained = self.evaluate_knn()
                summary.update(knn_k=trained.k, knn_top1=round(trained.top1, 2),
                               knn_top5=None if trained.top5 is None else round(trained.top5, 2))
                summary["init_from"] = self.cfg.model.init_from
                if self.cfg.eval.knn_random_baseline:
                    summary["init_knn_top1"] = round(self.random_init_knn().top1, 2)
            if self.env.is_main:
                (self.cfg.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
            return summary
        finally:
            self.close()
