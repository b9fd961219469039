"""`python -m mochi_hvs.study.campaign plan|run|merge`: the GPU campaign (docs/gpu-campaign.md).

    plan   the pending runs with their estimates, from the studies' results
    run    the pending runs that fit in --budget seconds; the bundle and the runs' output go to --out
    merge  a bundle's records into the studies' results, and their reports regenerated
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ...config import every_key, settings_help
from ...errors import Interrupted, UserError
from ...train.loop import on_stop_signal
from .execute import WORK, run_campaign
from .kinds import Overrides
from .merge import merge_bundle
from .plan import pending_runs
from .recipe import DEVICES, cost_of, load_campaign

CAMPAIGN = Path("configs") / "campaigns" / "gpu.yaml"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the campaign."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.study.campaign", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "print the pending runs with their estimated seconds"),
                       ("run", "run the pending runs that fit in the budget and write their bundle")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--campaign", type=Path, default=CAMPAIGN, help=f"campaign file (default {CAMPAIGN})")
        command.add_argument("--device", choices=DEVICES, default="cuda",
                             help="the device kind whose cost model sizes the runs (run: the device they run on)")
    run = commands.choices["run"]
    run.formatter_class = argparse.RawDescriptionHelpFormatter
    run.epilog = settings_help(every_key(), "settings: the pretraining config keys with their defaults, which --set "
                                            "changes in every run (e.g. --set optim.steps=2):")
    run.add_argument("--budget", type=float, required=True, help="seconds this call may take")
    run.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/campaign_out"),
                     help="folder of the bundle and the runs' output (default: $OUT, else runs/campaign_out)")
    run.add_argument("--work", type=Path, default=WORK, help=f"folder the runs live in (default {WORK})")
    run.add_argument("--data-root", help="the dataset's folder on this machine (data.root of every run)")
    run.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                     help="overrides of every run (a dry run's tiny sizes); merge refuses such bundles by default")
    run.add_argument("--evaluation-set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                     help="overrides of every study's evaluations (a dry run's small sets; a continual study's "
                          "follow its --set); likewise")
    run.add_argument("--video-set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                     help="overrides of every video recipe (e.g. train.steps=2); likewise")
    merge = commands.add_parser("merge", help="merge a bundle into results/ and regenerate the reports",
                                description="merge a bundle into results/ and regenerate the reports")
    merge.add_argument("bundle", type=Path, help="the campaign.tar.gz a call wrote, or the folder holding it")
    merge.add_argument("--with-overrides", action="store_true",
                       help="merge a bundle made with --set/--evaluation-set too (a dry run, into a scratch checkout)")
    return parser


def print_plan(campaign_file: Path, device: str) -> None:
    """The pending runs, those started first, then in priority order, with their estimates."""
    campaign = load_campaign(campaign_file)
    pending = pending_runs(campaign, cost_of(campaign, device))
    width = max([len("study"), *(len(name) for name in campaign.studies)]) + 2
    print(f"{'study':<{width}}{'arm':<22}{'seed':>5}  {'state':<22}{'estimate':>9}")
    for run in pending:
        state = ("evaluations only" if run.evaluations_only else
                 f"from step {run.steps_done} of {run.steps}" if run.steps_done else
                 f"new, {run.steps} steps" if run.steps else "new, evaluations only")
        print(f"{run.declared.study.name:<{width}}{run.declared.label:<22}{run.declared.seed:>5}  {state:<22}"
              f"{run.seconds:>7.0f} s")
    total = sum(run.seconds for run in pending)
    print(f"{len(pending)} of {len(campaign.runs)} declared runs pending: {total / 60:.0f} min on {device} by the "
          f"cost model of {campaign_file}")


def stop_requested() -> None:
    """SIGINT or SIGTERM during a call: end it (its run saves a checkpoint; the bundle is written)."""
    raise Interrupted("the campaign call was stopped")


def main(argv: list[str] | None = None) -> int:
    """Plan, run or merge; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "plan":
            print_plan(args.campaign, args.device)
        elif args.command == "run":
            if args.device == "cuda" and not torch.cuda.is_available():
                raise UserError("no CUDA device here (torch.cuda.is_available() is False); run the campaign on a "
                                "GPU machine, or dry-run it with --device cpu and tiny sizes (docs/gpu-campaign.md)")
            with on_stop_signal(stop_requested):
                run_campaign(args.campaign, args.device, args.out, args.budget, args.work, args.data_root,
                             Overrides(tuple(args.set), tuple(args.evaluation_set), tuple(args.video_set)))
        else:
            for line in merge_bundle(args.bundle, args.with_overrides):
                print(line)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
