"""Multi-view sampling: V random resized crops of one image, each with its crop box."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2

from .augment import CROP_RATIO, CROP_SCALE, RecordedFlip


def image_size_of(image: torch.Tensor | Image.Image) -> tuple[int, int]:
    """(height, width) of a CHW tensor or a PIL image."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    return image.height, image.width


class ViewSampler:
    """Draw `num_views` augmented views of an image and the box each crop covers.

    Boxes are (x0, y0, x1, y1) in original-image coordinates normalised to [0, 1]; a flip does not
    change the region a view shows, so boxes are flip-invariant. Whether each view was flipped horizontally is read
    from the RecordedFlip step of `post_crop` (`with_flips`); a post_crop without one never flips.
    """

    def __init__(
        self,
        num_views: int,
        image_size: int,
        post_crop: Callable[[torch.Tensor], torch.Tensor],
        scale: tuple[float, float] = CROP_SCALE,
        ratio: tuple[float, float] = CROP_RATIO,
    ) -> None:
        self.num_views = num_views
        self.image_size = image_size
        self.post_crop = post_crop
        self.scale = scale
        self.ratio = ratio
        self.flip = next((step for step in getattr(post_crop, "transforms", ()) if isinstance(step, RecordedFlip)),
                         None)

    def __call__(self, image: torch.Tensor | Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (V, 3, S, S) float32 and boxes (V, 4) float32."""
        views, boxes, _ = self.with_flips(image)
        return views, boxes

    def with_flips(self, image: torch.Tensor | Image.Image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views (V, 3, S, S) float32, boxes (V, 4) float32 and whether each view was flipped (V,) bool; the same
        draws as __call__."""
        height, width = image_size_of(image)
        views, boxes, flips = [], [], []
        for _ in range(self.num_views):
            top, left, h, w = RandomResizedCrop.get_params(image, self.scale, self.ratio)
            crop = v2.functional.resized_crop(image, top, left, h, w, [self.image_size] * 2, antialias=True)
            if isinstance(crop, Image.Image):
                crop = v2.functional.pil_to_tensor(crop)
            views.append(self.post_crop(crop))
            boxes.append([left / width, top / height, (left + w) / width, (top + h) / height])
            flips.append(self.flip is not None and self.flip.flipped)
        return torch.stack(views), torch.tensor(boxes, dtype=torch.float32), torch.tensor(flips, dtype=torch.bool)
