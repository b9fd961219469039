"""`python -m mochi_hvs.video --config configs/video/moving_digits.yaml [--set KEY=VALUE ...] [--seeds K ...]
[--arms ARM ...] [--into DIR] [--report]`: run the video study's missing (arm, seed) probes, then write
results/<name>/REPORT.md (DIR/results/<name>/ with --into, the GPU campaign's work folder)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError, exit_status
from .recipe import load_recipe
from .report import write_report
from .study import ARMS, VideoStudy


def main(argv: list[str] | None = None) -> int:
    """Run and report; user errors print one `error:` line and exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.video", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a video recipe (configs/video/*.yaml)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override recipe keys")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: the recipe's)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, help="only these arms (default: all)")
    parser.add_argument("--into", metavar="DIR", help="keep the results in DIR/results/<name>/")
    parser.add_argument("--report", action="store_true", help="only write REPORT.md from the recorded lines")
    args = parser.parse_args(argv)

    def act() -> None:
        study = VideoStudy(load_recipe(args.config, args.set), Path(args.into or ".") / "results")
        if not args.report:
            study.run(args.seeds, args.arms)
        if not study.results.is_file():
            raise UserError(f"{study.results} does not exist yet: run without --report first")
        print(f"wrote {write_report(study.results)}")

    return exit_status(act, "")


if __name__ == "__main__":
    sys.exit(main())
