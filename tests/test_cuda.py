"""The CUDA paths: AMP steps against float32, Faiss indexes on the GPU against torch, device augmentation on
CUDA against the CPU.

Every test here is marked `cuda`: collected everywhere, skipped where torch sees no GPU (tests/conftest.py).
`bash benchmarks/gpu_check.sh` runs them on a GPU machine.
"""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mochi_hvs.config import load_config, local_crops
from mochi_hvs.data import batch_augment as ba
from mochi_hvs.data.batches import LoaderBatches
from mochi_hvs.data.datasets import ImageSet
from mochi_hvs.data.records import ViewBatch
from mochi_hvs.methods import build_methods
from mochi_hvs.models import MoCo
from mochi_hvs.queue import MemoryQueue
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.retrieval import FaissTopK, TorchTopK
from mochi_hvs.runtime import autocast
from mochi_hvs.step import ContrastiveStep

pytestmark = pytest.mark.cuda

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TEMPERATURE = 0.2
# Machine epsilon (the spacing of numbers just above 1) of the autocast formats: bf16 keeps 8 significant bits,
# fp16 keeps 11.
EPS = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
# An AMP step rounds the operands of each convolution and matrix product to the autocast format (products
# accumulate in float32). ResNet-18 chains about 20 such layers; independent roundings of relative size eps/2
# add up to about sqrt(20) * eps/2, some 2-3 eps: the forward results (the loss; the keys, unit vectors) may
# differ from float32 by FORWARD_EPS = 8 eps.
FORWARD_EPS = 8
# The update is another matter. At random initialisation the step's gradient is badly conditioned: in float32
# it already differs from a float64 run by about 2e-3, some 10^4 times float32's rounding unit, and bf16 rounding
# amplified alike leaves no significant digit of any single component. What survives is the direction, so the
# AMP update must point within 60 degrees of float32's (cosine above 1/2) and have its size within a factor of 2:
# a wrong loss scale (fp16 gradients are scaled by 2^16), a lost sign or a skipped step all break that.
MIN_UPDATE_COSINE, MAX_UPDATE_RATIO = 0.5, 2.0
# Float32 ops on values in [0, 1]: CUDA and the CPU may round each operation differently by an ulp (1.2e-7);
# the longest chains here (HSV round trip, a 5-tap separable blur) stay below 100 ulps.
OPS_ATOL = 1e-5
# Faiss may compute inner products of unit vectors with TF32 tensor cores (11 significant bits): rounding both
# operands costs at most 2 * 2^-11 of sum |q_i n_i| <= 1.
FAISS_ATOL = 2.0**-10


