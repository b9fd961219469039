"""SHA-256 digests: inside training checkpoints, sidecars beside exports, checked by every reader."""

import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from weight_files import official_moco, our_checkpoint, small_training_checkpoint, torchvision_state

from mochi_hvs import pretrain
from mochi_hvs.config import load_config
from mochi_hvs.train import Trainer
from mochi_hvs.weights.checkpoint import load_checkpoint, load_file, save_checkpoint
from mochi_hvs.weights.errors import CheckpointError
from mochi_hvs.weights.export import export_backbone
from mochi_hvs.weights.export import main as export_main
from mochi_hvs.weights.integrity import file_digest, sidecar_line, sidecar_path, state_digest, with_digest
from mochi_hvs.weights.loader import read_backbone_state

EVAL = Path(__file__).resolve().parents[1] / "eval"


def flip_middle_byte_of(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit of the byte in the middle of `tensor`'s data inside the file (found by its bytes)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    start = data.find(raw)
    assert start > 0 and data.find(raw, start + 1) == -1
    data[start + len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_state_digest_covers_names_types_dtypes_shapes_and_bytes():
    base = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": [1, 2.5, None, "a"], "t": (1,)}
    variants = [
        {**base, "w": base["w"].reshape(3, 2)},  # same bytes, other shape
        {**base, "w": base["w"].view(torch.int32)},  # same bytes, other dtype
        {**base, "w": base["w"].clone().index_put_((torch.tensor(1), torch.tensor(1)), torch.tensor(4.5))},
        {"v": base["w"], "n": base["n"], "t": base["t"]},  # renamed key
        {**base, "n": [1, 2.5, None, "b"]},
        {**base, "n": (1, 2.5, None, "a")},  # list vs tuple
        {**base, "t": (True,)},  # 1 vs True
    ]
    digests = {state_digest(v) for v in variants}
    assert len(digests) == len(variants) and state_digest(base) not in digests
    copy = {"w": base["w"].clone(), "n": list(base["n"]), "t": tuple(base["t"])}
    assert state_digest(copy) == state_digest(base) == state_digest(with_digest(base))  # its own entry left out


def test_the_digest_inside_a_checkpoint_survives_saving_and_loading(tmp_path):
    small_training_checkpoint(tmp_path / "c.pth")
    raw = torch.load(tmp_path / "c.pth", weights_only=True)
    assert raw["sha256"] == state_digest(raw) and re.fullmatch("[0-9a-f]{64}", raw["sha256"])
    assert load_checkpoint(tmp_path / "c.pth")["global_step"] == 10


def test_a_byte_flipped_in_a_tensor_is_refused_by_every_reader(tmp_path, capsys):
    path = tmp_path / "last.pth"
    small_training_checkpoint(path)
    name = "encoder_q.backbone.layer2.0.conv1.weight"
    original = load_file(path)["model"][name]
    flip_middle_byte_of(path, original)
    failed = f"^{re.escape(str(path))} failed its integrity check: its SHA-256 .* --no-verify loads it anyway$"
    with pytest.raises(CheckpointError, match=failed):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=failed):
        read_backbone_state(path)
    knn = runpy.run_path(str(EVAL / "knn.py"))["main"]
    assert knn(["--checkpoint", str(path), "--results", str(tmp_path / "r.jsonl")]) == 2
    assert "failed its integrity check" in error_line(capsys)
    assert export_main(["--checkpoint", str(path), "--format", "torchvision", "--out", str(tmp_path / "b.pth")]) == 2
    assert "failed its integrity check" in error_line(capsys)
    assert not (tmp_path / "b.pth").exists() and not (tmp_path / "r.jsonl").exists()
    # Without the check, the damage goes unnoticed: the file loads, with one weight changed.
    changed = load_checkpoint(path, verify=False)["model"][name]
    assert (changed != original).sum() == 1


@pytest.mark.parametrize(("fmt", "suffix"), [("torchvision", ".pth"), ("detectron2", ".pkl")])
def test_exports_get_a_sha256sum_sidecar_that_readers_check(tmp_path, fmt, suffix):
    expected = our_checkpoint(tmp_path / "last.pth")
    out = tmp_path / f"backbone{suffix}"
    export_backbone(tmp_path / "last.pth", fmt, out)
    assert sidecar_path(out).read_text() == f"{file_digest(out)}  {out.name}\n"
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "-c", sidecar_path(out).name], cwd=tmp_path,
                              capture_output=True).returncode == 0
    state, _ = read_backbone_state(out)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    flip_middle_byte_of(out, expected["layer3.1.conv2.weight"])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(out))} failed its integrity check: .* recorded in "
                                              f"{out.name}.sha256"):
        read_backbone_state(out)
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        export_backbone(out, "torchvision", tmp_path / "again.pth")  # export checks its input too
    export_backbone(tmp_path / "last.pth", fmt, out)  # writing it again replaces the digest with the new one
    read_backbone_state(out)


def test_a_malformed_sidecar_is_an_error_naming_it(tmp_path):
    our_checkpoint(tmp_path / "last.pth")
    out = tmp_path / "backbone.pth"
    export_backbone(tmp_path / "last.pth", "torchvision", out)
    sidecar_path(out).write_text("not a digest\n")
    with pytest.raises(CheckpointError, match=f"{re.escape(str(sidecar_path(out)))} is not a sha256sum line"):
        read_backbone_state(out)


