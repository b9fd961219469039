"""The recipe of a video study (configs/video/*.yaml): the frames folders, the clips, the image model, the training
settings and the seeds; strict keys (did-you-mean), `--set key=value` overrides, one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config.loading import parse_override
from ..config.values import apply_values, read_yaml
from ..errors import ConfigError

FASHION_MNIST_MEAN = [0.286, 0.286, 0.286]
FASHION_MNIST_STD = [0.353, 0.353, 0.353]


@dataclass
class VideoData:
    """Where the clips are and how they are cut."""

    train: str = "data/moving_fmnist/train"  # a frames folder with labels.csv (content, motion)
    test: str = "data/moving_fmnist/test"
    frames: int = 8  # T, frames per clip
    stride: int = 1  # frames between a clip's frames
    mean: list[float] = field(default_factory=lambda: list(FASHION_MNIST_MEAN))  # the video encoder's input
    std: list[float] = field(default_factory=lambda: list(FASHION_MNIST_STD))


@dataclass
class VideoTrain:
    """The video encoder, its heads and its optimisation (AdamW, cosine schedule)."""

    width: int = 12  # the encoder's first stage; its features have 4 x width dimensions
    projection_dim: int = 64
    steps: int = 150
    batch_size: int = 32  # videos per step, two clips each
    lr: float = 2.0e-3
    weight_decay: float = 1.0e-4
    temperature: float = 0.1
    distill_weight: float = 1.0  # the `distilled` arm's weight of the distillation term


@dataclass
class VideoRecipe:
    """A video study: the arms image_model, random_init, temporal (InfoNCE only) and distilled, for each seed."""

    name: str = "video_moving_digits"  # results/<name>/
    device: str = "auto"  # auto | cpu | cuda | cuda:N (runtime.resolve_device), as the pretraining configs spell it
    image_model: str = "runs/moco_v2/backbone.safetensors"  # any weights file the loader reads
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data: VideoData = field(default_factory=VideoData)
    train: VideoTrain = field(default_factory=VideoTrain)

    def validate(self, source: str) -> None:
        """ConfigError for settings no run can use."""
        positive = {"data.frames": self.data.frames, "data.stride": self.data.stride, "train.width": self.train.width,
                    "train.projection_dim": self.train.projection_dim, "train.steps": self.train.steps,
                    "train.lr": self.train.lr, "train.temperature": self.train.temperature}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{source}: '{key}' must be positive, got {value}")
        if self.train.batch_size < 2:
            raise ConfigError(f"{source}: 'train.batch_size' must be at least 2 (the other videos are the "
                              f"negatives), got {self.train.batch_size}")
        if not self.seeds:
            raise ConfigError(f"{source}: 'seeds' names no seed")
        for key in ("mean", "std"):
            if len(getattr(self.data, key)) != 3:
                raise ConfigError(f"{source}: 'data.{key}' must hold 3 values (one per channel)")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> VideoRecipe:
    """The recipe file's values over the defaults, then each `key=value` override, validated."""
    recipe = VideoRecipe()
    apply_values(recipe, read_yaml(Path(path)), "", str(path))
    for text in overrides or []:
        key, value = parse_override(text)
        for part in reversed(key.split(".")):
            value = {part: value}
        apply_values(recipe, value, "", "--set")
    recipe.validate(str(path))
    return recipe
