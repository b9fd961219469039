"""Training throughput and peak memory of MoCo-v2, MoCHi, HVS, MoCHi+HVS and Fast-MoCo steps, beside lightly's MoCo.

    python benchmarks/throughput.py                  # all parts below
    python benchmarks/throughput.py --part step      # ResNet-18 (small stem, 32 px) and ResNet-50 (224 px) steps
    python benchmarks/throughput.py --part data      # data pipeline: torchvision + workers vs device augmentation
    python benchmarks/throughput.py --part e2e       # end to end: N steps with data loading, ours vs lightly's loop
    python benchmarks/throughput.py --compile        # also time torch.compile'd encoders

Step times are medians of interleaved repeats over synthetic batches (one process, same backbone, batch,
queue and precision for every variant). `lightly_moco` is the MoCo recipe of the lightly package (its
MoCoProjectionHead, update_momentum and NTXentLoss with a memory bank, as in its MoCo example, which has
no shuffle-BN); `moco_v2_plain` is our step doing that same computation (no shuffle, one BatchNorm
group). Peak memory: CUDA's allocator peak per variant on a GPU; on the CPU, in a fresh subprocess per
variant, how far the resident set rose above its level after set-up during the steps (Linux's
high-water mark, reset through /proc/self/clear_refs once the model and data are in memory).

End to end (`--part e2e`): wall clock of N training steps including data loading and augmentation, for
the default recipe's path (configs/moco_v2.yaml: Fashion-MNIST in memory, views made on the training
device) and for lightly's documented MoCo training loop on the same images, backbone, batch, queue and
temperature (its MoCoV2Transform with the recipe's normalisation, a shuffling DataLoader with --workers
workers, the step above). The two alternate in blocks of N steps (--e2e-rounds of each, the order
swapped every round); each block starts a fresh epoch iterator and its first step is not timed (so
lightly's workers start and fill up beforehand, and none of them run while the other loop is timed).

Every line carries the machine it was measured on (CPU model, cores, instruction set; GPU on CUDA).
Without lightly installed the lightly figures are left out and a `notice` line says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (  # noqa: E402
    benchmark_trainer,
    bn_splits_for,
    emit,
    interleaved_medians,
    synchronize,
    synthetic_batch,
)

from mochi_hvs.config import load_config, views_per_image  # noqa: E402
from mochi_hvs.data.batches import DeviceAugmentedBatches, LoaderBatches  # noqa: E402
from mochi_hvs.data.datasets import ImageSet, load_images  # noqa: E402
from mochi_hvs.models import SplitBatchNorm2d  # noqa: E402
from mochi_hvs.runtime import autocast  # noqa: E402
from mochi_hvs.train import Trainer  # noqa: E402

RECIPE = str(Path(__file__).resolve().parents[1] / "configs" / "moco_v2.yaml")


def lightly_importable() -> bool:
    """Whether lightly can be imported here (the comparison leaves it out otherwise)."""
    try:
        import lightly  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_LIGHTLY = lightly_importable()

MOCHI = ["mochi.enabled=true", "mochi.warmup_epochs=0", "mochi.num_hard=1024", "mochi.num_mix=1024",
         "mochi.num_query_mix=256"]
HVS = ["hvs.enabled=true", "hvs.num_views=4", "hvs.scorer=query"]
VARIANTS = {
    "moco_v2": [],
    "moco_v2_plain": ["moco.shuffle_bn=false", "model.bn_splits=1"],
    "moco_v2_channels_last": ["channels_last=true"],  # split BN on channels_last: its fused formulation
    "moco_v2_channels_last_grouped": ["channels_last=true"],  # the same through the grouped one (layout copies)
    "moco_v2_fused": [],  # the contiguous default through the fused formulation
    "mochi": MOCHI,
    "hvs": HVS,
    "mochi_hvs": MOCHI + HVS + ["hvs.score_with_mochi=true"],
    "fast_moco": ["fast_moco.enabled=true"],  # 2 x 2 patches, 6 pairs replacing the whole view's query
}
SPLIT_BN_FORMULATION = {"moco_v2_channels_last_grouped": "grouped", "moco_v2_fused": "fused"}  # else "auto"
SETTINGS = {  # arch -> (small stem, image size, queue size, batch on CPU, batch on GPU)
    "resnet18": (True, 32, 4096, 64, 256),
    "resnet50": (False, 224, 65536, 16, 256),
}


class LightlyMoCo:
    """One training step of lightly's MoCo example recipe on a torchvision backbone."""

    def __init__(self, trainer: Trainer) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum

        cfg, width = trainer.cfg, trainer.model.feature_width
        self.update_momentum = update_momentum
        self.device, self.amp = trainer.parts.device, trainer.parts.amp_dtype
        self.backbone = copy.deepcopy(trainer.model.encoder_q.backbone)
        self.head = MoCoProjectionHead(width, width, cfg.model.feature_dim).to(self.device)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.head_momentum = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.criterion = NTXentLoss(temperature=cfg.moco.temperature,
                                    memory_bank_size=(cfg.moco.queue_size, cfg.model.feature_dim))
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)
        self.channels_last = trainer.parts.channels_last

    def step(self, x_query: torch.Tensor, x_key: torch.Tensor) -> None:
        """Momentum update, query and key forwards, NTXent against the memory bank, backward, SGD."""
        if self.channels_last:
            x_query, x_key = (x.contiguous(memory_format=torch.channels_last) for x in (x_query, x_key))
        self.update_momentum(self.backbone, self.backbone_momentum, m=0.99)
        self.update_momentum(self.head, self.head_momentum, m=0.99)
        with autocast(self.device, self.amp):
            query = self.head(self.backbone(x_query).flatten(start_dim=1))
            key = self.head_momentum(self.backbone_momentum(x_key).flatten(start_dim=1)).detach()
            loss = self.criterion(query, key)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


