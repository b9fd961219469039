"""The GPU check behind benchmarks/gpu_check.sh: install, CUDA tests, throughput beside lightly, a flagship run.

    bash benchmarks/gpu_check.sh                     # on a CUDA machine, within --budget seconds
    bash benchmarks/gpu_check.sh --device cpu        # dry run: the same sequence on the CPU, tiny sizes

Phases, in order of importance: install the carried wheels (.whl/, only when lightly is missing), the
machine and versions, the `cuda`-marked tests, the training step beside lightly, end to end beside lightly,
the flagship recipe (configs/moco_mochi_hvs.yaml), the data pipeline, and last the GPU campaign
(configs/campaigns/gpu.yaml: the pending study runs that fit in the time left, docs/gpu-campaign.md). Each phase
is timed; a phase that would not fit before the deadline is skipped and one still running at the deadline is
stopped, its figures so far kept. Every figure goes to ONE JSON-lines file, OUT/gpu_check.jsonl (OUT: --out,
else $OUT, else runs/gpu_check), one object per line with its "phase"; the phases' output goes to
OUT/gpu_check.log, the campaign's records to OUT/campaign.tar.gz and its runs' output to OUT/campaign.log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # mochi_hvs need not be installed on the GPU machine
from mochi_hvs.data.datasets import FASHION_MNIST_ROOT  # noqa: E402
from mochi_hvs.deadline import GRACE_S, run_until  # noqa: E402
from mochi_hvs.machine import machine_info  # noqa: E402

WHEELS = ROOT / ".whl"
CARRIED_DATA = ROOT / ".gpu_data" / "fashion-mnist"
SITE = Path(tempfile.gettempdir()) / "gpu_check_site"
RESERVE_S = 10  # kept back at the deadline for writing a stopped phase's results
CAMPAIGN_START_S = 20  # the campaign's budget leaves this for its start-up (imports, loading the studies)
LOG_TAIL = 20000  # characters of each phase's output kept in the log


@dataclass
class Sizes:
    """How big each phase runs on one kind of device."""

    step_args: list[str]
    e2e_args: list[str]
    data_args: list[str]
    flagship_overrides: list[str]
    campaign_args: list[str]


# A run of a few seconds on the CPU: 256 images, small queue and MoCHi sizes, small kNN sets. The campaign keeps
# each recipe's model.bn_splits (its ViT arm has no BatchNorm to split), so its batch of 64 leaves the default's 8
# splits their 8 samples; the flagship alone runs at batch 32 in 4 splits.
TINY_RUN = ["data.train_subset=256", "moco.queue_size=128",
            "mochi.num_hard=16", "mochi.num_mix=16", "mochi.num_query_mix=8", "eval.knn_train_subset=200",
            "eval.knn_test_subset=100", "eval.batch_size=100"]
SIZES = {
    "cuda": Sizes(
        step_args=["--archs", "resnet18", "resnet50", "--repeats", "5", "--warmup", "2"],
        e2e_args=["--e2e-steps", "50", "--e2e-rounds", "3", "--workers", "8"],
        data_args=["--data-batches", "20", "--workers", "8"],
        flagship_overrides=[],  # the recipe as it is: 5 epochs, as the README's CPU figures
        campaign_args=[],  # the studies' recipes as they are
    ),
    "cpu": Sizes(
        step_args=["--archs", "resnet18", "--batch", "8", "--repeats", "1", "--warmup", "1"],
        e2e_args=["--batch", "32", "--e2e-steps", "2", "--e2e-rounds", "2", "--workers", "1"],
        data_args=["--data-batches", "2", "--workers", "1"],
        flagship_overrides=[*TINY_RUN, "optim.batch_size=32", "model.bn_splits=4", "optim.epochs=2", "log_every=2",
                            "eval.analysis_samples=64"],
        campaign_args=["--set", *TINY_RUN, "optim.batch_size=64", "optim.steps=2", "continual.steps_per_task=1",
                       "log_every=1", "eval.knn_every=0", "eval.knn_baseline=false",
                       "--evaluation-set", "eval.knn_train_subset=200", "eval.knn_test_subset=100",
                       "--video-set", "train.steps=2", "train.batch_size=8", "train.width=4"],
    ),
}


@dataclass
class Check:
    """The run's deadline, its results file and log, and the environment its phases run in."""

    device: str
    out: Path
    deadline: float
    data_root: Path | None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, phase: str, **values) -> None:
        """Append one result line (and echo it)."""
        line = json.dumps({"phase": phase, **values})
        with open(self.out / "gpu_check.jsonl", "a", encoding="utf-8") as results:
            results.write(line + "\n")
        print(line, flush=True)

    def log(self, phase: str, text: str) -> None:
        with open(self.out / "gpu_check.log", "a", encoding="utf-8") as log:
            log.write(f"===== {phase}\n{text[-LOG_TAIL:]}\n")

    def run(self, phase: str, command: list[str]) -> tuple[str, str, float]:
        """Run a phase's command until it ends or the deadline: (status, output, seconds).

        status: "ok", "failed (exit N)" or "stopped at the deadline" (SIGTERM, then SIGKILL to its process group,
        so that a stop also ends its DataLoader workers).
        """
        outcome = run_until(command, ROOT, self.env, self.remaining() - RESERVE_S - GRACE_S)
        self.log(phase, f"$ {' '.join(command)}\n{outcome.output}")
        return outcome.status, outcome.output, outcome.seconds


