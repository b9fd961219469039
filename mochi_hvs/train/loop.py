"""The training loop of a pretraining run: optimisation steps, epochs, logging, stopping, the final evaluation."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..collapse import CollapseSignal
from ..config import UNLABELLED_DATASETS, Config
from ..data.datasets import ImageSet, check_splits
from ..data.records import ViewBatch
from ..distributed import all_gather_cat, all_reduce_mean, init_distributed
from ..errors import Interrupted, TrainingCollapsed, TrainingDiverged, UserError
from ..models.moco import MoCo
from ..random_streams import StepRandom
from ..run_files import LAST, SUMMARY
from ..run_lock import RunLock
from ..runtime import autocast
from ..tracking import MetricWindow, RunLogger, TimeEstimate
from .build import TrainingParts, build_parts
from .monitors import Monitors
from .state import Position, RunState

# The splits a run reads: the pretraining images, then the kNN bank and test set (final evaluation, kNN monitor,
# embedding analysis). All are checked on disk before the first step.
RUN_SPLITS = ("pretrain", "train", "test")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop_signal(action: Callable[[], None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call `action` (which may raise); the previous handlers return after."""
    previous = {sig: signal.signal(sig, lambda *_: action()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def refuse_to_overwrite(run_dir: Path) -> None:
    """A fresh start must not write over a run the folder already holds (its checkpoint and logs)."""
    if (run_dir / LAST).is_file():
        raise UserError(f"{run_dir} already holds a run ({run_dir / LAST}): continue it with --resume auto, or start "
                        "a new one under another name (--set name=NEW) or after removing that folder")


class Trainer:
    """A pretraining run: its parts (build.py), resumable state (state.py) and monitors (monitors.py), and the loop.

    Only the main process logs, prints and writes checkpoints; it holds the run folder (run.lock) until close().
    """

    def __init__(self, cfg: Config, resume: Path | None = None, verify: bool = True,
                 images: ImageSet | None = None) -> None:
        """Build the run (and restore `resume`); SIGINT/SIGTERM meanwhile stop it cleanly, and a failure releases
        the run folder. verify: check the SHA-256 digests of the resumed checkpoint and of model.init_from.
        images: the pretraining images in memory (the on-disk data checks are then skipped)."""
        self.cfg = cfg
        self.run_lock: RunLock | None = None
        self.logger: RunLogger | None = None
        with on_stop_signal(lambda: self._stop_during_startup(resume)), self._closing_on_error():
            self.env = init_distributed(cfg.device)
            if self.env.is_main:
                self.run_lock = RunLock.acquire(cfg.run_dir)
            if resume is None:
                refuse_to_overwrite(cfg.run_dir)
            if images is None:
                check_splits(cfg.data.name, cfg.data.root, RUN_SPLITS)
            self.parts: TrainingParts = build_parts(cfg, self.env, resume, verify, images)
            self.state = RunState(cfg, self.parts, self.env, verify)
            if resume is not None:
                self.state.load(resume)
            self.logger = RunLogger(cfg.run_dir, enabled=self.env.is_main, start_step=self.position.global_step)
            self.monitors = Monitors(cfg, self.parts, self.logger, self.env.is_main)
            self.last_metrics: dict[str, float] = {}
            self.seconds_counted = time.perf_counter()  # when training time was last added to the position
            self.collapse_signal: CollapseSignal | None = None  # the last step's, read at the next log point
            self.stop_requested = False
            self.epoch_samples: dict[str, list[torch.Tensor]] = {}  # per-sample values of this epoch (histograms)

    @property
    def model(self) -> MoCo:
        """The MoCo model (query and key encoders, queue)."""
        return self.parts.model

    @property
    def position(self) -> Position:
        """Where training stands."""
        return self.state.position

    # ----------------------------------------------------------------- life cycle

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
        path = self.state.checkpoint_path
        raise Interrupted(f"stopped during the final evaluation; training had finished and its checkpoint {path} is "
                          f"saved. Evaluate it with `python eval/knn.py --checkpoint {path}`, or rerun the final "
                          "evaluation with --resume auto")

    def close(self) -> None:
        """Close the logs and release the run folder (idempotent; fit() does it on every exit)."""
        if self.logger is not None:
            self.logger.close()
        if self.run_lock is not None:
            self.run_lock.release()

    # ----------------------------------------------------------------- step

    def train_step(self, batch: ViewBatch) -> dict[str, torch.Tensor]:
        """One optimisation step: momentum update of f_k (where the objective has one), the objective's step, SGD,
        enqueue (where it returns keys); returns detached device scalars."""
        parts, cfg, pos = self.parts, self.cfg, self.position
        momentum = parts.objective.target_momentum(pos.global_step, parts.total_steps)
        if momentum is not None:  # before the step: keys computed while scoring views are f_k's keys
            parts.model.momentum_update(momentum)
        rng = StepRandom(cfg.seed, pos.global_step, self.env.rank, parts.device)
        with autocast(parts.device, parts.amp_dtype):
            # multi-crop's small crops only where drawn: a step that never gets them need not take them
            local = {} if batch.local_views is None else {"local_views": batch.local_views,
                                                          "local_boxes": batch.local_boxes}
            out = parts.step(batch.views, rng, batch.labels, batch.boxes, pos.epoch, pos.global_step,
                             flips=batch.flips, **local)
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(out.loss).backward()
        if cfg.optim.grad_clip:
            parts.scaler.unscale_(parts.optimizer)
            trained = [p for group in parts.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(trained, cfg.optim.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        if out.keys is not None:
            parts.model.queue.enqueue(all_gather_cat(out.keys.float()), all_gather_cat(out.key_labels))
        self.collapse_signal = out.signal
        for key, values in out.per_sample.items():
            self.epoch_samples.setdefault(key, []).append(values.detach())
        moved = {} if momentum is None else {"momentum": torch.tensor(momentum)}
        return {**out.metrics, "lr": torch.tensor(parts.optimizer.param_groups[0]["lr"]), **moved}

    # ----------------------------------------------------------------- loop

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
        flag = torch.tensor(float(self.stop_requested), device=self.parts.device)
        return bool(all_reduce_mean(flag) > 0)

    def _flush(self, window: MetricWindow, bar: tqdm | None) -> None:
        if not len(window):
            return
        metrics, first_bad = window.reduce()
        self.last_metrics = metrics
        if first_bad is not None:
            raise TrainingDiverged(f"loss became non-finite at step {first_bad} (epoch {self.position.epoch + 1}); "
                                   f"training stopped. Last good checkpoint: {self.state.last_good_text()}")
        step, signal = self.position.global_step, self.collapse_signal
        collapse = {} if signal is None else self.monitors.check_collapse(signal, step)
        self.logger.log(step, {**{f"train/{k}": v for k, v in metrics.items()}, **collapse},
                        epoch=self.position.epoch + 1)
        self._stop_if_collapsed()
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", top1=f"{metrics['proxy_top1']:.2f}",
                            img_s=f"{metrics['images_per_s']:.0f}", refresh=False)

    def _stop_if_collapsed(self) -> None:
        """Stop the run when its representation stays collapsed (unless collapse.stop is off), naming the last
        checkpoint (saved before the first collapsed check: see _save)."""
        pos, monitor = self.position, self.monitors.collapse
        if not (monitor.stays_collapsed and self.cfg.collapse.stop):
            return
        raise TrainingCollapsed(f"representation collapsed at step {pos.global_step} (epoch {pos.epoch + 1}): "
                                f"{monitor.streak} checks in a row since step {monitor.since}, the last with "
                                f"{monitor.last.describe()}; training stopped. Last good checkpoint: "
                                f"{self.state.last_good_text()}. collapse.stop=false keeps going")

    def _save(self, requested: bool = False) -> None:
        """Write the checkpoint, except while the representation looks collapsed in a run that stops for it: until
        it recovers, the last good checkpoint stays (a continual task that ends then still keeps its task checkpoint:
        the task is measured as it ended). requested: a stop request's save, always written (resuming continues
        exactly)."""
        self._count_seconds()
        self.state.save(rolling=requested or not (self.cfg.collapse.stop and self.monitors.collapse.streak))

    def _count_seconds(self) -> None:
        """Add the training seconds since the last count to the position (kept in the checkpoint: a resumed run's
        summary gives the whole run's training time, not the last process's)."""
        now = time.perf_counter()
        self.position.train_seconds += now - self.seconds_counted
        self.seconds_counted = now

    def _run_epoch(self, estimate: TimeEstimate) -> None:
        parts, pos = self.parts, self.position
        parts.batches.set_epoch(pos.epoch, pos.batch_in_epoch)
        epoch_steps = min(parts.steps_per_epoch, parts.total_steps - pos.global_step + pos.batch_in_epoch)
        bar = tqdm(total=epoch_steps, initial=pos.batch_in_epoch, disable=not self.env.is_main,
                   desc=f"epoch {pos.epoch + 1}/{parts.num_epochs}", dynamic_ncols=True, leave=False)
        with bar:  # closed however the epoch ends, so that a message never lands on the bar's line
            self._epoch_steps(bar, estimate)
        for key, values in self.epoch_samples.items():
            self.logger.histogram(key, torch.cat(values).float(), pos.global_step)
        self.epoch_samples = {}
        pos.epoch += 1
        pos.batch_in_epoch = 0
        self._save()
        if self.env.is_main and self.last_metrics:
            m = self.last_metrics
            tqdm.write(f"epoch {pos.epoch}/{parts.num_epochs}: loss {m['loss']:.3f}, proxy top-1 "
                       f"{m['proxy_top1']:.3f}, {m['images_per_s']:.0f} img/s, "
                       f"data wait {100 * m['data_wait_frac']:.1f}%")

    def _epoch_steps(self, bar: tqdm, estimate: TimeEstimate) -> None:
        """The steps of the current epoch, with logging, stop requests, periodic checkpoints and kNN."""
        cfg, parts, pos = self.cfg, self.parts, self.position
        window = MetricWindow(pos.global_step)
        tick = time.perf_counter()
        for batch in parts.batches:
            waited = time.perf_counter() - tick
            window.add(self.train_step(batch), waited, cfg.optim.batch_size)
            pos.global_step += 1
            pos.batch_in_epoch += 1
            bar.update(1)
            if self.env.is_main and (line := estimate.step_done(pos.global_step)):
                tqdm.write(line)
            log_point = pos.global_step % cfg.log_every == 0
            if log_point:
                self._flush(window, bar)
                window = MetricWindow(pos.global_step)
            stop = self._stop_agreed(log_point)
            periodic = cfg.checkpoint_every and pos.global_step % cfg.checkpoint_every == 0
            ends_epoch = pos.batch_in_epoch == parts.steps_per_epoch or pos.global_step >= parts.total_steps
            if stop or (periodic and not ends_epoch):  # the end of the epoch saves its own checkpoint
                self._flush(window, bar)
                window = MetricWindow(pos.global_step)
                self._save(requested=stop)
                if stop:
                    raise Interrupted(f"stopped at step {pos.global_step}; checkpoint {self.state.checkpoint_path} "
                                      "holds everything: continue with --resume auto")
            every = cfg.eval.knn_every_steps
            if every and pos.global_step % every == 0 and pos.global_step < parts.total_steps:
                self.monitors.report_knn(f"step {pos.global_step}", pos)
            if pos.global_step >= parts.total_steps:  # a run measured in steps may end mid-epoch
                break
            tick = time.perf_counter()
        self._flush(window, bar)

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs (kNN every eval.knn_every epochs); returns the run's steps and training seconds,
        resumed segments included. SIGINT/SIGTERM save a checkpoint and stop (Interrupted); any exception closes
        the run."""
        self.seconds_counted = time.perf_counter()
        estimate = TimeEstimate(self.position.global_step, self.parts.total_steps)
        with on_stop_signal(self.request_stop), self._closing_on_error():
            while self.position.global_step < self.parts.total_steps:
                self._run_epoch(estimate)
                self.monitors.end_of_epoch(self.position, last=self.position.global_step >= self.parts.total_steps)
        self._count_seconds()
        pos = self.position
        return {"steps": pos.global_step, "train_seconds": round(pos.train_seconds, 1),
                "train_seconds_from_step": pos.seconds_from_step}

    def finished_summary(self) -> dict[str, Any] | None:
        """The summary of a run that had already finished when it was resumed (all steps done and summary.json
        written), else None. The main process decides (it holds the run folder); the others get an empty dict."""
        summary = self.cfg.run_dir / SUMMARY
        done = self.position.global_step >= self.parts.total_steps and self.env.is_main and summary.is_file()
        if self.env.distributed:
            done = bool(all_reduce_mean(torch.tensor(float(done), device=self.parts.device)) > 0)
        if not done:
            return None
        return json.loads(summary.read_text()) if self.env.is_main else {}

    def fit(self) -> dict[str, Any]:
        """Train, then report kNN of the trained backbone beside its starting point (random init or init_from) and
        the raw pixels (labelled data sets only); writes summary.json and closes the run on every exit."""
        try:
            if (finished := self.finished_summary()) is not None:
                return finished
            summary = self.train()
            with on_stop_signal(self._stop_during_evaluation):
                if self.cfg.data.name not in UNLABELLED_DATASETS:  # kNN needs labels; tiles and slides have none
                    summary.update(self._final_knn())
                summary["init_from"] = self.cfg.model.init_from
                summary["objective"] = self.cfg.objective
                summary["collapse"] = self.monitors.collapse.summary()
            if self.env.is_main:
                (self.cfg.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
            return summary
        finally:
            self.close()

    def _final_knn(self) -> dict[str, Any]:
        """kNN of the trained backbone, of its starting point and of the raw pixels, as the summary records them."""
        trained = self.monitors.knn(self.position)
        summary = {"knn_k": trained.k, "knn_top1": round(trained.top1, 2),
                   "knn_top5": None if trained.top5 is None else round(trained.top5, 2)}
        if self.cfg.eval.knn_baseline:
            summary["init_knn_top1"] = round(self.monitors.start_knn().top1, 2)
        if self.cfg.eval.knn_pixels:
            summary["pixels_knn_top1"] = round(self.monitors.pixels_knn().top1, 2)
        return summary
