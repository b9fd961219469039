"""Nuclei instance segmentation on a backbone (mochi-nuclei): the dense maps of a ResNet's first three stages, a small
decoder (each map projected to eval.nuclei.channels, resized to the finest one and summed, then a 3x3 conv and a
per-pixel classifier upsampled to the input) trained on random crops, each turned and flipped at random, to classify
pixels as background, nucleus interior or boundary (cross-entropy weighted by 1 / sqrt(class share)); the backbone
frozen (eval mode, no gradient: its maps of each whole training image in its 8 orientations are computed once and
cropped) or fine-tuned (crops through the backbone at every step). The
test images are segmented whole (padded to a multiple of 32), the nuclei recovered from the classes (instances.py)
and scored against the true instance maps: Dice and AJI, averaged over the test images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ..config.evaluators import NucleiSettings
from ..data.nuclei import NucleiImage, read_nuclei_set
from ..data.orientation import QUARTER_TURNS, draw_orientations, orient
from ..errors import UserError
from .instances import CLASSES, aggregated_jaccard, dice, instance_classes, instances_from_classes

STAGES = ("layer1", "layer2", "layer3")
LARGEST_STRIDE = 32  # a ResNet's input side must divide by it for its maps to align
CROP_ALIGN = 16  # px: the frozen path's crops start on multiples of the third stage's stride
IGNORE = -100  # the target of padding pixels: no loss


class DenseStages(nn.Module):
    """A torchvision ResNet's stem and first three stages; forward returns their maps (finest first)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not isinstance(net, torchvision.models.ResNet):
            raise UserError(f"mochi-nuclei reads the dense maps of a ResNet backbone (model.arch resnet18, resnet34, "
                            f"resnet50 or torchvision/resnet*); this checkpoint holds a {type(net).__name__}")
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        maps = []
        for name in STAGES:
            x = getattr(net, name)(x)
            maps.append(x)
        return maps


class NucleiDecoder(nn.Module):
    """Per-pixel class logits (N, 3, H, W) from the stage maps: projected, resized to the finest map, summed, a 3x3
    conv, BatchNorm and ReLU, a 1x1 classifier, bilinearly upsampled to (H, W)."""

    def __init__(self, widths: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(width, channels, 1) for width in widths)
        self.head = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True), nn.Conv2d(channels, len(CLASSES), 1))

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        finest = maps[0].shape[-2:]
        x = sum(F.interpolate(lateral(m), size=finest, mode="bilinear", align_corners=False)
                for lateral, m in zip(self.lateral, maps, strict=True))
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


@dataclass
class PreparedImage:
    """A nuclei image as the decoder reads it: normalised pixels (3, H, W), its class targets (H, W) and instances."""

    pixels: torch.Tensor
    classes: torch.Tensor
    instances: np.ndarray


def prepare_images(items: list[NucleiImage], mean: list[float], std: list[float]) -> list[PreparedImage]:
    """Normalise each image with the backbone's data.mean / data.std and derive its class targets."""
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return [PreparedImage((torch.from_numpy(item.image.copy()).permute(2, 0, 1).float() / 255 - m) / s,
                          torch.from_numpy(instance_classes(item.instances)), item.instances) for item in items]


def padded(image: PreparedImage) -> tuple[torch.Tensor, torch.Tensor]:
    """An image's pixels reflection-padded at the bottom and right to sides that divide by 32, and its targets padded
    with IGNORE (no loss there)."""
    height, width = image.classes.shape
    pad = (0, -width % LARGEST_STRIDE, 0, -height % LARGEST_STRIDE)
    return F.pad(image.pixels[None], pad, mode="reflect")[0], F.pad(image.classes, pad, value=IGNORE)