class PilImageDataset(Dataset):
    """The in-memory images as RGB PIL images through a transform, with their labels (a torchvision-style set)."""

    def __init__(self, images: ImageSet, transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image = Image.fromarray(self.images.array[index].squeeze(-1)).convert("RGB")
        return self.transform(image), int(self.images.labels[index])


def lightly_loader(trainer: Trainer, images: ImageSet, workers: int) -> DataLoader:
    """lightly's MoCo example data path: MoCoV2Transform (the recipe's size, crop scale and normalisation) in a
    shuffling DataLoader with workers, yielding ([query views, key views], labels)."""
    from lightly.transforms import MoCoV2Transform

    data = trainer.cfg.data
    transform = MoCoV2Transform(input_size=data.image_size, min_scale=data.crop_scale[0],
                                normalize={"mean": data.mean, "std": data.std})
    return DataLoader(PilImageDataset(images, transform), batch_size=trainer.cfg.optim.batch_size, shuffle=True,
                      drop_last=True, num_workers=workers)


def overrides_for(args: argparse.Namespace, arch: str) -> tuple[list[str], int, int]:
    """Common config overrides, image size and batch for one architecture on this device."""
    small, size, queue, cpu_batch, gpu_batch = SETTINGS[arch]
    batch = args.batch or (gpu_batch if args.device.startswith("cuda") else cpu_batch)
    common = [f"model.arch={arch}", f"model.small_stem={str(small).lower()}", f"optim.batch_size={batch}",
              f"moco.queue_size={queue}", f"data.image_size={size}", f"model.bn_splits={bn_splits_for(batch)}",
              *data_root_override(args)]
    return common, size, batch



def step_variants() -> list[str]:
    """The variants the step part times: ours, and lightly's MoCo where lightly is installed."""
    return [*VARIANTS, "lightly_moco"] if HAVE_LIGHTLY else list(VARIANTS)


def step_function(name: str, common: list[str], size: int, batch: int, device: torch.device):
    """A zero-argument callable running one training step of the named variant."""
    if name == "lightly_moco":
        runner = LightlyMoCo(benchmark_trainer(common + VARIANTS["moco_v2_plain"], str(device)))
        views = synthetic_batch(batch, 2, size, device).views
        return partial(runner.step, views[:, 0], views[:, 1])
    trainer = benchmark_trainer(common + VARIANTS[name], str(device))
    for layer in trainer.parts.model.modules():
        if isinstance(layer, SplitBatchNorm2d):
            layer.formulation = SPLIT_BN_FORMULATION.get(name, "auto")
    views = views_per_image(trainer.cfg)
    return partial(trainer.train_step, synthetic_batch(batch, views, size, device))


def peak_memory_mib(args: argparse.Namespace, arch: str, name: str, device: torch.device) -> float:
    """Peak memory of a few steps of one variant: CUDA allocator peak, or a fresh process's peak RSS on CPU."""
    if device.type == "cuda":
        common, size, batch = overrides_for(args, arch)
        step = step_function(name, common, size, batch, device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            step()
        return torch.cuda.max_memory_allocated(device) / 2**20
    command = [sys.executable, __file__, "--memory-of", arch, name, "--device", args.device]
    if args.batch:
        command += ["--batch", str(args.batch)]
    if args.data_root:
        command += ["--data-root", args.data_root]
    if args.compile:
        command.append("--compile")
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])


