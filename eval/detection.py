"""Detection transfer with torchvision's Faster R-CNN (ResNet-FPN from the checkpoint), COCO AP/AP50/AP75:
`python eval/detection.py --checkpoint FILE --train ROOT:SPLIT [...] --val ROOT:SPLIT`."""

import sys

from mochi_hvs.evaluation.cli import base_parser, run_evaluation
from mochi_hvs.evaluation.detection import NORMS, DetectionSettings, detection_transfer
from mochi_hvs.evaluation.settings import add_settings_arguments, settings_from_args


def main(argv=None) -> int:
    """Parse, evaluate, report."""
    parser = base_parser("eval/detection.py", __doc__.splitlines()[0])
    add_settings_arguments(parser, DetectionSettings, {"norm": NORMS})
    args = parser.parse_args(argv)
    settings = settings_from_args(DetectionSettings, args)

    def evaluate(ctx):
        metrics, _ = detection_transfer(ctx.state, ctx.meta, settings, ctx.cfg.data.mean, ctx.cfg.data.std, ctx.device)
        return settings, metrics

    return run_evaluation("detection", args, evaluate)


if __name__ == "__main__":
    sys.exit(main())
