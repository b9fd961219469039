"""Detection transfer without detectron2: a torchvision Faster R-CNN (ResNet-FPN) whose ResNet starts from our
weights, fine-tuned on a COCO- or VOC-layout set and scored with the COCO evaluation (AP, AP50, AP75)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
import torch.nn as nn
from pycocotools.cocoeval import COCOeval
from torch.utils.data import ConcatDataset, DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from tqdm import tqdm

from ..config import ConfigError
from ..config.evaluators import DetectionSettings
from ..data.batches import endless
from ..data.datasets import DatasetError
from ..data.detection import DetectionSet, coco_api, collate_detection, read_detection_source
from ..errors import TrainingDiverged
from ..models.resnet import use_small_stem
from ..schedule import lr_multiplier
from ..weights.errors import WeightsError
from ..weights.loader import LoadReport, WeightsMeta, load_backbone_weights

COCO_METRICS = ("AP", "AP50", "AP75")


def build_detector(state: dict[str, torch.Tensor] | None, meta: WeightsMeta, num_classes: int,
                   settings: DetectionSettings, mean: list[float], std: list[float]
                   ) -> tuple[FasterRCNN, LoadReport]:
    """Faster R-CNN with a ResNet-FPN backbone of `meta.arch`, its ResNet loaded from `state` (None: random init);
    a backbone other than the project's ResNets is a WeightsError."""
    if not meta.architecture.is_resnet:
        raise WeightsError(f"detection transfer builds a ResNet-FPN detector (resnet18, resnet34 or resnet50); "
                           f"{meta.path} holds a {meta.architecture} backbone")
    norm_layer = FrozenBatchNorm2d if settings.norm == "frozen" else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(backbone_name=meta.arch, weights=None, norm_layer=norm_layer,
                                   trainable_layers=settings.trainable_layers)
    if meta.small_stem:
        use_small_stem(backbone.body)
    report = (LoadReport(0, missing=list(backbone.body.state_dict())) if state is None
              else load_backbone_weights(backbone.body, state))
    model = FasterRCNN(backbone, num_classes=num_classes + 1, min_size=settings.min_size, max_size=settings.max_size,
                       image_mean=mean, image_std=std, rpn_post_nms_top_n_train=settings.proposals,
                       box_batch_size_per_image=settings.roi_batch)
    if settings.norm == "sync" and torch.distributed.is_available() and torch.distributed.is_initialized():
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, report


def train_detector(model: FasterRCNN, dataset, settings: DetectionSettings, device: torch.device) -> float:
    """SGD for `settings.iterations` steps (linear warm-up, step decay); returns the mean loss of the last 20 steps."""
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, num_workers=settings.workers,
                        collate_fn=collate_detection, generator=torch.Generator().manual_seed(settings.seed),
                        drop_last=len(dataset) > settings.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr * settings.batch_size / 16, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    milestones = [int(f * settings.iterations) for f in settings.milestones]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, settings.iterations, min(settings.warmup_iterations, settings.iterations), "step", milestones))
    model.to(device).train()
    recent: list[float] = []
    bar = tqdm(zip(range(settings.iterations), endless(loader), strict=False), total=settings.iterations,
               desc="detection", leave=False)
    for step, (images, targets) in bar:
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        loss = sum(model(images, targets).values())
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"detection loss became non-finite at iteration {step} (lower --lr?)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        recent = (recent + [loss.item()])[-20:]
        bar.set_postfix(loss=f"{recent[-1]:.3f}", refresh=False)
    return float(np.mean(recent)) if recent else float("nan")


@torch.no_grad()
def predict(model: FasterRCNN, dataset: DetectionSet, device: torch.device, batch_size: int = 8) -> list[dict]:
    """Detections on every image of `dataset` as COCO result entries (image_id, category_id, XYWH bbox, score)."""
    model.to(device).eval()
    results = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
    for images, targets in tqdm(loader, desc="detect", leave=False):
        for out, target in zip(model([im.to(device) for im in images]), targets, strict=True):
            boxes = out["boxes"].cpu()
            boxes[:, 2:] -= boxes[:, :2]
            for box, label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist(), strict=True):
                results.append({"image_id": target["image_id"], "category_id": dataset.category_ids[label - 1],
                                "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
    return results


def coco_box_ap(coco_gt: dict, results: list[dict]) -> dict[str, float]:
    """COCO bounding-box AP, AP50 and AP75 (percent) of `results` against the ground-truth dictionary."""
    if not results:
        return dict.fromkeys(COCO_METRICS, 0.0)
    gt = coco_api(coco_gt)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: 100.0 * max(0.0, float(evaluator.stats[i])) for i, name in enumerate(COCO_METRICS)}


def load_detection_sets(settings: DetectionSettings) -> tuple[ConcatDataset, DetectionSet]:
    """The (concatenated) training sets with flips, and the validation set; categories must agree."""
    if not settings.train or not settings.val:
        raise ConfigError("detection needs its data sets: --set eval.detection.train=[ROOT:SPLIT, ...] "
                          "eval.detection.val=ROOT:SPLIT")
    train_sets = [DetectionSet(read_detection_source(spec), train=True) for spec in settings.train]
    val = DetectionSet(read_detection_source(settings.val))
    for spec, part in zip(settings.train, train_sets, strict=True):
        if part.class_names != val.class_names:
            raise DatasetError(f"detection set {spec} has other categories than the validation set {settings.val}")
    return ConcatDataset(train_sets), val


def detection_transfer(
    state: dict[str, torch.Tensor] | None, meta: WeightsMeta, settings: DetectionSettings, mean: list[float],
    std: list[float], device: torch.device,
) -> tuple[dict[str, float], LoadReport]:
    """Fine-tune a Faster R-CNN from the backbone weights and return its COCO AP/AP50/AP75 on the validation set."""
    train, val = load_detection_sets(settings)
    torch.manual_seed(settings.seed)
    model, report = build_detector(state, meta, len(val.class_names), settings, mean, std)
    final_loss = train_detector(model, train, settings, device)
    metrics = coco_box_ap(val.source.coco, predict(model, val, device))
    return {**metrics, "final_loss": final_loss}, report
