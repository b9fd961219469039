"""Tiles of large images (slides) at several fields of view: a grid of square tiles per image and magnification,
each cut at tile_size x magnification pixels and reduced to tile_size by averaging (a box filter: at magnification
m, each tile pixel is the mean of an m x m block), so that every field of view reaches the encoder at the same
input size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class TilingError(UserError, ValueError):
    """A tiling that cannot be cut from its image (a tile larger than the image, no image at all)."""


@dataclass(frozen=True)
class Tiling:
    """How slides are cut: tile side in px, step between tiles at magnification 1 (None: the side; it scales with
    the magnification, as the side does) and the magnifications (fields of view, factors of the side)."""

    size: int = 64
    stride: int | None = None
    magnifications: tuple[int, ...] = (1,)

    @classmethod
    def of(cls, data_cfg) -> Tiling:
        """The tiling a config's data section declares (data.tile_size, data.tile_stride, data.magnifications)."""
        return cls(data_cfg.tile_size, data_cfg.tile_stride, tuple(data_cfg.magnifications))


@dataclass(frozen=True)
class Tile:
    """One tile: the image it comes from (its position in the list of slides), its magnification and the square it
    covers in that image's pixels (top, left, side)."""

    image: int
    magnification: int
    top: int
    left: int
    side: int


def tile_grid(height: int, width: int, tiling: Tiling, image: int = 0, name: str = "the image") -> list[Tile]:
    """The tiles of an image of `height` x `width` px: per magnification m (in the order given), squares of side
    size * m every stride * m px from the top-left corner, row by row; a tile that would cross the border is left
    out. TilingError when a tile is larger than the image."""
    tiles = []
    for m in tiling.magnifications:
        side, step = tiling.size * m, (tiling.stride or tiling.size) * m
        if side > min(height, width):
            raise TilingError(f"slides: a tile of {side} px (data.tile_size={tiling.size} x magnification {m}) is "
                              f"larger than {name} ({width} x {height} px); lower data.tile_size or "
                              "data.magnifications")
        tiles += [Tile(image, m, top, left, side) for top in range(0, height - side + 1, step)
                  for left in range(0, width - side + 1, step)]
    return tiles


def cut_tiles(image: np.ndarray, tiles: Sequence[Tile], size: int) -> np.ndarray:
    """The tiles of one image (H, W, 3) uint8 as (N, size, size, 3) uint8, each reduced to `size` by a box filter."""
    out = np.empty((len(tiles), size, size, image.shape[2]), dtype=np.uint8)
    for row, tile in enumerate(tiles):
        square = image[tile.top:tile.top + tile.side, tile.left:tile.left + tile.side]
        out[row] = square if tile.side == size else np.asarray(
            Image.fromarray(square).resize((size, size), Image.Resampling.BOX))
    return out


def image_files(root: Path) -> list[Path]:
    """The image files under `root` (any depth), sorted by path."""
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
