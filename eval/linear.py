"""Linear probe of a frozen backbone: `python eval/linear.py --checkpoint FILE [--mode classic|cached|sklearn]`."""

import sys

from mochi_hvs.evaluation.cli import base_parser, run_evaluation
from mochi_hvs.evaluation.linear import MODES, LinearProbe, LinearSettings
from mochi_hvs.evaluation.settings import add_settings_arguments, settings_from_args
from mochi_hvs.evaluation.supervised import SCHEDULES


def main(argv=None) -> int:
    """Parse, evaluate, report."""
    parser = base_parser("eval/linear.py", __doc__.splitlines()[0])
    add_settings_arguments(parser, LinearSettings, {"mode": MODES, "schedule": SCHEDULES})
    args = parser.parse_args(argv)
    settings = settings_from_args(LinearSettings, args)

    def evaluate(ctx):
        probe = LinearProbe(ctx.cfg, settings, ctx.device, ctx.amp_dtype)
        return settings, probe.evaluate(ctx.backbone, ctx.width)

    return run_evaluation("linear", args, evaluate)


if __name__ == "__main__":
    sys.exit(main())
