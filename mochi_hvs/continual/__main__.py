"""`python -m mochi_hvs.continual --config STUDY.yaml [--report | --references] [--only ARM ...] [--seeds K ...]
[--set KEY=VALUE] [--into DIR]`.

Trains every (arm, seed) continual run of a study recipe (configs/studies/continual_*.yaml: arms of continual
recipes, seeds, shared overrides, the baseline arm), evaluates each task's checkpoint on the tasks seen so far and
the study's untrained references (pixels, random_init) on every task, and writes results/<study>/results.jsonl and
REPORT.md; run again, it continues where it stopped. `--into DIR` keeps the runs and results in DIR/runs/ and
DIR/results/ (the GPU campaign's work folder).
"""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from ..errors import exit_status
from ..study.recipe import load_study, relocated
from .report import write_report
from .runner import ContinualStudy


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the continual study."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.continual", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="study recipe, e.g. configs/studies/continual_fmnist.yaml")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides applied to every arm after the study's own")
    parser.add_argument("--into", metavar="DIR", help="keep the runs in DIR/runs/<study>/ and the results in "
                                                      "DIR/results/<study>/ instead of the study's own folders")
    parser.add_argument("--only", nargs="+", metavar="ARM", help="run only these arms")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="K", help="run only these seeds")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--report", action="store_true", help="only regenerate REPORT.md from the results")
    what.add_argument("--references", action="store_true",
                      help="only evaluate the study's references (no training), then regenerate REPORT.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run or report a continual study; user errors print one line and exit 2, an interruption exits 130."""
    args = build_parser().parse_args(argv)

    def run_and_report() -> None:
        study = load_study(args.config, args.set)
        study = relocated(study, args.into) if args.into else study
        runner = ContinualStudy(study, args.only, args.seeds)
        if args.references:
            runner.evaluate_references()
        elif not args.report:
            runner.run()
        if not runner.results.is_file():
            raise ConfigError(f"{runner.results}: no results yet; run the study first")
        spec = study.spec
        print(f"report: {write_report(study.report_dir, spec.name, spec.description, spec.baseline)}")

    return exit_status(run_and_report, "; run the same command again to continue the study")

if __name__ == "__main__":
    sys.exit(main())