def json_lines(text: str) -> list[dict]:
    """The JSON objects printed one per line in a command's output."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def install_phase(check: Check) -> None:
    """pip-install the carried wheels into a private folder when lightly is missing (nothing to do otherwise)."""
    start = time.monotonic()
    probe = subprocess.run([sys.executable, "-c", "import lightly"], env=check.env, capture_output=True)
    wheels = sorted(WHEELS.glob("*.whl"))
    if probe.returncode == 0 or not wheels:
        reason = "lightly is importable" if probe.returncode == 0 else "no wheels in .whl (lightly stays missing)"
        check.record("install", status="skipped", reason=reason, seconds=round(time.monotonic() - start, 1))
        return
    status, _, seconds = check.run("install", [sys.executable, "-m", "pip", "install", "-q", "--no-index",
                                               "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                                               "--target", str(SITE), *map(str, wheels)])
    if status == "ok":
        check.env["PYTHONPATH"] = os.pathsep.join([str(SITE), check.env["PYTHONPATH"]])
    check.record("install", status=status, wheels=[w.name for w in wheels], seconds=seconds)


def environment_phase(check: Check) -> None:
    """The machine: CPU, GPU, driver, and the versions of Python, torch, CUDA and cuDNN."""
    values = {"python": platform.python_version(), "torch": torch.__version__, "machine": machine_info(check.device)}
    if check.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        values.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                      multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"]
            values["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    values["data_root"] = str(check.data_root) if check.data_root else None
    check.record("environment", **values)


def tests_phase(check: Check) -> None:
    """The `cuda`-marked tests (all skipped on the CPU): one line per test with its outcome."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        status, _, seconds = check.run("tests", [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs",
                                                 "tests/test_cuda.py", "tests/test_video.py",
                                                 f"--junitxml={report}"])
        cases = ET.parse(report).getroot().iter("testcase") if report.is_file() else []
        outcomes = {}
        for case in cases:
            problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
            outcome = "passed" if problem is None else problem.tag
            message = "" if problem is None else (problem.get("message") or "")[:600]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            check.record("test", name=case.get("name"), outcome=outcome, message=message,
                         seconds=float(case.get("time", 0)))
    check.record("tests", status=status, seconds=seconds, **outcomes)


def throughput_phase(part: str, extra: list[str]) -> Callable[[Check], None]:
    """benchmarks/throughput.py --part PART: each of its JSON lines becomes a result line."""
    def phase(check: Check) -> None:
        command = [sys.executable, "benchmarks/throughput.py", "--device", check.device, "--part", part, *extra]
        if check.data_root:
            command += ["--data-root", str(check.data_root)]
        status, text, seconds = check.run(f"throughput_{part}", command)
        for record in json_lines(text):
            check.record(f"throughput_{part}", **record)
        check.record(f"throughput_{part}_done", status=status, seconds=seconds)
    return phase