def step_part(args: argparse.Namespace, device: torch.device) -> None:
    """Interleaved step times (and peak memory) of every variant, per architecture."""
    for arch in args.archs:
        common, size, batch = overrides_for(args, arch)
        names = step_variants()
        fns = {name: step_function(name, common, size, batch, device) for name in names}
        medians = interleaved_medians(fns, args.repeats, args.warmup, device)
        for name in names:
            record = {"part": "step", "arch": arch, "image_size": size, "batch": batch, "variant": name,
                      "step_s": round(medians[name], 4), "images_per_s": round(batch / medians[name], 1)}
            if HAVE_LIGHTLY:
                record["speed_vs_lightly"] = round(medians["lightly_moco"] / medians[name], 3)
            memory = "peak_memory_mib" if device.type == "cuda" else "step_memory_rise_mib"
            emit({**record, memory: round(peak_memory_mib(args, arch, name, device), 1)}, device)


def loader_images_per_s(source, batches: int, device: torch.device) -> float:
    """Images per second a batch source delivers (views made and on the device)."""
    source.set_epoch(0)
    iterator = iter(source)
    next(iterator)  # start-up (workers, first batch) is not throughput
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += next(iterator).views.shape[0]
    synchronize(device)
    return count / (time.perf_counter() - start)


def data_part(args: argparse.Namespace, device: torch.device) -> None:
    """Images/s of the two augmentation paths for V views, and the data-wait share of a real training run."""
    images = load_images("fashion_mnist", args.data_root, "pretrain")
    for views in (2, 4):
        for where, cls in (("cpu", LoaderBatches), ("device", DeviceAugmentedBatches)):
            cfg = load_config(None, [f"data.augment_on={where}", f"data.workers={args.workers}",
                                     *data_root_override(args)])
            source = cls(images, cfg.data, views, 256, 0, device)
            emit({"part": "data", "path": where, "views": views, "workers": args.workers if where == "cpu" else 0,
                  "images_per_s": round(loader_images_per_s(source, args.data_batches, device), 1)}, device)
    for where in ("cpu", "device"):
        trainer = benchmark_trainer([f"data.augment_on={where}", f"data.workers={args.workers}",
                                     f"optim.steps={args.data_batches}", "log_every=5", *data_root_override(args)],
                                    str(device))
        trainer.train()
        emit({"part": "data_wait", "path": where, "data_wait_frac": round(trainer.last_metrics["data_wait_frac"], 4),
              "train_images_per_s": round(trainer.last_metrics["images_per_s"], 1)}, device)


def data_root_override(args: argparse.Namespace) -> list[str]:
    """data.root=... when --data-root names where Fashion-MNIST lies, else nothing (the installed copy)."""
    return [f"data.root={args.data_root}"] if args.data_root else []


