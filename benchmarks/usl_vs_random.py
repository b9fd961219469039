"""Semi-supervised accuracy with USL-chosen against uniformly random label sets of the same size.

`python benchmarks/usl_vs_random.py --checkpoint FILE [--budgets 10 40 100] [--seeds 0 1 2] [--results FILE]
[--splits DIR] [--random-init] [--set KEY=VALUE ...]`

For every budget N and seed s: mochi-select chooses N images (eval.select.seed=s) and mochi-semisup fine-tunes on
them (eval.semisup.split_file, eval.semisup.seed=s); mochi-semisup also fine-tunes on N images drawn uniformly at
random (eval.semisup.random_labels=N, eval.semisup.seed=s). Both commands append their JSON lines to --results; this
script prints one JSON line per fine-tuning run, then mean and sample standard deviation of top-1 per (method,
budget) (null with one seed). --set goes to both commands (e.g. device=cuda eval.semisup.epochs=20
eval.select.pool=10000); the commands' own tables go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mochi_hvs.evaluation.commands import select_main, semisup_main  # noqa: E402


def last_result(path: Path) -> dict[str, Any]:
    """The last JSON line of a results file."""
    return json.loads(path.read_text().splitlines()[-1])


def run(command, argv: list[str]) -> None:
    """Run an evaluator command in-process with its table on stderr; stop on failure."""
    with contextlib.redirect_stdout(sys.stderr):
        status = command(argv)
    if status != 0:
        raise SystemExit(f"{command.__name__} {' '.join(argv)} exited with {status}")


def main() -> None:
    """Run every (method, budget, seed) and print the JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 40, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", default="usl_vs_random.jsonl", help="JSON-lines file the commands append to")
    parser.add_argument("--splits", default="usl_splits", help="folder of the split files mochi-select writes")
    parser.add_argument("--random-init", action="store_true", help="the checkpoint's architecture at random init")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides for both commands")
    args = parser.parse_args()
    results = Path(args.results)
    common = ["--checkpoint", args.checkpoint, "--results", str(results), *(["--random-init"] * args.random_init)]
    top1: dict[tuple[str, int], list[float]] = {}
    for budget in args.budgets:
        for seed in args.seeds:
            split = Path(args.splits) / f"usl_{budget}_seed{seed}.txt"
            run(select_main, [*common, "--budget", str(budget), "--out", str(split), "--set", *args.set,
                              f"eval.select.seed={seed}"])
            covered = last_result(results)["metrics"]["classes_covered"]
            sources = {"usl": f"eval.semisup.split_file={split}", "random": f"eval.semisup.random_labels={budget}"}
            for method, source in sources.items():
                run(semisup_main, [*common, "--set", *args.set, source, f"eval.semisup.seed={seed}"])
                metrics = last_result(results)["metrics"]
                top1.setdefault((method, budget), []).append(metrics["top1"])
                line = {"method": method, "budget": budget, "seed": seed, "top1": metrics["top1"],
                        "top5": metrics.get("top5"), "usl_classes_covered": covered if method == "usl" else None}
                print(json.dumps(line), flush=True)
    for (method, budget), values in top1.items():
        spread = statistics.stdev(values) if len(values) > 1 else None  # one seed: no spread
        print(json.dumps({"method": method, "budget": budget, "seeds": len(values),
                          "top1_mean": statistics.mean(values), "top1_std": spread}), flush=True)


if __name__ == "__main__":
    main()
