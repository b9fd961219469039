"""Detection transfer with torchvision's Faster R-CNN (ResNet-FPN from the checkpoint), COCO AP/AP50/AP75:
`python eval/detection.py --checkpoint FILE --train ROOT:SPLIT [...] --val ROOT:SPLIT`."""

import sys

from mochi_hvs.evaluation.cli import run_settings_cli
from mochi_hvs.evaluation.detection import NORMS, DetectionSettings, detection_transfer


def evaluate(ctx, settings):
    """Fine-tune the detector and score it on the validation set."""
    metrics, _ = detection_transfer(ctx.state, ctx.meta, settings, ctx.cfg.data.mean, ctx.cfg.data.std, ctx.device)
    return settings, metrics


def main(argv=None) -> int:
    """Parse, evaluate, report."""
    return run_settings_cli("detection", __doc__, DetectionSettings, {"norm": NORMS}, evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