@pytest.fixture
def full_float32():
    """Convolutions and matrix products in true float32 (PyTorch lets cuDNN use TF32 by default), then restored."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class ReplayedTopK:
    """Exact top-N that records every call's choice (`recording=None`), or replays a recording call by call.

    Which negatives are hardest is a discrete choice that rounding may flip between near-equal logits; an AMP
    run that replays the float32 run's choices can be compared with it value for value.
    """

    def __init__(self, recording: list[torch.Tensor] | None = None) -> None:
        self.exact = TorchTopK()
        self.replaying = recording is not None
        self.recording = [] if recording is None else recording
        self.calls = 0

    def topk(self, queries: torch.Tensor, k: int, bank: torch.Tensor, logits: torch.Tensor | None = None):
        if not self.replaying:
            scores, indices = self.exact.topk(queries, k, bank, logits=logits)
            self.recording.append(indices)
            return scores, indices
        indices = self.recording[self.calls]
        self.calls += 1
        logits = queries @ bank.t() if logits is None else logits
        return logits.detach().float().gather(1, indices), indices


def small_moco(device: torch.device) -> MoCo:
    """ResNet-18 with two BatchNorm groups, shuffle-BN, a symmetric loss, channels-last as on CUDA."""
    torch.manual_seed(0)
    model = MoCo("resnet18", bn_splits=2, feature_dim=32, queue_size=1024, channels_last=True)
    return model.to(device)


def two_view_batch(device: torch.device, batch: int = 32, size: int = 64):
    """Normalised views (B, 2, 3, S, S), valid crop boxes and labels."""
    generator = torch.Generator().manual_seed(1)
    views = torch.randn(batch, 2, 3, size, size, generator=generator)
    corner = torch.rand(batch, 2, 2, generator=generator) * 0.5
    boxes = torch.cat([corner, corner + 0.5], dim=2)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    return views.to(device), boxes.to(device), labels.to(device)


def train_once(model: MoCo, recording, dtype, batch, scaler: torch.amp.GradScaler):
    """One step taken as Trainer.train_step takes it: MoCo + MoCHi + HVS under autocast at `dtype`, the loss
    through the GradScaler, one SGD update (lr 1, so the update is minus the gradient).

    HVS scores 2 views with a symmetric loss, so both orders score the same and the selected pair is (0, 1)
    at any precision. Returns the loss, the keys to enqueue, the update and the top-N recording.
    """
    device = model.queue.features.device
    methods = build_methods(load_config(None, [
        f"moco.temperature={TEMPERATURE}", "moco.symmetric=true", "moco.queue_size=1024", "mochi.enabled=true",
        "mochi.num_hard=64", "mochi.num_mix=128", "mochi.num_query_mix=32", "mochi.warmup_epochs=0",
        "hvs.enabled=true", "hvs.num_views=2", "hvs.scorer=query", "hvs.score_with_mochi=true"]), model)
    retrieval = methods[0].mixer.retrieval = ReplayedTopK(recording)
    step = ContrastiveStep(model, TEMPERATURE, True, methods)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=1.0)
    start = [p.detach().clone() for p in model.encoder_q.parameters()]
    views, boxes, labels = batch
    with autocast(device, dtype):
        out = step(views, StepRandom(seed=0, step=0, rank=0, device=device), labels, boxes)
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    update = torch.cat([(p.detach() - s).flatten() for p, s in zip(model.encoder_q.parameters(), start, strict=True)])
    return out.loss.detach().float(), out.keys.detach().float(), update, retrieval.recording


def amp_step(pristine: MoCo, recording, dtype: torch.dtype, batch):
    """train_once at `dtype` from the pristine model; with fp16, as often as the GradScaler skips the step
    (gradients overflowed at its scale, which it then halves), until it takes it."""
    scaler = torch.amp.GradScaler(pristine.queue.features.device.type, enabled=dtype == torch.float16)
    for _ in range(24):
        scale = scaler.get_scale()
        result = train_once(copy.deepcopy(pristine), recording, dtype, batch, scaler)
        if scaler.get_scale() == scale:  # not halved: the step was taken
            return result
    pytest.fail("the GradScaler skipped 24 steps in a row")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_amp_step_matches_float32(dtype, full_float32):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    pristine = small_moco(CUDA)
    batch = two_view_batch(CUDA)
    loss32, keys32, update32, recording = train_once(copy.deepcopy(pristine), None, None, batch,
                                                     torch.amp.GradScaler("cuda", enabled=False))
    loss, keys, update, _ = amp_step(pristine, recording, dtype, batch)
    eps = EPS[dtype]
    assert torch.isfinite(loss) and torch.isfinite(update).all()
    assert abs(float(loss - loss32)) <= FORWARD_EPS * eps * abs(float(loss32))
    assert float((keys - keys32).abs().max()) <= FORWARD_EPS * eps
    assert float(F.cosine_similarity(update, update32, dim=0)) > MIN_UPDATE_COSINE
    ratio = float(update.norm() / update32.norm())
    assert 1 / MAX_UPDATE_RATIO < ratio < MAX_UPDATE_RATIO


def test_faiss_gpu_index_finds_the_torch_top_k(full_float32):
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.skip("faiss has no GPU support here (pip install faiss-gpu-cu12)")
    torch.manual_seed(0)
    queue = MemoryQueue(4096, 64).to(CUDA)
    queries = F.normalize(torch.randn(32, 64, device=CUDA), dim=1)
    for kind in ("flat", "ivf"):  # IVF probing all of its lists is exhaustive
        backend = FaissTopK(kind, nlist=16, nprobe=16)
        for _ in range(2):  # the index follows the queue after it changes
            scores, indices = backend.topk(queries, 100, queue.features)
            assert type(backend.index).__name__.startswith("GpuIndex"), type(backend.index)
            assert scores.is_cuda and indices.is_cuda
            exact = queries @ queue.features.t()
            found = exact.gather(1, indices.long())
            assert torch.allclose(scores, found, atol=FAISS_ATOL), kind
            assert (found >= exact.topk(100, dim=1).values[:, -1:] - FAISS_ATOL).all(), kind
            assert all(len(set(row)) == 100 for row in indices.tolist())
            queue.enqueue(F.normalize(torch.randn(1000, 64, device=CUDA), dim=1))


def test_augmentation_ops_on_cuda_match_the_cpu(full_float32):
    """Each step of the device augmentation, given the same random parameters, computes the same on both devices,
    including the CUDA-only branch that runs an op on the whole batch and keeps it where selected."""
    generator = torch.Generator().manual_seed(0)
    n = 16
    x = torch.rand(n, 3, 24, 24, generator=generator)
    factors = torch.rand(n, generator=generator) * 0.8 + 0.6
    shifts = torch.rand(n, generator=generator) * 0.2 - 0.1
    sigmas = torch.rand(n, generator=generator) * 1.9 + 0.1
    selected = torch.rand(n, generator=generator) < 0.5
    boxes = ba.sample_crop_boxes(n, 24, 24, generator, CPU)
    source = torch.arange(n)

    def blur(v, s):
        return ba.gaussian_blur(v, s, 5)

    ops = {
        "crop": lambda v, d: ba.resized_crops(v, boxes.to(d), source.to(d), 20),
        "brightness": lambda v, d: ba.adjust_brightness(v, factors.to(d)),
        "contrast": lambda v, d: ba.adjust_contrast(v, factors.to(d)),
        "saturation": lambda v, d: ba.adjust_saturation(v, factors.to(d)),
        "hue": lambda v, d: ba.adjust_hue(v, shifts.to(d)),
        "grayscale": lambda v, d: ba.grayscale(v),
        "blur": lambda v, d: blur(v, sigmas.to(d)),
        "blur where selected": lambda v, d: ba._apply_where(v, selected.to(d), blur, sigmas.to(d)),
    }
    for name, op in ops.items():
        on_cpu, on_cuda = op(x, CPU), op(x.to(CUDA), CUDA)
        assert on_cuda.is_cuda, name
        assert torch.allclose(on_cuda.cpu(), on_cpu, atol=OPS_ATOL), name


def view_statistics(views: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-view values whose distribution the augmentation fixes: crop geometry, grey views, flips, colour."""
    views, boxes = views.flatten(0, 1).double(), boxes.flatten(0, 1).double()
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    half = views.shape[-1] // 2
    return {
        "crop area": width * height,
        "crop log aspect ratio": (width / height).log(),
        "crop centre x": (boxes[:, 0] + boxes[:, 2]) / 2,
        "grey": ((views[:, 0] - views[:, 1]).abs().amax(dim=(1, 2)) == 0).double(),
        "left minus right": views[..., :half].mean(dim=(1, 2, 3)) - views[..., half:].mean(dim=(1, 2, 3)),
        "mean": views.mean(dim=(1, 2, 3)),
        "std": views.std(dim=(1, 2, 3)),
    }