def flagship_phase(overrides: list[str]) -> Callable[[Check], None]:
    """A short run of the flagship recipe: its summary, kNN per epoch and training speed."""
    def phase(check: Check) -> None:
        with tempfile.TemporaryDirectory() as folder:
            settings = [f"device={check.device}", f"output_dir={folder}", "name=flagship", *overrides]
            if check.data_root:
                settings.append(f"data.root={check.data_root}")
            status, _, seconds = check.run("flagship", [sys.executable, "-m", "mochi_hvs.pretrain", "--config",
                                                        "configs/moco_mochi_hvs.yaml", "--set", *settings])
            run_dir = Path(folder) / "flagship"
            summary_file, metrics_file = run_dir / "summary.json", run_dir / "metrics.jsonl"
            summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
            metrics = json_lines(metrics_file.read_text()) if metrics_file.is_file() else []
        train = [m for m in metrics if "train/images_per_s" in m]
        speeds = sorted(m["train/images_per_s"] for m in train)
        check.record("flagship", status=status, seconds=seconds, config="configs/moco_mochi_hvs.yaml",
                     overrides=overrides, summary=summary,
                     knn_top1_by_epoch=[m["knn/top1"] for m in metrics if "knn/top1" in m],
                     median_images_per_s=speeds[len(speeds) // 2] if speeds else None,
                     last_data_wait_frac=train[-1]["train/data_wait_frac"] if train else None)
    return phase


def campaign_phase(extra: list[str]) -> Callable[[Check], None]:
    """The pending runs of the GPU campaign (configs/campaigns/gpu.yaml) that fit in the time left: each of its
    events becomes a result line; its bundle (campaign.tar.gz) and the runs' output (campaign.log) go beside."""
    def phase(check: Check) -> None:
        budget = check.remaining() - RESERVE_S - GRACE_S - CAMPAIGN_START_S
        command = [sys.executable, "-m", "mochi_hvs.study.campaign", "run", "--device", check.device, "--out",
                   str(check.out), "--budget", f"{budget:.0f}", *extra]
        if check.data_root:
            command += ["--data-root", str(check.data_root)]
        status, text, seconds = check.run("campaign", command)
        for record in json_lines(text):
            check.record("campaign", **record)
        check.record("campaign_done", status=status, seconds=seconds)
    return phase


def has_fashion_mnist(folder: Path) -> bool:
    """Whether the folder holds Fashion-MNIST's training images (gzipped or not)."""
    return any((folder / name).is_file() for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"))


def print_table(out: Path) -> None:
    """The headline figures of the results file, one line each."""
    print(f"\n{'phase':<22}{'what':<40}figure")
    for line in (out / "gpu_check.jsonl").read_text().splitlines():
        r = json.loads(line)
        phase, what, figure = r["phase"], "", ""
        if phase == "tests":
            what = r["status"]
            figure = ", ".join(f"{r[k]} {k}" for k in ("passed", "failure", "error", "skipped") if k in r)
        elif phase == "throughput_step" and r.get("part") == "step":
            what = f"{r['arch']} {r['image_size']}px b{r['batch']} {r['variant']}"
            figure = f"{r['images_per_s']} img/s, x{r.get('speed_vs_lightly', '?')} vs lightly"
        elif phase == "throughput_e2e" and r.get("part") == "e2e":
            what = f"end to end b{r['batch']} {r['path']}"
            figure = f"{r['images_per_s']} img/s, x{r.get('speed_vs_lightly', '?')} vs lightly"
        elif phase == "throughput_data" and r.get("part") in ("data", "data_wait"):
            what = f"{r['part']} {r['path']}" + (f" V={r['views']}" if "views" in r else "")
            figure = f"{r.get('images_per_s', r.get('train_images_per_s'))} img/s"
        elif r.get("part") == "notice":
            what, figure = "notice", r["lightly"]
        elif phase == "flagship" and "summary" in r:
            what = r["status"]
            by_epoch = " / ".join(f"{top1:.2f}" for top1 in r["knn_top1_by_epoch"])
            figure = (f"kNN by epoch {by_epoch or '-'} (random init {r['summary'].get('init_knn_top1', '-')}), "
                      f"{r['median_images_per_s'] or 0:.0f} img/s")
        elif phase == "campaign" and r.get("event") == "run":
            what = f"{r['study']} {r['arm']} seed {r['seed']}"
            figure = f"{r['status']}, {r['seconds']:.0f} s (estimated {r['estimate_s']} s)"
        elif phase == "campaign" and r.get("event") == "end":
            what, figure = "end", r["reason"]
        elif r.get("status") not in (None, "ok"):
            what, figure = r["status"], r.get("reason", "")
        if what:
            print(f"{phase:<22}{what:<40}{figure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda (the check) or cpu (a dry run with tiny sizes)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check"),
                        help="folder of gpu_check.jsonl and gpu_check.log (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds for all phases (default 330: with the machine's start, about 8 minutes)")
    args = parser.parse_args()
    start = time.monotonic()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False); run this on a GPU machine, "
              "or dry-run it with --device cpu", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("gpu_check.jsonl", "gpu_check.log"):
        (out / name).unlink(missing_ok=True)
    data_root = CARRIED_DATA if has_fashion_mnist(CARRIED_DATA) else None  # None: the installed copy
    check = Check(args.device, out, start + args.budget, data_root)
    check.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), check.env.get("PYTHONPATH")]))
    check.env["PYTHONUNBUFFERED"] = "1"
    sizes = SIZES[args.device]
    data = has_fashion_mnist(data_root or Path(FASHION_MNIST_ROOT))
    phases: list[tuple[str, float, bool, Callable[[Check], None]]] = [  # name, seconds it needs at least, data?
        ("install", 0, False, install_phase),
        ("environment", 0, False, environment_phase),
        ("tests", 20, False, tests_phase),
        ("throughput_step", 40, False, throughput_phase("step", sizes.step_args)),
        ("throughput_e2e", 30, True, throughput_phase("e2e", sizes.e2e_args)),
        ("flagship", 45, True, flagship_phase(sizes.flagship_overrides)),
        ("throughput_data", 25, True, throughput_phase("data", sizes.data_args)),
        ("campaign", 60, True, campaign_phase(sizes.campaign_args)),
    ]
    for name, needs, needs_data, phase in phases:
        if needs_data and not data:
            check.record(name, status="skipped", reason="Fashion-MNIST not found: run benchmarks/gpu_wheels.sh "
                                                        "and carry .gpu_data")
        elif check.remaining() - RESERVE_S < needs:
            check.record(name, status="skipped", reason=f"deadline: {check.remaining():.0f} s left, needs {needs} s")
        else:
            phase(check)
    check.record("done", seconds=round(time.monotonic() - start, 1), budget=args.budget, device=args.device)
    print_table(out)
    print(f"\nresults: {out / 'gpu_check.jsonl'}  log: {out / 'gpu_check.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
