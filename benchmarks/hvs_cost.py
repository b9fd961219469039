"""What HVS costs: training-step time of MoCo-v2 vs HVS, and the share of data augmentation.

    python benchmarks/hvs_cost.py                       # ResNet-18, 32 px, batch 256, on this machine's device
    python benchmarks/hvs_cost.py --arch resnet50 --image-size 224 --batch 64

Step times are medians of interleaved repeats (every variant's step alternates with plain MoCo-v2's),
on synthetic batches so that only the model's work is timed. Each is reported as a ratio to MoCo-v2
and to the cost model: with F one encoder forward over the batch and a backward at 2F, MoCo-v2 costs
4F (f_q forward + backward, f_k forward). HVS adds no-grad forwards over V candidates: the momentum
scorer runs f_k over V views (reused as keys: V + 3 in all), the query scorer f_q and f_k over V views
(2V + 3). Scoring at a lower resolution r scales those forwards by (r / size)^2 but then the chosen
key is re-computed at full size (+F). Separately, the device augmentation of V views per image is
timed on real Fashion-MNIST images, as a share of the step it feeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (  # noqa: E402
    benchmark_trainer,
    bn_splits_for,
    emit,
    interleaved_medians,
    synchronize,
    synthetic_batch,
)

from mochi_hvs.compute_cost import units_per_image  # noqa: E402
from mochi_hvs.config import views_per_image  # noqa: E402
from mochi_hvs.data.batch_augment import BatchViewAugmenter  # noqa: E402
from mochi_hvs.data.datasets import load_images  # noqa: E402


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    """Config overrides per HVS variant (V x scorer x scoring resolution)."""
    out = {}
    for views in args.views:
        for scorer in ("momentum", "query"):
            for resolution in (args.image_size, args.image_size // 2):
                name = f"V={views},{scorer},res={resolution}"
                out[name] = ["hvs.enabled=true", f"hvs.num_views={views}", f"hvs.scorer={scorer}",
                             f"hvs.score_resolution={resolution}", f"data.image_size={args.image_size}"]
    return out


def augmentation_seconds(args: argparse.Namespace, views: int, device: torch.device) -> float:
    """Median seconds to make `views` augmented views of a batch of real Fashion-MNIST images on `device`."""
    images = load_images("fashion_mnist", None, "pretrain")
    pixels = torch.from_numpy(images.array[: args.batch]).permute(0, 3, 1, 2).expand(-1, 3, -1, -1).to(device)
    augment = BatchViewAugmenter(views, args.image_size, "mocov2", [0.5] * 3, [0.25] * 3)
    generator = torch.Generator(device=device).manual_seed(0)
    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        augment(pixels, generator)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--views", nargs="+", type=int, default=[2, 3, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    common = [f"model.arch={args.arch}", f"optim.batch_size={args.batch}", f"moco.queue_size={16 * args.batch}",
              f"model.bn_splits={bn_splits_for(args.batch)}"]
    baseline = benchmark_trainer(common, str(device))
    for name, overrides in variants(args).items():
        trainer = benchmark_trainer(common + overrides, str(device))
        views = views_per_image(trainer.cfg)
        batch = synthetic_batch(args.batch, views, args.image_size, device)
        plain_batch = synthetic_batch(args.batch, 2, args.image_size, device)
        medians = interleaved_medians({"moco_v2": partial(baseline.train_step, plain_batch),
                                       "hvs": partial(trainer.train_step, batch)}, args.repeats, args.warmup, device)
        ratio = medians["hvs"] / medians["moco_v2"]
        model = units_per_image(trainer.cfg, selecting=True) / units_per_image(baseline.cfg, selecting=False)
        emit({"part": "step", "variant": name, "arch": args.arch, "image_size": args.image_size, "batch": args.batch,
              "moco_v2_step_s": round(medians["moco_v2"], 4), "hvs_step_s": round(medians["hvs"], 4),
              "ratio_to_moco_v2": round(ratio, 3), "modelled_ratio": round(model, 3),
              "measured_over_modelled": round(ratio / model, 3)}, device)
    for views in sorted({2, *args.views}):
        seconds = augmentation_seconds(args, views, device)
        emit({"part": "augmentation", "views": views, "device": str(device), "batch": args.batch,
              "augment_s": round(seconds, 4), "images_per_s": round(args.batch / seconds, 1)}, device)


if __name__ == "__main__":
    main()
