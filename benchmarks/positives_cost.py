"""What the positive-side methods cost: training-step time of Fast-MoCo, multi-crop and LC-loss against MoCo-v2.

    python benchmarks/positives_cost.py                        # the embedded recipes, batch 256, this device
    python benchmarks/positives_cost.py --batch 128 --repeats 9

Each method's recipe is timed against MoCo-v2 at the same image size (LC-loss needs 56 px, so it is compared with
MoCo-v2 at 56 px), their steps interleaved (A B A B ...) so that clock drift hits both alike; medians of the repeats.
The batches are real: one batch of Fashion-MNIST from each recipe's own data path (so multi-crop's small crops and
LC's flips are in it), drawn before the timing, so only the step is timed. Each ratio is printed beside the ratio
of the encoder forwards compute_cost.py counts (what compute-matched study arms use).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import benchmark_trainer, bn_splits_for, emit, interleaved_medians  # noqa: E402

from mochi_hvs.compute_cost import units_per_image  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# method: (its recipe, the image size both it and the MoCo-v2 it is compared with run at)
METHODS = {"fast_moco": ("fast_moco.yaml", 28), "multicrop": ("moco_multicrop.yaml", 28), "lc": ("moco_lc.yaml", 56)}


def step_on_first_batch(trainer) -> Callable[[], object]:
    """A training step on one batch from the trainer's own data path, the same batch every time."""
    batch = next(iter(trainer.parts.batches))
    return lambda: trainer.train_step(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    args = parser.parse_args()
    device = torch.device(args.device)
    common = [f"optim.batch_size={args.batch}", f"model.bn_splits={bn_splits_for(args.batch)}"]
    for method in args.methods:
        recipe, size = METHODS[method]
        sized = [*common, f"data.image_size={size}"]
        baseline = benchmark_trainer(sized, str(device), str(CONFIGS / "moco_v2.yaml"))
        trainer = benchmark_trainer(sized, str(device), str(CONFIGS / recipe))
        medians = interleaved_medians({"moco_v2": step_on_first_batch(baseline), method: step_on_first_batch(trainer)},
                                      args.repeats, args.warmup, device)
        ratio = medians[method] / medians["moco_v2"]
        modelled = units_per_image(trainer.cfg, selecting=False) / units_per_image(baseline.cfg, selecting=False)
        emit({"method": method, "recipe": f"configs/{recipe}", "image_size": size, "batch": args.batch,
              "moco_v2_step_s": round(medians["moco_v2"], 4), "method_step_s": round(medians[method], 4),
              "ratio_to_moco_v2": round(ratio, 3), "modelled_ratio": round(modelled, 3)}, device)
        baseline.close()
        trainer.close()


if __name__ == "__main__":
    main()
