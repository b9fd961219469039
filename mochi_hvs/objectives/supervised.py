"""The supervised reference (objective: supervised): cross-entropy of a linear classifier on the query backbone's
features, with the same backbone, views, optimiser and steps as a pretraining recipe. Its step is here;
`python -m mochi_hvs.supervised` is its command line."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from ..data.datasets import ImageSet
from ..methods import Method
from ..models.moco import MoCo
from ..random_streams import StepRandom
from ..step import StepOutput
from .base import Objective, Step, Wrap
from .registry import Forwards, Needs, register

CLASSIFIER = "classifier"  # the linear classifier's name inside the model (and its checkpoint)


def add_classifier(model: MoCo, num_classes: int) -> nn.Linear:
    """Give the model a linear classifier on its query backbone's features (saved and restored with it)."""
    classifier = nn.Linear(model.feature_width, num_classes)
    model.add_module(CLASSIFIER, classifier)
    return classifier


def classifier_network(model: MoCo) -> nn.Sequential:
    """The query backbone followed by the classifier (what the supervised step trains)."""
    return nn.Sequential(model.encoder_q.backbone, getattr(model, CLASSIFIER))


class SupervisedStep:
    """Cross-entropy of the classifier on the query backbone's features of the first view of each sample."""

    def __init__(self, network: nn.Module) -> None:
        """network: backbone + classifier (classifier_network, or its DDP wrapper under torchrun)."""
        self.network = network

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W): the first view of each sample is classified; nothing is enqueued."""
        if labels is None or bool((labels < 0).any()):
            raise ValueError("the supervised reference needs a label for every training image")
        logits = self.network(views[:, 0])
        loss = F.cross_entropy(logits, labels)
        top1 = (logits.detach().argmax(dim=1) == labels).float().mean()
        # proxy_top1: the training task's top-1, as for MoCo's pretext task (here: the class of the view)
        return StepOutput(loss=loss, keys=None, metrics={"loss": loss.detach(), "proxy_top1": top1})


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
