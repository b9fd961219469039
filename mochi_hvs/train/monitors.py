"""What a run measures of itself: kNN during and after training, the kNN of its starting point, the alignment
and uniformity of its embeddings, and collapse. Each result is logged at the run's position."""

from __future__ import annotations

from tqdm import tqdm

from ..collapse import CollapseMonitor, CollapseSignal
from ..config import Config
from ..distributed import all_gather_cat, all_reduce_mean
from ..evaluation.embedding import EmbeddingAnalysis
from ..evaluation.knn import KnnMonitor, KnnResult
from ..evaluation.pixels import pixel_model
from ..runtime import autocast
from ..tracking import RunLogger
from .build import TrainingParts
from .state import Position


class Monitors:
    """The kNN monitor and the embedding analysis of a run (their datasets loaded on first use), and the collapse
    monitor."""

    def __init__(self, cfg: Config, parts: TrainingParts, logger: RunLogger, is_main: bool) -> None:
        self.cfg = cfg
        self.parts = parts
        self.logger = logger
        self.is_main = is_main
        self._knn: KnnMonitor | None = None
        self._analysis: EmbeddingAnalysis | None = None
        self.collapse = CollapseMonitor(cfg.collapse)

    def knn_monitor(self) -> KnnMonitor:
        """The kNN evaluator of the run's labelled sets."""
        if self._knn is None:
            parts = self.parts
            self._knn = KnnMonitor(self.cfg, parts.device, parts.amp_dtype, parts.channels_last)
        return self._knn

    def knn(self, position: Position) -> KnnResult:
        """kNN accuracy of the current query backbone, logged."""
        result = self.knn_monitor().evaluate(self.parts.model.backbone)
        self.logger.log(position.global_step, {"knn/top1": result.top1, "knn/top5": result.top5},
                        epoch=position.epoch, k=result.k)
        return result

    def report_knn(self, when: str, position: Position) -> None:
        """kNN now, logged and printed."""
        result = self.knn(position)
        if self.is_main:
            tqdm.write(f"{when}: kNN top-1 {result.top1:.2f}%")

    def start_knn(self) -> KnnResult:
        """kNN accuracy of the backbone the run started from: its random initialisation, or model.init_from."""
        backbone = self.parts.model.backbone
        trained = {k: v.clone() for k, v in backbone.state_dict().items()}
        backbone.load_state_dict(self.parts.initial_backbone)
        try:
            return self.knn_monitor().evaluate(backbone)
        finally:
            backbone.load_state_dict(trained)

    def pixels_knn(self) -> KnnResult:
        """kNN accuracy of the raw pixels of the same images: the floor a learned backbone must beat."""
        monitor = self.knn_monitor()
        pixels = pixel_model(monitor.bank_images, self.cfg.data.mean, self.cfg.data.std).to(self.parts.device)
        return monitor.evaluate(pixels)

    def analyse_embeddings(self, position: Position) -> dict[str, float]:
        """Alignment and uniformity of the query encoder on the held-out batch, logged."""
        if self._analysis is None:
            self._analysis = EmbeddingAnalysis(self.cfg, self.parts.device)
        with autocast(self.parts.device, self.parts.amp_dtype):
            metrics = self._analysis.evaluate(self.parts.model.encoder_q)
        self.logger.log(position.global_step, metrics, epoch=position.epoch)
        return metrics

    def end_of_epoch(self, position: Position, last: bool) -> None:
        """kNN every eval.knn_every epochs (not after the last: the final evaluation does it) and the embedding
        analysis every eval.analysis_every epochs."""
        epoch = position.epoch
        every = self.cfg.eval.knn_every
        if every and epoch % every == 0 and not last:
            self.report_knn(f"epoch {epoch}", position)
        every = self.cfg.eval.analysis_every
        if every and epoch % every == 0:
            metrics = self.analyse_embeddings(position)
            if self.is_main:
                tqdm.write(f"epoch {epoch}: alignment {metrics['analysis/alignment']:.3f}, "
                           f"uniformity {metrics['analysis/uniformity']:.3f}, "
                           f"held-out view-pair top-1 {metrics['analysis/pair_top1']:.3f}")

    def check_collapse(self, signal: CollapseSignal, step: int) -> dict[str, float]:
        """Read a step's signal over all processes (every one gets the same reading) and warn while the
        representation looks collapsed, up to the check that stops the run (or, with collapse.stop off, would);
        returns the metrics to log."""
        loss = None if signal.loss is None else all_reduce_mean(signal.loss.float())
        reading = self.collapse.check(CollapseSignal(all_gather_cat(signal.embeddings.float()), loss,
                                                     signal.uniform_loss), step)
        streak, patience = self.collapse.streak, self.cfg.collapse.patience
        if self.is_main and reading.collapsed and streak <= patience:
            then = "stops the run" if self.cfg.collapse.stop else "would stop the run (collapse.stop is off)"
            tqdm.write(f"warning: step {step}: the representation looks collapsed ({reading.describe()}); "
                       f"{patience} such checks in a row {then}: {streak} so far")
        return reading.metrics()
