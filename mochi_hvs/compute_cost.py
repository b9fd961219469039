"""Training compute counted in encoder image-forwards, the unit compute-matched comparisons use.

One image through the query or the momentum encoder is one forward; a backward pass counts as two
forwards (the usual estimate), so a trained query costs 3 and a key 1: a MoCo-v2 step costs 4 per image. The
objective declares its forwards per image (objectives/registry.Forwards: MoCo-v2 a query and a key per direction,
the supervised reference one trained forward); the methods' below add to them.
HVS adds V no-grad scoring forwards per network that scores a candidate (at (score_resolution / image_size)^2 of the
cost; the objective declares them, Forwards.candidate: MoCo-v2's one or two scoring encoders, the networks another
objective's pair losses read) and, when MoCo-v2 reuses the scoring keys, no separate key forward (another objective's
step re-forwards the chosen views). MoCHi adds no encoder forward. Fast-MoCo's
m x m patches of a query view cost one view together (a convolution's cost follows the pixels; the head on the
combinations is negligible): nothing more when they replace the whole view's query, one more trained query when
they are added to it. SSQL's quantized query is one more trained query of the query view. Multi-crop's L small
crops are trained queries at (local_size / image_size)^2 of a view's cost each, encoded once per step (the
symmetric loss scores the same crops in both directions).
Continual predictor distillation (continual.distill) passes every trained forward through the frozen encoder of
the previous task as well, from the second task on: one more no-grad forward each.
LC-loss adds no encoder forward either (the dense maps come from the forwards already counted) and is not counted:
its dense head, a 1x1 conv MLP at every location of the last feature map, costs about 1% of a backbone forward for
ResNet-18 at 56 px (2 x 2 locations) and 5% for ResNet-50 at 224 px with DenseCL's 2048 hidden channels (7 x 7; FLOPs
counted with torch.utils.flop_counter), and its logits over the batch's locations less still; the global projection
head is not counted either.
"""

from __future__ import annotations

from .config import Config, local_crops, views_per_image
from .methods.hvs import selects
from .objectives.base import objective_of

QUERY_UNITS = 3.0  # forward + backward of a trained query
KEY_UNITS = 1.0  # no-grad forward of a key (or of a scored candidate)


def units_per_image(cfg: Config, selecting: bool) -> float:
    """Encoder forwards one image of the batch costs in a step (with or without HVS selection)."""
    objective = objective_of(cfg)
    forwards = objective.forwards()
    added_patches = cfg.fast_moco.enabled and cfg.fast_moco.mode == "add"
    query = QUERY_UNITS * forwards.trained * (1 + added_patches + cfg.ssql.enabled)
    crops = local_crops(cfg)
    if crops is not None:
        query += QUERY_UNITS * crops.count * (crops.size / cfg.data.image_size) ** 2
    if not selecting:
        return query + KEY_UNITS * forwards.target
    hvs = cfg.hvs
    if hvs.mode == "random":
        return query + KEY_UNITS * forwards.target
    full_resolution = not hvs.score_resolution or hvs.score_resolution == cfg.data.image_size
    scale = 1.0 if full_resolution else (hvs.score_resolution / cfg.data.image_size) ** 2
    scoring = views_per_image(cfg) * scale * forwards.candidate * KEY_UNITS
    reused = objective.needs.methods and hvs.reuse_keys and full_resolution
    keys = 0.0 if reused else KEY_UNITS * forwards.target
    return query + scoring + keys


def distillation_units(cfg: Config, epoch: int) -> float:
    """Encoder forwards one image costs the frozen previous-task encoder in epoch (task) `epoch` of a continual run."""
    distilling = cfg.continual.enabled and cfg.continual.distill and epoch >= 1
    return KEY_UNITS * objective_of(cfg).forwards().trained if distilling else 0.0


def run_units(cfg: Config, steps_per_epoch: int, total_steps: int) -> float:
    """Encoder forwards of a whole run of `total_steps` steps of the global batch."""
    batch = cfg.optim.batch_size
    return sum(batch * (units_per_image(cfg, selects(cfg.hvs, step // steps_per_epoch, step))
                        + distillation_units(cfg, step // steps_per_epoch))
               for step in range(total_steps))


def steps_for_units(cfg: Config, steps_per_epoch: int, units: float) -> int:
    """The fewest steps of `cfg` whose run costs at least `units` encoder forwards."""
    total, step = 0.0, 0
    while total < units:
        total += cfg.optim.batch_size * units_per_image(cfg, selects(cfg.hvs, step // steps_per_epoch, step))
        step += 1
    return max(step, 1)
