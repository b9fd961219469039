"""Semi-supervised fine-tuning: `python eval/semisup.py --checkpoint FILE --label-fraction 0.01` (or
`--labels-per-class K`, or `--split-file FILE`); top-1/top-5 on the full test split."""

import sys

from mochi_hvs.evaluation.cli import run_settings_cli
from mochi_hvs.evaluation.semisup import SemisupFinetune, SemisupSettings, subset_fingerprint
from mochi_hvs.evaluation.supervised import SCHEDULES


def evaluate(ctx, settings):
    """Fine-tune on the labelled subset; the settings record the subset's fingerprint."""
    finetune = SemisupFinetune(ctx.cfg, settings, ctx.device, ctx.amp_dtype)
    metrics = finetune.evaluate(ctx.backbone, ctx.width)
    return {**vars(settings), "subset_sha1": subset_fingerprint(finetune.indices)}, metrics


def main(argv=None) -> int:
    """Parse, evaluate, report."""
    return run_settings_cli("semisup", __doc__, SemisupSettings, {"schedule": SCHEDULES}, evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
