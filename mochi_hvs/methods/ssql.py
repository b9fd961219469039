"""SSQL: synergistic self-supervised and quantization learning (Cao et al., "Synergistic Self-supervised and
Quantization Learning", ECCV 2022), on MoCo-v2's step.

One network, one copy of weights, two forwards of each query view: the full-precision query q = f_q(x_q) and the
quantized query q_b, the same encoder with its backbone's convolutions and linear layers fake-quantized
(models/fake_quant.py) at bit-widths b = (w, a) drawn at random each step. Both are contrasted with the
full-precision momentum key of the other view and the queue, as the official code's SSQL + MoCo-v2 does:

    loss = InfoNCE(q, k, queue) + ssql.weight x InfoNCE(q_b, k, queue)

so the quantized network learns to match the full-precision one's features, and one pretraining serves every
bit-width in the drawn ranges. The weight bit-width is drawn uniformly from `ssql.weight_bits` and the activation
bit-width from `ssql.act_bits` (the paper's ImageNet runs: weights 2-8, activations 4-8), once per step, from a
generator seeded by (run seed, step) alone: every process of a distributed run draws the same b, and a resumed run
redraws exactly what a straight run draws (`draw_bits`).

Our reading where the paper's code differs: activations are quantized on each sample's own range (dynamic
quantization, what quantized/<arch> backbones are evaluated with and the int8 export runs) rather than on the range
an extra full-precision forward of the batch calibrates; the image-reading first layer never goes below 8 bits; the
projection head stays full precision (it is discarded after pretraining). The key side is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import Config, MethodConfig, setting
from ..models.fake_quant import BitWidths, make_quantizable, quantized
from ..models.moco import MoCo
from ..random_streams import stream_number, stream_seed
from .base import ExtraQueries, Method, StepContext, register

SECTION = "ssql"


@dataclass
class SsqlConfig(MethodConfig):
    """SSQL's quantized queries: the bit-width ranges drawn from each step and the weight of their loss."""

    weight_bits: list[int] = setting([2, 8], "[low, high]: the weights' bit-width of each step, drawn uniformly from "
                                             "low..high (the paper: 2-8)", bounds="[2, 8]")
    act_bits: list[int] = setting([4, 8], "[low, high]: the activations' bit-width of each step, drawn uniformly "
                                          "from low..high (the paper: 4-8)", bounds="[2, 8]")
    weight: float = setting(1.0, "weight of the quantized queries' InfoNCE, added to the full-precision one's",
                            bounds="> 0")

    def validate(self, cfg: Config, source: str) -> None:
        """Each range a pair, low <= high."""
        for key in ("weight_bits", "act_bits"):
            bits = getattr(self, key)
            self.check(len(bits) == 2 and bits[0] <= bits[1], source, f"ssql.{key}",
                       f"must be [low, high] with low <= high; got {bits}")


def draw_bits(seed: int, step: int, weight_bits: list[int], act_bits: list[int]) -> BitWidths:
    """The bit-widths of `step`: uniform over each inclusive range, from a generator seeded by (run seed, the ssql
    stream, step): the same on every process, and again on a resume."""
    generator = torch.Generator().manual_seed(stream_seed(seed, stream_number(SECTION), step))
    weight = int(torch.randint(weight_bits[0], weight_bits[1] + 1, (), generator=generator))
    activation = int(torch.randint(act_bits[0], act_bits[1] + 1, (), generator=generator))
    return BitWidths(weight, activation)


@register
class Ssql(Method):
    """SSQL on the method seam: the quantized queries of each query view (see the module docstring)."""

    section = SECTION
    config_section = SsqlConfig
    order = 60  # hook order (Method.order): after the shipped methods

    def __init__(self, cfg: Config, model: MoCo) -> None:
        """Makes the query backbone's layers quantizable (same parameters: the momentum encoder, the optimiser and
        the state dict see no change)."""
        super().__init__(cfg, model)
        self.backbone = model.encoder_q.backbone
        make_quantizable(self.backbone)

    def bits(self, ctx: StepContext) -> BitWidths:
        """This step's bit-widths."""
        ssql = self.cfg.ssql
        return draw_bits(self.cfg.seed, ctx.step, ssql.weight_bits, ssql.act_bits)

    def extra_queries(self, x_q: torch.Tensor, encoder: nn.Module, ctx: StepContext) -> ExtraQueries:
        """The queries of x_q (B, C, H, W) through the encoder quantized at this step's bit-widths: (1, B, D)."""
        with quantized(self.backbone, self.bits(ctx)):
            queries = encoder(x_q).embedding
        return ExtraQueries(queries.unsqueeze(0), self.cfg.ssql.weight)
