"""A weights file whose unpickling would run code (here: os.system through __reduce__) is refused by every reader,
named as such (not as a damaged file), and the code never runs."""

import os
import pickle
import re
import runpy
from pathlib import Path

import pytest
import torch

from mochi_hvs.config import load_config
from mochi_hvs.train import Trainer
from mochi_hvs.weights.checkpoint import load_checkpoint, load_file
from mochi_hvs.weights.errors import UnsafeFileError
from mochi_hvs.weights.export import export_backbone
from mochi_hvs.weights.export import main as export_main
from mochi_hvs.weights.loader import read_backbone_state

EVAL = Path(__file__).resolve().parents[1] / "eval"


class Payload:
    """Unpickling it runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_payload(path: Path, kind: str, marker: Path) -> None:
    """A backbone-looking file with the payload as its first weight: a plain pickle (detectron2's layout), a torch
    file or a legacy torch file."""
    obj = {"conv1.weight": Payload(marker), "bn1.weight": torch.ones(1)}
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": Payload(marker)}}))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=kind == "torch")


@pytest.mark.parametrize("kind", ["pickle", "torch", "legacy torch"])
def test_every_reader_refuses_a_pickle_that_would_run_code(tmp_path, capsys, kind):
    path, marker = tmp_path / "weights.pth", tmp_path / "ran"
    write_payload(path, kind, marker)
    refusal = f"^{re.escape(str(path))} is refused: reading it would run code \\(its pickle calls \\w+\\.system\\)"
    readers = [lambda: load_file(path), lambda: load_checkpoint(path), lambda: load_checkpoint(path, verify=False),
               lambda: read_backbone_state(path), lambda: read_backbone_state(path, verify=False),
               lambda: export_backbone(path, "torchvision", tmp_path / "out.pth", verify=False)]
    for read in readers:
        with pytest.raises(UnsafeFileError, match=refusal):
            read()
    knn = runpy.run_path(str(EVAL / "knn.py"))["main"]
    commands = [knn(["--checkpoint", str(path), "--no-verify", "--results", str(tmp_path / "r.jsonl")]),
                export_main(["--checkpoint", str(path), "--no-verify", "--format", "detectron2",
                             "--out", str(tmp_path / "out.pkl")])]
    assert commands == [2, 2]
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("would run code" in line and "corrupt" not in line for line in errors)
    assert not marker.exists() and not list(tmp_path.glob("out.*"))


def test_init_from_and_resume_refuse_a_pickle_that_would_run_code(tiny_overrides, tmp_path):
    path, marker = tmp_path / "weights.pth", tmp_path / "ran"
    write_payload(path, "torch", marker)
    with pytest.raises(UnsafeFileError, match="would run code"):
        Trainer(load_config(None, tiny_overrides + [f"model.init_from={path}"]), verify=False)
    with pytest.raises(UnsafeFileError, match="would run code"):
        Trainer(load_config(None, tiny_overrides), resume=path, verify=False)
    assert not marker.exists()


def test_the_same_payload_runs_when_read_without_the_safe_readers(tmp_path):
    # The check above is meaningful: unpickled the ordinary way, the file does run its command.
    path, marker = tmp_path / "weights.pth", tmp_path / "ran"
    write_payload(path, "torch", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()