def test_a_file_from_elsewhere_without_a_digest_loads_with_a_note(tmp_path, capsys):
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    official_moco(path, "resnet18")
    note = "no SHA-256 digest (a file from elsewhere, read as data): not verified"
    _, meta = read_backbone_state(path)
    assert meta.source == "moco" and meta.digest == note and meta.summary().endswith(f"; {note}")
    assert export_main(["--checkpoint", str(path), "--out", str(tmp_path / "r18.safetensors")]) == 0
    assert note in capsys.readouterr().out
    assert read_backbone_state(tmp_path / "r18.safetensors")[1].digest == "SHA-256 verified"  # the export has one
    # A digest recorded by the user (as `sha256sum FILE > FILE.sha256` writes it) is checked.
    sidecar_path(path).write_text(sidecar_line(path))
    assert read_backbone_state(path)[1].digest == "SHA-256 verified"
    sidecar_path(path).write_text(sidecar_line(tmp_path / "r18.safetensors").replace("r18.safetensors", path.name))
    with pytest.raises(CheckpointError, match=f"failed its integrity check: .* recorded in {path.name}.sha256"):
        read_backbone_state(path)


def test_our_files_without_their_digest_are_refused_naming_the_escape(tmp_path):
    small_training_checkpoint(tmp_path / "full.pth")
    stripped = {k: v for k, v in torch.load(tmp_path / "full.pth", weights_only=True).items() if k != "sha256"}
    path = tmp_path / "before_digests.pth"
    torch.save(stripped, path)
    refusal = (f"^{re.escape(str(path))} has no integrity digest \\(no 'sha256' entry inside, no {path.name}.sha256 "
               f"beside it\\); --no-verify loads it anyway, or record one with `sha256sum {path.name} > "
               f"{path.name}.sha256`$")
    with pytest.raises(CheckpointError, match=refusal):
        read_backbone_state(path)
    assert read_backbone_state(path, verify=False)[1].digest == "digest not checked (--no-verify)"
    our_checkpoint(tmp_path / "last.pth")
    export_backbone(tmp_path / "last.pth", "safetensors", tmp_path / "b.safetensors")
    with safetensors.safe_open(tmp_path / "b.safetensors", "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = {k: v for k, v in handle.metadata().items() if k != "sha256"}
    safetensors.torch.save_file(tensors, tmp_path / "b.safetensors", metadata)
    sidecar_path(tmp_path / "b.safetensors").unlink()
    with pytest.raises(CheckpointError, match="b.safetensors has no integrity digest"):
        read_backbone_state(tmp_path / "b.safetensors")


def test_resume_checks_the_digest_unless_told_not_to(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg)
    state = torch.load(trainer.state.save(), weights_only=True)
    trainer.close()
    del state["sha256"]
    legacy = tmp_path / "before_digests.pth"  # a checkpoint written before checkpoints carried a digest
    torch.save(state, legacy)
    with pytest.raises(CheckpointError, match="before_digests.pth has no integrity digest"):
        Trainer(tiny_cfg, resume=legacy)
    assert Trainer(tiny_cfg, resume=legacy, verify=False).position.global_step == 0


def test_init_from_checks_our_digest_and_notes_a_file_from_elsewhere(tiny_overrides, tmp_path, capsys):
    path = tmp_path / "r18.pth"
    expected = torchvision_state(path)
    trainer = Trainer(load_config(None, tiny_overrides + [f"model.init_from={path}"]))
    assert torch.equal(trainer.model.encoder_q.backbone.conv1.weight.detach(), expected["conv1.weight"])
    trainer.close()
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("init_from"))
    assert line == (f"init_from {path}: a torch state dict: resnet18 backbone ({len(expected)} tensors); ignored "
                    f"fc.* (2); no SHA-256 digest (a file from elsewhere, read as data): not verified; loaded "
                    f"{len(expected)} backbone tensors")
    ours = tmp_path / "last.pth"
    backbone = our_checkpoint(ours)
    saved = torch.load(ours, weights_only=True)
    saved["model"]["encoder_k.backbone.layer1.0.conv1.weight"] += 1.0  # the query's bytes alone in the file
    save_checkpoint(saved, ours)
    flip_middle_byte_of(ours, backbone["layer1.0.conv1.weight"])
    cfg = load_config(None, tiny_overrides + [f"model.init_from={ours}", "name=ours"])
    with pytest.raises(CheckpointError, match="last.pth failed its integrity check"):
        Trainer(cfg)
    Trainer(cfg, verify=False).close()


def test_pretrain_no_verify_reaches_the_trainer(tmp_path, monkeypatch):
    seen = []

    class Recorder:
        def __init__(self, cfg, resume, verify):
            seen.append(verify)

        def fit(self):
            return {"steps": 0, "train_seconds": 0.0, "knn_k": 20, "knn_top1": 0.0}

    monkeypatch.setattr(pretrain, "Trainer", Recorder)
    for extra in ([], ["--no-verify"]):
        assert pretrain.main(["--set", f"output_dir={tmp_path}", *extra]) == 0
    assert seen == [True, False]
