"""The floors each arm of a study is read against, and how they are labelled in its records.

An arm's floors are the untrained references at its own image size (raw pixels) and of its own backbone at that
size (random init). Those of the baseline keep their plain names (pixels, random_init); another arm's are recorded
under a label that names what differs: pixels_42px, random_init_42px (the baseline's backbone at 42 px),
random_init_timm.vit_tiny_patch16_224-depth6-... (another backbone: model.arch, model.small_stem and
model.arch_kwargs), with _42px after it when the size differs too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

FLOORS = ("pixels", "random_init")
# A floor's label: the reference, then (random init only) the backbone's slug, then the image size.
LABEL = re.compile(r"^(?P<reference>pixels|random_init)(?:(?<=random_init)_(?P<backbone>[A-Za-z][A-Za-z0-9_.-]*?))?"
                   r"(?:_(?P<size>\d+)px)?$")


@dataclass(frozen=True)
class FloorKey:
    """What an arm's floors depend on: its image size (both floors) and its backbone (the random init)."""

    image_size: int | None
    arch: str | None
    small_stem: bool = False
    arch_kwargs: str = "{}"  # model.arch_kwargs as JSON with sorted keys (hashable, one spelling per value)

    @classmethod
    def of(cls, config: dict[str, Any]) -> FloorKey:
        """The key of a resolved config (config.to_dict's form, as study.yaml holds it; sections it lacks, from
        older records, read as the defaults)."""
        model = config.get("model") or {}
        return cls((config.get("data") or {}).get("image_size"), model.get("arch"), bool(model.get("small_stem")),
                   json.dumps(model.get("arch_kwargs") or {}, sort_keys=True))

    @property
    def backbone(self) -> tuple[str | None, bool, str]:
        """The backbone a random initialisation is of."""
        return self.arch, self.small_stem, self.arch_kwargs

    @property
    def slug(self) -> str:
        """The backbone in a label: e.g. resnet18-small_stem, timm.vit_tiny_patch16_224-depth6-embed_dim128."""
        kwargs = json.loads(self.arch_kwargs)
        parts = [str(self.arch).replace("/", "."), *(["small_stem"] if self.small_stem else []),
                 *(f"{key}{re.sub(r'[^A-Za-z0-9.]+', '_', str(value)).strip('_')}" for key, value in kwargs.items())]
        return "-".join(parts)


def floor_label(reference: str, key: FloorKey, base: FloorKey) -> str:
    """The label of floor `reference` (pixels | random_init) of an arm with `key`, in a study whose baseline has
    `base`: the plain name where it is the baseline's, else suffixed with the backbone's slug (random init of
    another backbone) and the image size (another size)."""
    parts = [reference]
    if reference == "random_init" and key.backbone != base.backbone:
        parts.append(key.slug)
    if key.image_size != base.image_size:
        parts.append(f"{key.image_size}px")
    return "_".join(parts)


def parse_floor(label: str) -> tuple[str, str | None, int | None] | None:
    """(reference, backbone slug, image size) of a floor's label, the last two None where they are the baseline's;
    None for a label that names no floor."""
    match = LABEL.match(label)
    if match is None:
        return None
    return match["reference"], match["backbone"], int(match["size"]) if match["size"] else None


def resolved_arms(report_dir: Path) -> dict[str, dict]:
    """Each arm's resolved config, from the study.yaml beside the results (empty without one)."""
    resolved = report_dir / "study.yaml"
    arms = yaml.safe_load(resolved.read_text()).get("arms", {}) if resolved.is_file() else {}
    return {arm: spec.get("config") or {} for arm, spec in arms.items()}


def arm_floors(report_dir: Path, baseline: str) -> dict[str, dict[str, str]]:
    """Per arm of the resolved study beside the results, the label of each of its floors (pixels, random_init);
    an arm or baseline without a resolved config reads as the baseline's (empty without study.yaml)."""
    configs = resolved_arms(report_dir)
    base = FloorKey.of(configs.get(baseline, {}))
    keys = {arm: FloorKey.of(config) if config else base for arm, config in configs.items()}
    return {arm: {reference: floor_label(reference, replace(key, image_size=key.image_size or base.image_size), base)
                  for reference in FLOORS} for arm, key in keys.items()}
