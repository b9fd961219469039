"""The objective registry: what each objective declares, readable without torch (config.py validates with it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar


@dataclass(frozen=True)
class Needs:
    """What an objective's step needs from the model, the data path and the methods."""

    views: int = 2  # views per image its step reads (the data path draws at least a pair)
    momentum_encoder: bool = True  # a key / target encoder that follows the trained one by momentum (EMA)
    queue: bool = False  # a memory queue of past keys: negatives, which MoCHi mixes from
    predictor: bool = False  # a predictor head on the trained side (MoCo.predictor)
    methods: bool = False  # the MoCo step's method hooks (mochi_hvs/methods/) apply to it
    local_views: bool = False  # its step scores multi-crop's small crops itself (multicrop.enabled draws them)
    # its step scores every ordered pair of candidate views per sample (`pair_losses`): HVS selects by its loss
    pair_losses: bool = False


@dataclass(frozen=True)
class Forwards:
    """Encoder image-forwards of one step per image, before any method's: views through the trained encoder (with
    gradient) and through the momentum encoder (without); and, where HVS scores pairs, the no-grad forwards of each
    candidate view (the objective's pair losses: one per network they read); compute_cost.py prices them."""

    trained: float
    target: float
    candidate: float = 0.0


class Declared:
    """An objective's declarations (objectives/base.py adds what builds its step)."""

    name: ClassVar[str]  # its `objective:` value
    label: ClassVar[str]  # what a backbone trained with it is called in reports ("MoCo-pretrained")
    needs: ClassVar[Needs] = Needs()
    section: ClassVar[type[Any] | None] = None  # its config section's dataclass (config.ObjectiveConfig), if any
    section_key: ClassVar[str | None] = None  # that section's key in a config; None: the objective's name
    # its step hands over its trained embeddings (StepOutput.trained), which a regulariser added to it reads
    trained_embeddings: ClassVar[bool] = False
    # its loss between a prediction and a frozen target, for continual.distill (Objective.distillation_loss): what
    # the loss is, for messages; None: it has none
    distillation: ClassVar[str | None] = None

    @classmethod
    def needs_for(cls, cfg: Any) -> Needs:
        """What it needs under this config: `needs`, unless a setting changes it (BYOL without its predictor)."""
        return cls.needs


OBJECTIVES: dict[str, type[Declared]] = {}
T = TypeVar("T", bound=type[Declared])


def register(cls: T) -> T:
    """Class decorator: make an objective available under its name, and its config section under its key."""
    OBJECTIVES[cls.name] = cls
    if cls.section is not None:
        cls.section.name = cls.section_key or cls.name
    return cls


def declared(name: str) -> type[Declared]:
    """The registered objective of that name (config validation has checked that it exists)."""
    return OBJECTIVES[name]


def sections() -> dict[str, type[Any]]:
    """The config sections of the registered objectives, by key."""
    return {cls.section.name: cls.section for cls in OBJECTIVES.values() if cls.section is not None}
