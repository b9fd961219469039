"""The supervised reference (objective: supervised): cross-entropy of a linear classifier on the query backbone's
features, with the same backbone, views, optimiser and steps as a pretraining recipe. Its step is
supervised_step.py's; `python -m mochi_hvs.supervised` is its command line."""

from __future__ import annotations

from ..config import ConfigError
from ..data.datasets import ImageSet
from ..methods import Method
from ..models.moco import MoCo
from ..supervised_step import SupervisedStep, add_classifier, classifier_network
from .base import Objective, Step, Wrap
from .registry import Forwards, Needs, register


@register
class Supervised(Objective):
    """objective: supervised."""

    name = "supervised"
    label = "supervised"
    # It reads the first view only. Its loss uses neither the momentum encoder nor the queue; the model carries them
    # (and the loop moves the encoder) as it always has, so that supervised checkpoints keep MoCo's layout and resume.
    needs = Needs(views=1, momentum_encoder=True, queue=True)

    def forwards(self) -> Forwards:
        """One trained forward of the first view."""
        return Forwards(trained=1, target=0)

    def check_images(self, images: ImageSet) -> None:
        """Every image needs its label."""
        if bool((images.labels < 0).any()):
            raise ConfigError(f"objective=supervised needs a label for every pretraining image; data.name="
                              f"{self.cfg.data.name} pretrains on unlabelled images too")

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """A linear classifier on the query backbone, trained with it through the wrapped network."""
        device = next(model.encoder_q.backbone.parameters()).device
        add_classifier(model, num_classes).to(device)
        return SupervisedStep(wrap(classifier_network(model)))
