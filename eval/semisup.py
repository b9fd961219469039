"""Semi-supervised fine-tuning: `python eval/semisup.py --checkpoint FILE --label-fraction 0.01` (or
`--labels-per-class K`, or `--split-file FILE`); top-1/top-5 on the full test split."""

import sys

from mochi_hvs.evaluation.cli import base_parser, run_evaluation
from mochi_hvs.evaluation.semisup import SemisupFinetune, SemisupSettings, subset_fingerprint
from mochi_hvs.evaluation.settings import add_settings_arguments, settings_from_args
from mochi_hvs.evaluation.supervised import SCHEDULES


def main(argv=None) -> int:
    """Parse, evaluate, report."""
    parser = base_parser("eval/semisup.py", __doc__.splitlines()[0])
    add_settings_arguments(parser, SemisupSettings, {"schedule": SCHEDULES})
    args = parser.parse_args(argv)
    settings = settings_from_args(SemisupSettings, args)

    def evaluate(ctx):
        finetune = SemisupFinetune(ctx.cfg, settings, ctx.device, ctx.amp_dtype)
        metrics = finetune.evaluate(ctx.backbone, ctx.width)
        return {**vars(settings), "subset_sha1": subset_fingerprint(finetune.indices)}, metrics

    return run_evaluation("semisup", args, evaluate)


if __name__ == "__main__":
    sys.exit(main())
