"""Run logging: per-step metric windows reduced at log points, TensorBoard events and a JSON-lines file."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from .distributed import all_reduce_mean

METRICS = "metrics.jsonl"


class RunLogger:
    """Writes scalars to TensorBoard and one JSON object per call to metrics.jsonl (main process only).

    A run that starts at `start_step` (a resume; 0 for a fresh run) supersedes what an earlier writer of the
    folder logged after that step: those lines leave metrics.jsonl, and TensorBoard hides those events
    (SummaryWriter's purge_step), so that steps run again are not recorded twice.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, start_step: int = 0) -> None:
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            drop_lines_after(run_dir / METRICS, start_step)
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1)
            self.jsonl = open(run_dir / METRICS, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any], **context: Any) -> None:
        """Record scalar metrics at a global step; `context` (epoch, phase...) goes to the JSON line only."""
        if not self.enabled:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **context, **metrics}) + "\n")
        self.jsonl.flush()

    def histogram(self, tag: str, values, step: int) -> None:
        """A TensorBoard histogram (e.g. of per-sample statistics)."""
        if self.enabled:
            self.writer.add_histogram(tag, values, step)

    def close(self) -> None:
        """Flush and close both outputs."""
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


def drop_lines_after(path: Path, step: int) -> None:
    """Rewrite a metrics.jsonl file atomically without its lines logged after `step` (and any torn line)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _logged_step(line) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _logged_step(line: str) -> float:
    """The step of a metrics line; infinity for a line that is not one (torn by a kill mid-write)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricWindow:
    """Per-step device scalars gathered between two log points; reduced with one host sync."""

    def __init__(self, first_step: int) -> None:
        self.first_step = first_step
        self.values: dict[str, list[torch.Tensor]] = {}
        self.data_wait = 0.0
        self.images = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor], data_wait: float, images: int) -> None:
        """Record one step."""
        for key, value in metrics.items():
            self.values.setdefault(key, []).append(value.detach().float())
        self.data_wait += data_wait
        self.images += images

    def __len__(self) -> int:
        return len(self.values.get("loss", []))

    def reduce(self) -> tuple[dict[str, float], int | None]:
        """Means of each metric over steps and processes plus throughput, and the first step whose loss is not
        finite on any process (or None). Every process gets the same answer; one or two collectives in all."""
        names = list(self.values)
        device = self.values["loss"][0].device  # host-side values (lr, momentum) join the loss's device
        means = torch.stack([torch.stack(self.values[n]).nanmean().to(device) for n in names])
        means = all_reduce_mean(means).cpu()
        losses = all_reduce_mean(torch.stack(self.values["loss"])).cpu()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        bad = (~torch.isfinite(losses)).nonzero()
        first_bad = self.first_step + int(bad[0]) if len(bad) else None
        means = {name: float(value) for name, value in zip(names, means, strict=True)}  # NaN: undefined there
        means["images_per_s"] = self.images / elapsed
        means["data_wait_frac"] = self.data_wait / elapsed
        return means, first_bad
