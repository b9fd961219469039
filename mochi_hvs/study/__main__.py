"""`python -m mochi_hvs.study --config STUDY.yaml [--report|--dry-run|--reprobe] [--only ARM ...] [--seeds K ...]`.

`--into DIR` keeps the runs and results in DIR/runs/ and DIR/results/ (the GPU campaign's work folder), and
`--evaluation-set` changes the evaluations' settings (e.g. small sets for a dry run).
"""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, every_key, settings_help
from ..errors import exit_status
from .plots import MATPLOTLIB_MISSING, write_plots
from .recipe import load_study, relocated
from .report import write_report
from .runner import StudyRunner, describe_plan


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the study runner."""
    parser = argparse.ArgumentParser(prog="mochi-study", description=__doc__.splitlines()[0].strip("`"),
                                     epilog=settings_help(every_key(), "settings: the pretraining config keys with "
                                                          "their defaults; an arm's recipe and set change them, --set "
                                                          "in every arm (e.g. --set device=cuda):"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="study recipe, e.g. configs/studies/fmnist_hardness.yaml")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides applied to every arm after the study's own (e.g. device=cuda)")
    parser.add_argument("--evaluation-set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides of the evaluations' settings after the study's evaluation_set "
                             "(e.g. eval.knn_train_subset=200 for a dry run)")
    parser.add_argument("--into", metavar="DIR", help="keep the runs in DIR/runs/<study>/ and the results in "
                                                      "DIR/results/<study>/ instead of the study's own folders")
    parser.add_argument("--only", nargs="+", metavar="ARM", help="run only these arms")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="K", help="run only these seeds")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report", action="store_true", help="only regenerate the report and plots from the results")
    mode.add_argument("--dry-run", action="store_true",
                      help="print the plan with an estimated time per run (from a few timed steps) and stop")
    mode.add_argument("--reprobe", action="store_true",
                      help="evaluate the finished runs (their checkpoints in the study's runs folder) and the "
                           "references again with today's evaluators, training nothing, then report")
    return parser


def report(runner: StudyRunner) -> None:
    """Write the figures (when matplotlib is installed) and REPORT.md."""
    spec = runner.study.spec
    plots = write_plots(runner.study.report_dir, spec.baseline)
    if plots is None:
        print(MATPLOTLIB_MISSING, file=sys.stderr)
    path = write_report(runner.study.report_dir, spec.name, spec.baseline, spec.description, plots)
    print(f"report: {path}")


def main(argv: list[str] | None = None) -> int:
    """Run, plan or report a study; user errors print one line and exit 2, an interruption exits 130."""
    args = build_parser().parse_args(argv)

    def act() -> None:
        study = load_study(args.config, args.set, args.evaluation_set)
        runner = StudyRunner(relocated(study, args.into) if args.into else study, args.only, args.seeds)
        if args.dry_run:
            print(describe_plan(runner))
            return
        if args.reprobe:
            for run in runner.reprobe():
                print(f"not re-evaluated: {run.label} seed {run.seed} ({run.status}; no finished checkpoint in "
                      f"{run.run_dir})", file=sys.stderr)
        elif not args.report:
            runner.run()
        if not runner.results_path.is_file():
            raise ConfigError(f"{runner.results_path}: no results yet; run the study first")
        report(runner)

    return exit_status(act, "; run the same command again to continue the study")

if __name__ == "__main__":
    sys.exit(main())
