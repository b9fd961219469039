"""`python -m mochi_hvs.video --config configs/video/moving_digits.yaml [--set KEY=VALUE ...] [--seeds K ...]
[--report]`: run the video study's missing (arm, seed) probes, then write results/<name>/REPORT.md."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError, exit_status
from .recipe import load_recipe
from .report import write_report
from .study import VideoStudy


def main(argv: list[str] | None = None) -> int:
    """Run and report; user errors print one `error:` line and exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.video", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a video recipe (configs/video/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: the recipe's)")
    parser.add_argument("--report", action="store_true", help="only write REPORT.md from the recorded lines")
    args = parser.parse_args(argv)

    def act() -> None:
        study = VideoStudy(load_recipe(args.config, args.set))
        if not args.report:
            study.run(args.seeds)
        if not study.results.is_file():
            raise UserError(f"{study.results} does not exist yet: run without --report first")
        print(f"wrote {write_report(study.results)}")

    return exit_status(act, "")


if __name__ == "__main__":
    sys.exit(main())