def test_device_augmentation_on_cuda_draws_from_the_cpu_distribution():
    """CUDA and CPU generators are different streams, so one seed gives different views on the two devices
    (each device repeats itself exactly). The views must come from the same distribution: each statistic's mean
    agrees within 5 standard errors of the difference (a false alarm less than once in a million)."""
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 127, 28).view(1, 1, 1, 28)  # brighter to the right: flips show in "left minus right"
    images = (torch.randint(0, 128, (32, 3, 28, 28), generator=generator) + ramp).to(torch.uint8)
    augment = ba.BatchViewAugmenter(128, 28, "mocov2", [0.0] * 3, [1.0] * 3)  # 4096 views, values in [0, 1]

    def statistics_on(device: torch.device) -> dict[str, torch.Tensor]:
        views, boxes = augment(images.to(device), torch.Generator(device=device).manual_seed(0))
        again, _ = augment(images.to(device), torch.Generator(device=device).manual_seed(0))
        assert torch.equal(views, again), device
        return view_statistics(views.cpu(), boxes.cpu())

    on_cpu, on_cuda = statistics_on(CPU), statistics_on(CUDA)
    for name in on_cpu:
        standard_error = math.sqrt(on_cpu[name].var() / len(on_cpu[name]) + on_cuda[name].var() / len(on_cuda[name]))
        assert abs(float(on_cpu[name].mean() - on_cuda[name].mean())) <= 5 * standard_error, name


def test_the_loader_path_pins_view_batches_and_moves_every_field_to_cuda():
    """DataLoader(pin_memory=True) pins each ViewBatch (its pin_memory) in the loader's pinning thread; LoaderBatches
    then moves every field, multi-crop's small crops included, to the GPU unchanged."""
    cfg = load_config(None, ["multicrop.enabled=true", "multicrop.local_crops=2", "data.workers=2"])
    rng = np.random.default_rng(0)  # no dataset on disk: the GPU check runs these tests without one
    images = ImageSet(labels=np.arange(32) % 10, classes=[str(c) for c in range(10)],
                      array=rng.integers(0, 256, size=(32, 28, 28, 1), dtype=np.uint8))
    on_cpu = list(LoaderBatches(images, cfg.data, 2, 8, seed=1, device=CPU, local_crops=local_crops(cfg)))
    source = LoaderBatches(images, cfg.data, 2, 8, seed=1, device=CUDA, local_crops=local_crops(cfg))
    assert source.loader.pin_memory
    fields = [field.name for field in dataclasses.fields(ViewBatch)]
    pinned = next(iter(source.loader))
    assert type(pinned) is ViewBatch and all(getattr(pinned, name).is_pinned() for name in fields)
    on_cuda = list(source)
    assert len(on_cuda) == len(on_cpu) == 4
    for there, here in zip(on_cuda, on_cpu, strict=True):
        for name in fields:
            assert getattr(there, name).device.type == "cuda", name
            assert torch.equal(getattr(there, name).cpu(), getattr(here, name)), name
