"""Run logging: TensorBoard event files plus a JSON-lines metrics file beside them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class RunLogger:
    """Writes scalars to TensorBoard and one JSON object per call to metrics.jsonl (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(run_dir))
            self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

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
