"""Training throughput and peak memory of MoCo-v2, MoCHi, HVS and MoCHi+HVS steps, beside lightly's MoCo.

    python benchmarks/throughput.py                  # ResNet-18 (small stem, 32 px) and ResNet-50 (224 px)
    python benchmarks/throughput.py --part data      # data pipeline: torchvision + workers vs device augmentation
    python benchmarks/throughput.py --compile        # also time torch.compile'd encoders

Step times are medians of interleaved repeats over synthetic batches (one process, same backbone, batch,
queue and precision for every variant). `lightly_moco` is the MoCo recipe of the lightly package (its
MoCoProjectionHead, update_momentum and NTXentLoss with a memory bank, as in its MoCo example, which has
no shuffle-BN); `moco_v2_plain` is our step doing that same computation (no shuffle, one BatchNorm
group). Peak memory: CUDA's allocator peak per variant on a GPU; on the CPU, in a fresh subprocess per
variant, how far the resident set rose above its level after set-up during the steps (Linux's
high-water mark, reset through /proc/self/clear_refs once the model and data are in memory).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import benchmark_trainer, device_name, emit, interleaved_medians, synchronize, synthetic_batch  # noqa: E402

from mochi_hvs.config import load_config  # noqa: E402
from mochi_hvs.data.batches import DeviceAugmentedBatches, LoaderBatches  # noqa: E402
from mochi_hvs.data.datasets import load_images  # noqa: E402
from mochi_hvs.engine import Trainer  # noqa: E402
from mochi_hvs.runtime import autocast  # noqa: E402

MOCHI = ["mochi.enabled=true", "mochi.warmup_epochs=0", "mochi.num_hard=1024", "mochi.num_mix=1024",
         "mochi.num_query_mix=256"]
HVS = ["hvs.enabled=true", "hvs.num_views=4", "hvs.scorer=query"]
VARIANTS = {
    "moco_v2": [],
    "moco_v2_plain": ["moco.shuffle_bn=false", "model.bn_splits=1"],
    "mochi": MOCHI,
    "hvs": HVS,
    "mochi_hvs": MOCHI + HVS + ["hvs.score_with_mochi=true"],
}
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
        self.device, self.amp = trainer.device, trainer.amp_dtype
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
        self.channels_last = trainer.channels_last

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        """Momentum update, query and key forwards, NTXent against the memory bank, backward, SGD."""
        x_query, x_key = batch["views"][:, 0], batch["views"][:, 1]
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


def overrides_for(args: argparse.Namespace, arch: str) -> tuple[list[str], int, int]:
    """Common config overrides, image size and batch for one architecture on this device."""
    small, size, queue, cpu_batch, gpu_batch = SETTINGS[arch]
    batch = args.batch or (gpu_batch if args.device.startswith("cuda") else cpu_batch)
    common = [f"model.arch={arch}", f"model.small_stem={str(small).lower()}", f"optim.batch_size={batch}",
              f"moco.queue_size={queue}", f"data.image_size={size}", "model.bn_splits=8"]
    return common, size, batch


def step_function(name: str, common: list[str], size: int, batch: int, device: torch.device):
    """A zero-argument callable running one training step of the named variant."""
    if name == "lightly_moco":
        runner = LightlyMoCo(benchmark_trainer(common + VARIANTS["moco_v2_plain"], str(device)))
        return partial(runner.step, synthetic_batch(batch, 2, size, device))
    trainer = benchmark_trainer(common + VARIANTS[name], str(device))
    views = trainer.cfg.hvs.num_views if trainer.cfg.hvs.enabled else 2
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
    if args.compile:
        command.append("--compile")
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])


def step_part(args: argparse.Namespace, device: torch.device) -> None:
    """Interleaved step times (and peak memory) of every variant, per architecture."""
    for arch in args.archs:
        common, size, batch = overrides_for(args, arch)
        names = [*VARIANTS, "lightly_moco"]
        fns = {name: step_function(name, common, size, batch, device) for name in names}
        medians = interleaved_medians(fns, args.repeats, args.warmup, device)
        for name in names:
            emit({"part": "step", "arch": arch, "image_size": size, "batch": batch, "variant": name,
                  "step_s": round(medians[name], 4), "images_per_s": round(batch / medians[name], 1),
                  "speed_vs_lightly": round(medians["lightly_moco"] / medians[name], 3),
                  "peak_memory_mib" if device.type == "cuda" else "step_memory_rise_mib":
                      round(peak_memory_mib(args, arch, name, device), 1)})


def loader_images_per_s(source, batches: int, device: torch.device) -> float:
    """Images per second a batch source delivers (views made and on the device)."""
    source.set_epoch(0)
    iterator = iter(source)
    next(iterator)  # start-up (workers, first batch) is not throughput
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += next(iterator)["views"].shape[0]
    synchronize(device)
    return count / (time.perf_counter() - start)


def data_part(args: argparse.Namespace, device: torch.device) -> None:
    """Images/s of the two augmentation paths for V views, and the data-wait share of a real training run."""
    images = load_images("fashion_mnist", None, "pretrain")
    for views in (2, 4):
        for where, cls in (("cpu", LoaderBatches), ("device", DeviceAugmentedBatches)):
            cfg = load_config(None, [f"data.augment_on={where}", f"data.num_views={views}",
                                     f"data.workers={args.workers}"])
            source = cls(images, cfg.data, 256, 0, device)
            emit({"part": "data", "path": where, "views": views, "workers": args.workers if where == "cpu" else 0,
                  "images_per_s": round(loader_images_per_s(source, args.data_batches, device), 1)})
    for where in ("cpu", "device"):
        trainer = benchmark_trainer([f"data.augment_on={where}", f"data.workers={args.workers}",
                                     f"optim.steps={args.data_batches}", "log_every=5"], str(device))
        trainer.train()
        emit({"part": "data_wait", "path": where, "data_wait_frac": round(trainer.last_metrics["data_wait_frac"], 4),
              "train_images_per_s": round(trainer.last_metrics["images_per_s"], 1)})


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
    parser.add_argument("--part", choices=["all", "step", "data"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on GPU, 64 / 16 on CPU")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-batches", type=int, default=20)
    parser.add_argument("--memory-of", nargs=2, metavar=("ARCH", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile:
        VARIANTS["moco_v2_compiled"] = ["compile=true"]
    if args.memory_of:
        measure_own_memory(args)
        return
    device = torch.device(args.device)
    if args.part in ("all", "step"):
        step_part(args, device)
    if args.part in ("all", "data"):
        data_part(args, device)
    emit({"part": "summary", "device": device_name(device), "torch": torch.__version__,
          "argv": json.dumps(sys.argv[1:])})


if __name__ == "__main__":
    main()
