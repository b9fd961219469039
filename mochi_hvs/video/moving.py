"""Generated moving-object clips: an item of an embedded image set (Fashion-MNIST, MNIST-5k, scikit-learn's digits)
moving on a black canvas in one of 8 directions at a constant speed, labelled with its content (the item's class)
and its motion (the direction). Training clips use the set's training split, test clips its test split; everything
follows from the seed.

`python -m mochi_hvs.video.moving --out DIR [--train-clips N] [--test-clips N] [--canvas PX] [--frames F] [--seed S]
[--source SET] [--root FOLDER]`
writes DIR/train and DIR/test as frames folders (mochi_hvs/video/clips.py), each with its labels.csv.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.datasets import load_images
from ..errors import UserError
from .clips import ClipError, ClipSet, write_frames_folder

# Unit steps (dx, dy) in image coordinates (y grows downwards), anticlockwise from east.
DIRECTIONS = {"E": (1, 0), "NE": (1, -1), "N": (0, -1), "NW": (-1, -1),
              "W": (-1, 0), "SW": (-1, 1), "S": (0, 1), "SE": (1, 1)}
SOURCES = ("fashion_mnist", "mnist5k", "sklearn_digits")


@dataclass(frozen=True)
class MovingSpec:
    """The drawing of one clip set: canvas and item sides (pixels), frames per video, pixels moved per frame along
    each moving axis."""

    canvas: int = 32
    item: int = 16
    frames: int = 12
    speed: int = 1

    def check(self) -> None:
        """ClipError when an item moving for the whole video cannot stay on the canvas."""
        travel = self.speed * (self.frames - 1)
        if min(self.canvas, self.item, self.frames, self.speed) < 1 or self.item + travel > self.canvas:
            raise ClipError(f"an item of {self.item} px moving {self.speed} px per frame for {self.frames} frames "
                            f"travels {travel} px and needs a canvas of at least {self.item + travel} px; got "
                            f"{self.canvas} (all four must be positive)")


def draw_video(item: np.ndarray, direction: tuple[int, int], spec: MovingSpec,
               rng: np.random.Generator) -> np.ndarray:
    """One video (F, canvas, canvas, 1) uint8: `item` (item x item) starting where its whole path fits, drawn at
    the start plus `speed * t * direction` in frame t."""
    travel = spec.speed * (spec.frames - 1)
    room = spec.canvas - spec.item
    start = [int(rng.integers(max(0, -d * travel), room - max(0, d * travel) + 1)) for d in direction]
    video = np.zeros((spec.frames, spec.canvas, spec.canvas, 1), dtype=np.uint8)
    for t in range(spec.frames):
        x, y = (s + d * spec.speed * t for s, d in zip(start, direction, strict=True))
        video[t, y:y + spec.item, x:x + spec.item, 0] = item
    return video


def moving_clips(count: int, split: str, spec: MovingSpec, seed: int, source: str = "fashion_mnist",
                 root: str | None = None) -> ClipSet:
    """`count` clips of one split (train or test) with labels `content` and `motion` (index into DIRECTIONS)."""
    spec.check()
    images = load_images(source, root, split)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    steps = list(DIRECTIONS.values())
    videos, content, motion = [], [], []
    for _ in range(count):
        index, direction = int(rng.integers(len(images))), int(rng.integers(len(steps)))
        pixels = images.image(index)[0].numpy()  # (H, W): one channel of the grayscale item
        item = np.asarray(Image.fromarray(pixels).resize((spec.item, spec.item), Image.BILINEAR))
        videos.append(draw_video(item, steps[direction], spec, rng))
        content.append(int(images.labels[index]))
        motion.append(direction)
    names = [f"{split}_{i:06d}" for i in range(count)]
    return ClipSet(videos, names, {"content": np.array(content), "motion": np.array(motion)})


def main(argv: list[str] | None = None) -> int:
    """Write the train and test frames folders; bad settings or a missing image set print one line (exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.video.moving", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write train/ and test/ into")
    parser.add_argument("--train-clips", type=int, default=1000)
    parser.add_argument("--test-clips", type=int, default=500)
    parser.add_argument("--canvas", type=int, default=MovingSpec.canvas, help="canvas side in pixels")
    parser.add_argument("--item", type=int, default=MovingSpec.item, help="item side in pixels")
    parser.add_argument("--frames", type=int, default=MovingSpec.frames, help="frames per video")
    parser.add_argument("--speed", type=int, default=MovingSpec.speed, help="pixels per frame along a moving axis")
    parser.add_argument("--source", choices=SOURCES, default="fashion_mnist", help="the items' image set")
    parser.add_argument("--root", help="the image set's folder (as data.root; default: where it is installed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = MovingSpec(args.canvas, args.item, args.frames, args.speed)
    try:
        for split, count in (("train", args.train_clips), ("test", args.test_clips)):
            write_frames_folder(moving_clips(count, split, spec, args.seed, args.source, args.root),
                                Path(args.out) / split)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.train_clips} train and {args.test_clips} test clips of {args.frames} frames "
          f"({args.canvas} px) to {args.out}/{{train,test}} (labels.csv: content, motion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
