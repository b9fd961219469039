"""Linear probe of a frozen backbone: `python eval/linear.py --checkpoint FILE [--mode classic|cached|sklearn]`."""

import sys

from mochi_hvs.evaluation.cli import run_settings_cli
from mochi_hvs.evaluation.linear import MODES, LinearProbe, LinearSettings
from mochi_hvs.evaluation.supervised import SCHEDULES


def evaluate(ctx, settings):
    """Top-1/top-5 of the probe."""
    return settings, LinearProbe(ctx.cfg, settings, ctx.device, ctx.amp_dtype).evaluate(ctx.backbone, ctx.width)


def main(argv=None) -> int:
    """Parse, evaluate, report."""
    return run_settings_cli("linear", __doc__, LinearSettings, {"mode": MODES, "schedule": SCHEDULES}, evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
