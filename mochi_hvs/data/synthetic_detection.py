"""A small COCO-format detection set made offline from real Fashion-MNIST items pasted on canvases.

`python -m mochi_hvs.data.synthetic_detection --out DIR [--train-images N] [--val-images N] [--seed S]`

Each canvas holds 1..max_objects items at random scales and positions, without overlap, on a faint
noise background; a box is the tight extent of an item's visible pixels and its class is the item's
Fashion-MNIST label. Training canvases use the training split's items, validation canvases the test
split's. The result depends only on the seed. Layout (the standard COCO one):
`DIR/annotations/instances_{split}.json` and `DIR/{split}/*.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import DatasetError, load_fashion_mnist

VISIBLE = 16  # pixel intensity above which an item pixel counts towards its box
PLACEMENT_TRIES = 50


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_canvas(items: np.ndarray, labels: np.ndarray, rng: np.random.Generator, canvas: int, max_objects: int,
                 scale: tuple[float, float]) -> tuple[np.ndarray, list[tuple[list[int], int]]]:
    """One canvas (H, W) uint8 and its objects as ([x0, y0, x1, y1], label)."""
    image = rng.integers(0, 24, size=(canvas, canvas)).astype(np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        index = int(rng.integers(len(items)))
        side = int(round(items.shape[1] * rng.uniform(*scale)))
        item = np.asarray(Image.fromarray(items[index]).resize((side, side), Image.BILINEAR))
        ys, xs = np.nonzero(item > VISIBLE)
        if not len(xs):
            continue
        for _ in range(PLACEMENT_TRIES):
            x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
            box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
            if not any(_boxes_overlap(box, other) for other in placed):
                break
        else:
            continue
        region = image[y:y + side, x:x + side]
        np.maximum(region, item, out=region)
        placed.append(box)
        objects.append((list(box), int(labels[index])))
    return image, objects


def make_split(out: Path, split: str, num_images: int, seed: int, canvas: int = 64, max_objects: int = 3,
               scale: tuple[float, float] = (1.0, 1.5), fashion_root: str | None = None) -> Path:
    """Write one split (images and COCO annotations) and return the annotation file."""
    source = load_fashion_mnist(fashion_root, train=split == "train")
    items, labels = source.array[..., 0], source.labels
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels, objects = _draw_canvas(items, labels, rng, canvas, max_objects, scale)
        name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(out / split / name)
        images.append({"id": image_id, "file_name": name, "width": canvas, "height": canvas})
        for (x0, y0, x1, y1), label in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(source.classes)]
    path = out / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def make_fashion_detection(out: str | Path, train_images: int = 2000, val_images: int = 500, seed: int = 0,
                           canvas: int = 64, fashion_root: str | None = None) -> Path:
    """Write the train and val splits under `out`; returns `out`."""
    out = Path(out)
    make_split(out, "train", train_images, seed, canvas, fashion_root=fashion_root)
    make_split(out, "val", val_images, seed, canvas, fashion_root=fashion_root)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line generator; a missing Fashion-MNIST prints one line and exits with status 2."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.data.synthetic_detection",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--canvas", type=int, default=64, help="canvas side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = make_fashion_detection(args.out, args.train_images, args.val_images, args.seed, args.canvas)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.train_images} train and {args.val_images} val canvases to {out} (COCO layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
