"""Detection sets in COCO or Pascal VOC layout, read as torchvision detection samples.

A set is named `ROOT:SPLIT`:
- COCO layout: `ROOT/annotations/instances_SPLIT.json` with images in `ROOT/SPLIT/`;
- VOC layout: `ROOT` is a year folder (`VOCdevkit/VOC2007`) with `Annotations/`, `JPEGImages/` and
  `ImageSets/Main/SPLIT.txt`. VOC boxes follow detectron2's convention (x0 - 1, y0 - 1, x1, y1) and
  `difficult` objects become COCO crowd regions: not trained on, ignored by the COCO evaluation.
Either way the annotations are held as a COCO dictionary, so pycocotools evaluates both.
"""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .datasets import DatasetError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclass
class DetectionSource:
    """Where a set's images are and its annotations as a COCO dictionary."""

    images: Path
    coco: dict


def _coco_source(root: Path, split: str) -> DetectionSource:
    path = root / "annotations" / f"instances_{split}.json"
    try:
        return DetectionSource(root / split, json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err


def _voc_object(node: ET.Element, image_id: int, ann_id: int) -> dict:
    box = node.find("bndbox")
    x0, y0, x1, y1 = (float(box.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax"))
    x0, y0 = x0 - 1, y0 - 1
    difficult = node.find("difficult")
    crowd = int(difficult is not None and difficult.text.strip() == "1")
    return {"id": ann_id, "image_id": image_id, "category_id": VOC_CLASSES.index(node.find("name").text.strip()) + 1,
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": crowd}


def _voc_source(root: Path, split: str) -> DetectionSource:
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"VOC split list not found: {listing}")
    images, annotations = [], []
    for image_id, stem in enumerate(listing.read_text().split(), start=1):
        tree = ET.parse(root / "Annotations" / f"{stem}.xml").getroot()
        size = tree.find("size")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": int(size.find("width").text),
                       "height": int(size.find("height").text)})
        for node in tree.findall("object"):
            annotations.append(_voc_object(node, image_id, len(annotations) + 1))
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(VOC_CLASSES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return DetectionSource(root / "JPEGImages", coco)


def read_detection_source(spec: str) -> DetectionSource:
    """Read `ROOT:SPLIT` in COCO layout (ROOT/annotations/) or VOC layout (ROOT/Annotations/)."""
    root_text, sep, split = spec.rpartition(":")
    if not sep or not root_text or not split:
        raise DatasetError(f"detection set {spec!r}: expected ROOT:SPLIT (e.g. data/coco:val2017, VOC2007:test)")
    root = Path(root_text)
    if (root / "annotations" / f"instances_{split}.json").is_file():
        return _coco_source(root, split)
    if (root / "Annotations").is_dir():
        return _voc_source(root, split)
    raise DatasetError(f"detection set {spec!r}: neither {root}/annotations/instances_{split}.json (COCO layout) "
                       f"nor {root}/Annotations/ (VOC layout) exists")


def coco_api(coco: dict) -> COCO:
    """A pycocotools COCO object over an in-memory annotation dictionary (its index messages silenced)."""
    api = COCO()
    api.dataset = coco
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


class DetectionSet(Dataset):
    """(image float tensor in [0, 1], target dict with boxes XYXY, labels 1..C, image_id), COCO categories mapped
    to contiguous labels; crowd regions are left out of the targets. `train` adds a random horizontal flip."""

    def __init__(self, source: DetectionSource, train: bool = False) -> None:
        self.source = source
        self.api = coco_api(source.coco)
        self.image_ids = sorted(self.api.imgs)
        self.category_ids = sorted(self.api.cats)
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.flip = v2.RandomHorizontalFlip(0.5) if train else None

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def class_names(self) -> list[str]:
        """Category names in label order (label i + 1 is class_names[i])."""
        return [self.api.cats[c]["name"] for c in self.category_ids]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.image_ids[index]
        info = self.api.imgs[image_id]
        with Image.open(self.source.images / info["file_name"]) as img:
            image = v2.functional.to_dtype(v2.functional.to_image(img.convert("RGB")), torch.float32, scale=True)
        objects = [a for a in self.api.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in objects], dtype=torch.float32).reshape(-1, 4)
        boxes = tv_tensors.BoundingBoxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
                                         format="XYXY", canvas_size=image.shape[-2:])
        target = {"boxes": boxes, "labels": torch.tensor([self.label_of[a["category_id"]] for a in objects],
                                                         dtype=torch.int64), "image_id": image_id}
        if self.flip is not None:
            image, target = self.flip(image, target)
        return image, target


def collate_detection(batch: list) -> tuple[list, list]:
    """Detection batches are lists (images differ in size)."""
    return tuple(map(list, zip(*batch, strict=True)))
