"""What follows from a config beyond its values: the objective's needs, the training methods' sections, the views
and small crops the data path draws per image, and the facts of a library backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..objectives.registry import OBJECTIVES, Needs, declared
from .schema import METHOD_SECTIONS, Config, LocalCrops, MethodConfig

if TYPE_CHECKING:
    from ..models.backbone_facts import BackboneFacts


def objective_names(**needed: bool) -> list[str]:
    """The registered objectives, or those whose needs have the values given (e.g. queue=True)."""
    return [name for name, cls in OBJECTIVES.items()
            if all(getattr(cls.needs, need) == value for need, value in needed.items())]


def objective_needs(cfg: Config) -> Needs:
    """What the configured objective needs (mochi_hvs/objectives/registry.py)."""
    return declared(cfg.objective).needs_for(cfg)


def method_sections(cfg: Config) -> dict[str, MethodConfig]:
    """The config sections of the training methods, by name (enabled or not)."""
    return {name: getattr(cfg, name) for name in METHOD_SECTIONS}


def views_per_image(cfg: Config) -> int:
    """How many views the data path draws per image: a pair, or more when an enabled method needs them."""
    methods = (section.views_per_image() for section in method_sections(cfg).values() if section.enabled)
    return max([2, objective_needs(cfg).views, *methods])


def local_crops(cfg: Config) -> LocalCrops | None:
    """The small crops the data path draws per image besides the views: those an enabled method asks for, or None."""
    return next((crops for section in method_sections(cfg).values()
                 if section.enabled and (crops := section.local_crops_per_image(cfg)) is not None), None)


def backbone_facts_of(cfg: Config, source: str) -> BackboneFacts:
    """The BackboneFacts of a timm/ or torchvision/ backbone at data.image_size (models/backbone_facts.py), or a
    ConfigError naming the library's reason when it cannot be built or cannot encode that size."""
    from ..models.backbone_facts import BackboneBuildError, BackboneInputError, backbone_facts

    model, size = cfg.model, cfg.data.image_size
    try:
        return backbone_facts(model.arch, model.small_stem, model.arch_kwargs, size)
    except BackboneBuildError as err:
        key = "model.arch_kwargs" if model.arch_kwargs else "model.arch"
        raise ConfigError(f"{source}: '{key}' cannot build model.arch={model.arch} with model.arch_kwargs="
                          f"{model.arch_kwargs}: {err}") from err
    except BackboneInputError as err:
        raise ConfigError(
            f"{source}: 'model.arch' {model.arch} cannot encode data.image_size={size} px images ({err}); fit it with "
            f"model.arch_kwargs, e.g. {{img_size: {size}, patch_size: 4}} for a ViT, {{patch_size: 1}} for a "
            "ConvNeXt") from err