def random_crops(images: list[PreparedImage], settings: NucleiSettings,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine-tuning's batch: random crops (B, 3, c, c) and their targets (B, c, c), each turned and flipped at random."""
    c = settings.crop
    pixels, targets = [], []
    for _ in range(settings.batch_size):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        height, width = image.classes.shape
        top = int(torch.randint(height - c + 1, (1,), generator=generator))
        left = int(torch.randint(width - c + 1, (1,), generator=generator))
        pixels.append(image.pixels[:, top:top + c, left:left + c])
        targets.append(image.classes[top:top + c, left:left + c])
    turns, vflip = draw_orientations(settings.batch_size, generator)
    return orient(torch.stack(pixels), turns, vflip), orient(torch.stack(targets)[:, None], turns, vflip)[:, 0]


class FrozenCrops:
    """The frozen backbone's batches: the stage maps of every training image in each of its 8 orientations (quarter
    turns, with and without a vertical flip), computed once, whole; a batch is crops of them at random positions
    aligned to CROP_ALIGN px, with their targets."""

    def __init__(self, stages: DenseStages, images: list[PreparedImage], device: torch.device) -> None:
        self.entries: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        for image in images:
            pixels, classes = padded(image)
            for turns in range(QUARTER_TURNS):
                for vflip in (False, True):
                    turned = [torch.rot90(t, turns, dims=(-2, -1)) for t in (pixels, classes)]
                    x, target = [t.flip(-2) for t in turned] if vflip else turned
                    with torch.no_grad():
                        self.entries.append((stages(x[None].to(device)), target))

    def batch(self, settings: NucleiSettings, generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Stage maps of B crops (each (B, C, c / stride, c / stride)) and their targets (B, c, c)."""
        c = settings.crop
        crops: list[list[torch.Tensor]] = []
        targets = []
        for _ in range(settings.batch_size):
            maps, classes = self.entries[int(torch.randint(len(self.entries), (1,), generator=generator))]
            height, width = classes.shape
            top = CROP_ALIGN * int(torch.randint((height - c) // CROP_ALIGN + 1, (1,), generator=generator))
            left = CROP_ALIGN * int(torch.randint((width - c) // CROP_ALIGN + 1, (1,), generator=generator))
            crops.append([m[0, :, top // (stride := height // m.shape[-2]):(top + c) // stride,
                            left // stride:(left + c) // stride] for m in maps])
            targets.append(classes[top:top + c, left:left + c])
        return [torch.stack(level) for level in zip(*crops, strict=True)], torch.stack(targets)


def class_weights(images: list[PreparedImage]) -> torch.Tensor:
    """Cross-entropy weights of the classes: 1 / sqrt(share of the training pixels), scaled to mean 1 (nuclei cover a
    small share of an image, their boundaries a smaller one); a class absent from the training set weighs 0."""
    counts = sum(torch.bincount(image.classes.ravel(), minlength=len(CLASSES)) for image in images).double()
    weight = torch.where(counts > 0, (counts.sum() / counts.clamp_min(1)).sqrt(), torch.zeros_like(counts))
    return (weight / weight.mean()).float()


class NucleiSegmenter:
    """Train the decoder (and, with eval.nuclei.finetune, the backbone) on a nuclei set, then segment images."""

    def __init__(self, backbone: nn.Module, settings: NucleiSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.stages = DenseStages(backbone).to(device)
        torch.manual_seed(settings.seed)
        with torch.no_grad():
            widths = [m.shape[1] for m in self.stages.eval()(torch.zeros(1, 3, LARGEST_STRIDE, LARGEST_STRIDE,
                                                                             device=device))]
        self.decoder = NucleiDecoder(widths, settings.channels).to(device)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits (N, 3, H, W) of normalised images whose sides divide by 32."""
        with torch.set_grad_enabled(self.settings.finetune and torch.is_grad_enabled()):
            maps = self.stages(pixels)
        return self.decoder(maps, pixels.shape[-2:])

    def fit(self, images: list[PreparedImage]) -> float:
        """Train for eval.nuclei.iterations steps; the mean loss of the last tenth of them."""
        s = self.settings
        small = [p.classes.shape for p in images if min(p.classes.shape) < s.crop]
        if small:
            raise UserError(f"eval.nuclei.crop={s.crop} is larger than a training image ({small[0][1]} x "
                            f"{small[0][0]} px); lower it")
        groups = [{"params": self.decoder.parameters(), "lr": s.lr}]
        if s.finetune:
            groups.append({"params": self.stages.parameters(), "lr": s.backbone_lr})
        optimiser = torch.optim.AdamW(groups)
        generator = torch.Generator().manual_seed(s.seed)
        weight = class_weights(images).to(self.device)
        self.stages.train(s.finetune)
        frozen = None if s.finetune else FrozenCrops(self.stages, images, self.device)
        self.decoder.train()
        losses = []
        for _ in range(s.iterations):
            if frozen is None:
                pixels, targets = random_crops(images, s, generator)
                logits = self.logits(pixels.to(self.device))
            else:
                maps, targets = frozen.batch(s, generator)
                logits = self.decoder(maps, (s.crop, s.crop))
            loss = F.cross_entropy(logits, targets.to(self.device), weight=weight, ignore_index=IGNORE)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        return float(np.mean(losses[-max(1, s.iterations // 10):]))

    @torch.no_grad()
    def segment(self, image: PreparedImage) -> np.ndarray:
        """The predicted instance map (H, W) of one image, segmented whole (reflection-padded to a multiple of 32)."""
        self.stages.eval()
        self.decoder.eval()
        height, width = image.classes.shape
        pixels, _ = padded(image)
        classes = self.logits(pixels[None].to(self.device))[0, :, :height, :width].argmax(0).cpu().numpy()
        return instances_from_classes(classes, self.settings.min_size)


def nuclei_segmentation(backbone: nn.Module, settings: NucleiSettings, mean: list[float], std: list[float],
                        device: torch.device) -> dict[str, float]:
    """Train on eval.nuclei.train, score on eval.nuclei.test: Dice and AJI (means over the test images), the true
    and predicted nuclei counts and the final training loss."""
    if not settings.train or not settings.test:
        raise UserError("mochi-nuclei needs eval.nuclei.train and eval.nuclei.test (folders with images/ and masks/)")
    train = prepare_images(read_nuclei_set(settings.train), mean, std)
    test = prepare_images(read_nuclei_set(settings.test), mean, std)
    segmenter = NucleiSegmenter(backbone, settings, device)
    loss = segmenter.fit(train)
    predictions = [segmenter.segment(image) for image in test]
    return {
        "dice": float(np.mean([dice(image.instances, pred) for image, pred in zip(test, predictions, strict=True)])),
        "aji": float(np.mean([aggregated_jaccard(image.instances, pred)
                              for image, pred in zip(test, predictions, strict=True)])),
        "nuclei_true": int(sum(len(np.unique(image.instances)) - 1 for image in test)),
        "nuclei_predicted": int(sum(pred.max() for pred in predictions)),
        "final_loss": loss,
    }
