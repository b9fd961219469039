"""Nuclei instance-segmentation sets on disk: a folder with `images/` (RGB images) and `masks/` (one instance map
per image, same file stem, PNG: 0 background, each nucleus its own positive id, 8 or 16 bit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import DatasetError, read_image_file
from .tiles import image_files


@dataclass(frozen=True)
class NucleiImage:
    """One image (H, W, 3) uint8 and its instance map (H, W) int32, named by its file."""

    name: str
    image: np.ndarray
    instances: np.ndarray


def read_instance_map(path: Path) -> np.ndarray:
    """An instance map file as (H, W) int32."""
    with Image.open(path) as mask:
        array = np.asarray(mask)
    if array.ndim != 2:
        raise DatasetError(f"nuclei: {path} is not a single-channel instance map (shape {array.shape})")
    return array.astype(np.int32)


def read_nuclei_set(root: str | Path) -> list[NucleiImage]:
    """Every image of ROOT/images with its instance map from ROOT/masks (same stem, .png), in file order."""
    folder = Path(root)
    images, masks = folder / "images", folder / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise DatasetError(f"nuclei: {folder} must hold images/ and masks/ (instance maps, same file stems); "
                           f"{images if not images.is_dir() else masks} not found")
    files = image_files(images)
    if not files:
        raise DatasetError(f"nuclei: no image files in {images}")
    out = []
    for path in files:
        mask = masks / f"{path.stem}.png"
        if not mask.is_file():
            raise DatasetError(f"nuclei: {path} has no instance map {mask}")
        image, instances = np.asarray(read_image_file(str(path))), read_instance_map(mask)
        if image.shape[:2] != instances.shape:
            raise DatasetError(f"nuclei: {mask} is {instances.shape[1]} x {instances.shape[0]} px, its image "
                               f"{path} {image.shape[1]} x {image.shape[0]}")
        out.append(NucleiImage(path.stem, image, instances))
    return out


def write_nuclei_image(root: str | Path, item: NucleiImage) -> None:
    """Write one image and its instance map (16-bit PNG) into ROOT/images and ROOT/masks."""
    folder = Path(root)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(item.image).save(folder / "images" / f"{item.name}.png")
    Image.fromarray(item.instances.astype(np.uint16)).save(folder / "masks" / f"{item.name}.png")