def timed_steps(batches: Iterator, step, steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps, each taking its batch from `batches` (data loading included), after one
    untimed step (worker start-up, first batch, lazy initialisation)."""
    step(next(batches))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    synchronize(device)
    return time.perf_counter() - start


def ours_block(trainer: Trainer, epoch: int, steps: int) -> float:
    """The default recipe's loop: device-augmented batches from the in-memory images, our training step."""
    trainer.parts.batches.set_epoch(epoch)
    return timed_steps(iter(trainer.parts.batches), trainer.train_step, steps, trainer.parts.device)


def lightly_block(runner: LightlyMoCo, loader: DataLoader, steps: int) -> float:
    """lightly's documented loop: views from DataLoader workers, moved to the device, then its MoCo step."""
    def step(batch) -> None:
        (x_query, x_key), _ = batch
        runner.step(x_query.to(runner.device), x_key.to(runner.device))

    # A fresh iterator starts the workers; they stop when it is released on return, so none of them
    # compete for the CPU while the other loop is timed.
    return timed_steps(iter(loader), step, steps, runner.device)


def e2e_part(args: argparse.Namespace, device: torch.device) -> None:
    """End-to-end images/s of the default recipe's path and of lightly's MoCo loop, alternating blocks of N steps."""
    common = ["data.train_subset=null", *data_root_override(args)]
    if args.batch:
        common += [f"optim.batch_size={args.batch}", f"model.bn_splits={bn_splits_for(args.batch)}"]
    trainer = benchmark_trainer(common, str(device), recipe=RECIPE)
    batch = trainer.cfg.optim.batch_size
    loops = {"ours_default": partial(ours_block, trainer)}
    if HAVE_LIGHTLY:
        runner = LightlyMoCo(benchmark_trainer(common + VARIANTS["moco_v2_plain"], str(device), recipe=RECIPE))
        loader = lightly_loader(trainer, load_images("fashion_mnist", args.data_root, "pretrain"), args.workers)
        loops["lightly_moco"] = lambda epoch, steps: lightly_block(runner, loader, steps)
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for round_index in range(args.e2e_rounds):
        order = list(loops) if round_index % 2 == 0 else list(reversed(loops))
        for name in order:
            seconds[name].append(loops[name](round_index, args.e2e_steps))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        record = {"part": "e2e", "path": name, "recipe": "configs/moco_v2.yaml", "arch": trainer.cfg.model.arch,
                  "image_size": trainer.cfg.data.image_size, "batch": batch, "queue": trainer.cfg.moco.queue_size,
                  "steps": args.e2e_steps, "rounds": args.e2e_rounds,
                  "workers": args.workers if name == "lightly_moco" else 0,
                  "seconds_per_round": [round(value, 3) for value in seconds[name]],
                  "images_per_s": round(args.e2e_steps * batch / median, 1)}
        if HAVE_LIGHTLY:
            record["speed_vs_lightly"] = round(medians["lightly_moco"] / median, 3)
        emit(record, device)


def resident_kib(field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_own_memory(args: argparse.Namespace) -> None:
    """Child process of peak_memory_mib on the CPU: print how far the resident set rose during two steps (MiB)."""
    arch, name = args.memory_of
    common, size, batch = overrides_for(args, arch)
    step = step_function(name, common, size, batch, torch.device(args.device))
    before = resident_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current resident set
    for _ in range(2):
        step()
    print((resident_kib("VmHWM") - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "step", "data", "e2e"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 256 on GPU, 64 / 16 on CPU (step part); the recipe's 256 (e2e part)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-batches", type=int, default=20)
    parser.add_argument("--e2e-steps", type=int, default=20, help="timed steps per block of the e2e part")
    parser.add_argument("--e2e-rounds", type=int, default=3, help="blocks of each loop in the e2e part")
    parser.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST files (default: installed)")
    parser.add_argument("--memory-of", nargs=2, metavar=("ARCH", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile:
        VARIANTS["moco_v2_compiled"] = ["compile=true"]
    if args.memory_of:
        measure_own_memory(args)
        return
    device = torch.device(args.device)
    if not HAVE_LIGHTLY:
        emit({"part": "notice", "lightly": "not importable: lightly's figures are left out (pip install lightly)"},
             device)
    if args.part in ("all", "step"):
        step_part(args, device)
    if args.part in ("all", "data"):
        data_part(args, device)
    if args.part in ("all", "e2e"):
        e2e_part(args, device)
    emit({"part": "summary", "argv": json.dumps(sys.argv[1:])}, device)


if __name__ == "__main__":
    main()
