"""The pathology recipe's demonstration on scikit-image's IHC image (docs/methods/pathology.md):

    python -m mochi_hvs.pathology.demo prepare runs/pathology_ihc/data
    OMP_NUM_THREADS=1 python -m mochi_hvs.pathology.demo run --fmnist runs/fmnist_headline/e5/seed{seed}/last.pth
    python -m mochi_hvs.pathology.demo report results/pathology_ihc

`prepare` writes the training region (slides/) and the nuclei pseudo-labels of both regions (nuclei/train, test;
ihc.py). `run` pretrains on the training region's tiles with the recipe configs/pathology/ihc.yaml, with and
without stain augmentation, and scores nuclei segmentation (mochi-nuclei, frozen backbone) of those backbones, of the
Fashion-MNIST default backbone and of a random initialisation, per seed: each pretraining and evaluation is its own
command (`python -m mochi_hvs.pretrain`, `python eval/nuclei.py`), run from the repository root, and each evaluation
appends its record (command, seed, commit, machine) to the results file; finished steps are skipped, so an
interrupted run goes on where it stopped. `report` writes REPORT.md from the records.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ..errors import UserError, exit_status
from .ihc import prepare_ihc
from .report import arm_of, write_report

RECIPE = "configs/pathology/ihc.yaml"
NUCLEI_COMMAND = "eval/nuclei.py"
PRETRAINED_ARMS = {"ihc_stain": [], "ihc_plain": ["data.stain_jitter=[0,0]"]}  # arm: its --set beyond the recipe


def _run(command: list[str]) -> None:
    """Run one step's command; UserError when it fails (its own error line is printed above)."""
    print("+", " ".join(command), file=sys.stderr, flush=True)
    code = subprocess.run(command).returncode
    if code:
        raise UserError(f"this step stopped with exit status {code}, its error above: {' '.join(command)}")


def pretrain(arm: str, seed: int, data: Path, runs: Path) -> Path:
    """Pretrain one arm for one seed (skipped when its run finished); its checkpoint."""
    run_dir = runs / f"{arm}_seed{seed}"
    if not (run_dir / "summary.json").is_file():
        _run([sys.executable, "-m", "mochi_hvs.pretrain", "--config", RECIPE, "--set", f"seed={seed}",
              f"name={run_dir.name}", f"output_dir={runs}", f"data.root={data / 'slides'}", "device=cpu",
              *PRETRAINED_ARMS[arm]])
    return run_dir / "last.pth"


def done(results: Path) -> set[tuple[str, int]]:
    """The (arm, seed) pairs the results file already holds."""
    if not results.is_file():
        return set()
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(arm_of(record), record["seed"]) for record in records}


def evaluate(arm: str, seed: int, checkpoint: Path, data: Path, results: Path, random_init: bool = False) -> None:
    """Score one backbone's nuclei segmentation for one seed (skipped when recorded)."""
    if (arm, seed) in done(results):
        return
    _run([sys.executable, NUCLEI_COMMAND, "--checkpoint", str(checkpoint), *(["--random-init"] if random_init else []),
          "--set", f"seed={seed}", f"eval.nuclei.seed={seed}", f"eval.nuclei.train={data / 'nuclei' / 'train'}",
          f"eval.nuclei.test={data / 'nuclei' / 'test'}", "device=cpu", "--results", str(results)])


def run(args: argparse.Namespace) -> None:
    """Every arm for every seed, then the report."""
    if not Path(NUCLEI_COMMAND).is_file() or not Path(RECIPE).is_file():
        raise UserError(f"run the demonstration from the repository root (it runs {NUCLEI_COMMAND} and reads {RECIPE})")
    data, runs, results = Path(args.data), Path(args.runs), Path(args.out) / "results.jsonl"
    if not (data / "slides").is_dir():
        prepare_ihc(data)
    for seed in args.seeds:
        fmnist = Path(args.fmnist.format(seed=seed))
        if not fmnist.is_file():
            raise UserError(f"--fmnist: {fmnist} not found (the Fashion-MNIST default backbone of seed {seed})")
        checkpoints = {arm: pretrain(arm, seed, data, runs) for arm in PRETRAINED_ARMS}
        for arm, checkpoint in checkpoints.items():
            evaluate(arm, seed, checkpoint, data, results)
        evaluate("fmnist", seed, fmnist, data, results)
        evaluate("random", seed, checkpoints["ihc_stain"], data, results, random_init=True)
    write_report(Path(args.out))


def main(argv: list[str] | None = None) -> int:
    """prepare | run | report."""
    parser = argparse.ArgumentParser(description="The pathology recipe's demonstration on scikit-image's IHC image.")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="write the training region and the nuclei pseudo-labels")
    prepare.add_argument("out", help="folder to write slides/ and nuclei/ into")
    demo = commands.add_parser("run", help="pretrain, evaluate every arm per seed, write the report")
    demo.add_argument("--fmnist", required=True, help="the Fashion-MNIST default backbone per seed, {seed} in the "
                                                      "path (e.g. runs/fmnist_headline/e5/seed{seed}/last.pth)")
    demo.add_argument("--data", default="runs/pathology_ihc/data", help="the prepared data (made when missing)")
    demo.add_argument("--runs", default="runs/pathology_ihc", help="the pretraining runs' folder")
    demo.add_argument("--out", default="results/pathology_ihc", help="results.jsonl and REPORT.md go here")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    report = commands.add_parser("report", help="write REPORT.md from results.jsonl")
    report.add_argument("out", help="the folder of results.jsonl")
    args = parser.parse_args(argv)

    def act() -> None:
        if args.command == "prepare":
            print(json.dumps({name: str(path) for name, path in prepare_ihc(args.out).items()}))
        elif args.command == "run":
            run(args)
        else:
            print(f"wrote {write_report(Path(args.out))}")

    return exit_status(act, "")


if __name__ == "__main__":
    sys.exit(main())
