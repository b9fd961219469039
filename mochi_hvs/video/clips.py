"""Clips as input: a set of videos held as uint8 frames, a frames folder on disk (one subfolder per video, frames
sorted by name, an optional labels.csv), and seeded clip sampling (T frames at a stride; two clips of one video at
different times as the positive pair)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.datasets import UNREADABLE_IMAGE_ERRORS
from ..errors import UserError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABELS_FILE = "labels.csv"  # columns: clip, then one integer column per label (e.g. content, motion)


class ClipError(UserError, ValueError):
    """Videos or clip settings that cannot give the clips asked for; the message names the video and the fix."""


@dataclass
class ClipSet:
    """Videos as uint8 frames (F, H, W, C) of one frame size, their names and integer labels per task (e.g.
    content, motion)."""

    videos: list[np.ndarray]
    names: list[str]
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # task -> (N,) int64

    def __len__(self) -> int:
        return len(self.videos)

    def frames(self, video: int, indices: np.ndarray) -> torch.Tensor:
        """Frames `indices` of one video as a (T, C, H, W) uint8 tensor."""
        return torch.from_numpy(self.videos[video][indices]).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class ClipSpec:
    """T frames taken every `stride` frames."""

    frames: int
    stride: int = 1

    @property
    def span(self) -> int:
        """Frames of the video one clip covers, first to last."""
        return (self.frames - 1) * self.stride + 1

    def indices(self, start: int) -> np.ndarray:
        """The frame indices of the clip starting at `start`."""
        return start + self.stride * np.arange(self.frames)

    def check(self, length: int, name: str, pair: bool = False) -> None:
        """ClipError when a video of `length` frames cannot hold one clip (or, with `pair`, two at different
        times)."""
        if self.frames < 1 or self.stride < 1:
            raise ClipError(f"a clip needs frames >= 1 and stride >= 1; got frames={self.frames}, "
                            f"stride={self.stride}")
        need = self.span + (1 if pair else 0)
        if length < need:
            what = "two clips at different times" if pair else "a clip"
            raise ClipError(f"video {name} has {length} frames; {what} of {self.frames} frames at stride "
                            f"{self.stride} need{'s' if not pair else ''} {need} (lower frames or stride, or use "
                            f"longer videos)")

    def centre_start(self, length: int) -> int:
        """The start of the clip in the middle of a video: the evaluation clip."""
        return (length - self.span) // 2

    def pair_starts(self, length: int, rng: np.random.Generator) -> tuple[int, int]:
        """Two different starts, uniform over the video's valid starts: the positive pair's clips."""
        first, second = rng.choice(length - self.span + 1, size=2, replace=False)
        return int(first), int(second)


def check_clips(clips: ClipSet, spec: ClipSpec, pair: bool) -> None:
    """Every video can hold the clips asked for (see ClipSpec.check)."""
    if not len(clips):
        raise ClipError("the clip set holds no video")
    for video, name in zip(clips.videos, clips.names, strict=True):
        spec.check(len(video), name, pair)


def pair_batch(clips: ClipSet, videos: np.ndarray, spec: ClipSpec,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Two clips per video, at different times: (B, 2, T, C, H, W) uint8, and their frame indices (B, 2, T)."""
    indices = np.stack([np.stack([spec.indices(s) for s in spec.pair_starts(len(clips.videos[v]), rng)])
                        for v in videos])
    frames = torch.stack([torch.stack([clips.frames(v, i) for i in pair]) for v, pair in zip(videos, indices,
                                                                                            strict=True)])
    return frames, torch.from_numpy(indices)


def centre_batch(clips: ClipSet, videos: np.ndarray, spec: ClipSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre clip of each video: (B, T, C, H, W) uint8 and its frame indices (B, T)."""
    indices = np.stack([spec.indices(spec.centre_start(len(clips.videos[v]))) for v in videos])
    frames = torch.stack([clips.frames(v, i) for v, i in zip(videos, indices, strict=True)])
    return frames, torch.from_numpy(indices)


def normalised(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., C, H, W) as float model input: scaled to [0, 1], one channel repeated to three, then
    (x - mean) / std per channel (`mean`, `std`: 3 values each)."""
    images = frames.float().div(255)
    images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    return (images - mean.view(3, 1, 1)) / std.view(3, 1, 1)


def _read_frame(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L" if image.mode in ("L", "1", "P") else "RGB"))
    except UNREADABLE_IMAGE_ERRORS as err:
        raise ClipError(f"cannot read frame {path} ({err}); replace or delete it") from err


def read_video_folder(folder: Path) -> np.ndarray:
    """One video: the frames of a folder sorted by file name, as (F, H, W, C) uint8."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise ClipError(f"clip folder {folder} holds no frame ({', '.join(FRAME_SUFFIXES)} files)")
    frames = [_read_frame(p) for p in files]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise ClipError(f"clip folder {folder}: frames of different sizes {sorted(shapes)}")
    video = np.stack(frames)
    return video[..., None] if video.ndim == 3 else video


def _read_labels(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """labels.csv: a `clip` column naming every clip folder, then integer label columns."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "clip" not in rows[0]:
        raise ClipError(f"{path}: expected a header `clip,<task>,...` and one row per clip folder")
    by_clip = {row["clip"]: row for row in rows}
    if missing := [n for n in names if n not in by_clip]:
        raise ClipError(f"{path}: no labels for clip folder(s) {', '.join(missing[:3])}")
    tasks = [key for key in rows[0] if key != "clip"]
    try:
        return {task: np.array([int(by_clip[n][task]) for n in names], dtype=np.int64) for task in tasks}
    except ValueError as err:
        raise ClipError(f"{path}: labels must be integers ({err})") from err


def read_frames_folder(root: str | Path) -> ClipSet:
    """A frames folder: one subfolder per video (in name order), frames sorted by name, and an optional
    labels.csv beside them. Every frame must have one size."""
    root = Path(root)
    if not root.is_dir():
        raise ClipError(f"frames folder {root} not found (expected {root}/<clip>/<frame>.png)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ClipError(f"frames folder {root} holds no clip folder (expected {root}/<clip>/<frame>.png)")
    videos = [read_video_folder(f) for f in folders]
    sizes = {v.shape[1:] for v in videos}
    if len(sizes) > 1:
        raise ClipError(f"frames folder {root}: clips of different frame sizes {sorted(sizes)}")
    names = [f.name for f in folders]
    labels = _read_labels(root / LABELS_FILE, names) if (root / LABELS_FILE).is_file() else {}
    return ClipSet(videos, names, labels)


def write_frames_folder(clips: ClipSet, root: str | Path) -> Path:
    """Write a clip set as a frames folder (PNG frames, labels.csv when it has labels); returns the folder."""
    root = Path(root)
    for video, name in zip(clips.videos, clips.names, strict=True):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index, frame in enumerate(video):
            Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(root / name / f"{index:04d}.png")
    if clips.labels:
        with open(root / LABELS_FILE, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["clip", *clips.labels])
            for row, name in enumerate(clips.names):
                writer.writerow([name, *(int(values[row]) for values in clips.labels.values())])
    return root
