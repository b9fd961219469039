"""Video SSL (mochi_hvs/video): clip sampling, the generated moving clips' labels against the motion drawn, frames
folders on disk, the frozen image model, the objective against an explicit computation, a short learning check, the
study end to end and the one-line errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mochi_hvs.errors import ConfigError
from mochi_hvs.video import study as video_study
from mochi_hvs.video.__main__ import main as video_main
from mochi_hvs.video.clips import (
    ClipError,
    ClipSet,
    ClipSpec,
    centre_batch,
    check_clips,
    normalised,
    pair_batch,
    read_frames_folder,
    write_frames_folder,
)
from mochi_hvs.video.encoder import VideoEncoder
from mochi_hvs.video.moving import DIRECTIONS, MovingSpec, moving_clips
from mochi_hvs.video.objective import VideoSsl, distillation_loss, temporal_info_nce
from mochi_hvs.video.recipe import VideoTrain, load_recipe
from mochi_hvs.video.teacher import load_image_model
from mochi_hvs.video.train import clip_features, gather_targets, train_video

MEAN, STD = [0.286] * 3, [0.353] * 3


def numbered_videos(count: int, length: int) -> ClipSet:
    """Videos whose every pixel of frame t of video v is 10 * v + t: a frame says where it came from."""
    values = 10 * np.arange(count)[:, None] + np.arange(length)[None, :]
    videos = [np.broadcast_to(row[:, None, None, None], (length, 4, 4, 1)).astype(np.uint8).copy() for row in values]
    return ClipSet(videos, [f"v{v}" for v in range(count)])


@pytest.fixture(scope="module")
def small_clips() -> ClipSet:
    return moving_clips(48, "train", MovingSpec(), seed=0)


@pytest.fixture(scope="module")
def image_model_file(tmp_path_factory):
    """A torchvision ResNet-18 state dict, as from elsewhere (the loader reads it as a ResNet, not verified)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    path = tmp_path_factory.mktemp("image_model") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------- clip sampling

def test_clip_indices_follow_frames_and_stride():
    spec = ClipSpec(frames=4, stride=3)
    assert spec.span == 10
    np.testing.assert_array_equal(spec.indices(2), [2, 5, 8, 11])
    assert spec.centre_start(20) == 5  # (20 - 10) // 2
    frames, indices = centre_batch(numbered_videos(2, 20), np.array([1]), spec)
    np.testing.assert_array_equal(indices[0], [5, 8, 11, 14])
    np.testing.assert_array_equal(frames[0, :, 0, 0, 0].numpy(), [15, 18, 21, 24])  # video 1's frames 5, 8, ...


def test_pair_clips_come_from_one_video_at_different_times():
    clips, spec = numbered_videos(6, 20), ClipSpec(frames=4, stride=2)
    videos = np.array([3, 0, 5])
    frames, indices = pair_batch(clips, videos, spec, np.random.default_rng(7))
    assert frames.shape == (3, 2, 4, 1, 4, 4) and indices.shape == (3, 2, 4)
    for row, video in enumerate(videos):
        first, second = indices[row]
        assert first[0] != second[0]  # different times
        for clip in range(2):
            np.testing.assert_array_equal(np.diff(indices[row, clip]), 2)
            assert 0 <= indices[row, clip, 0] and indices[row, clip, -1] < 20
            expected = 10 * video + indices[row, clip]  # the pixels say: this video, these frames
            np.testing.assert_array_equal(frames[row, clip, :, 0, 0, 0].numpy(), expected.numpy())


def test_pair_sampling_is_seeded_and_covers_the_starts():
    clips, spec = numbered_videos(1, 9), ClipSpec(frames=3, stride=2)  # starts 0..4
    draw = [pair_batch(clips, np.array([0]), spec, np.random.default_rng([5, k]))[1] for k in range(200)]
    again = [pair_batch(clips, np.array([0]), spec, np.random.default_rng([5, k]))[1] for k in range(200)]
    assert all(torch.equal(a, b) for a, b in zip(draw, again, strict=True))
    starts = {int(d[0, c, 0]) for d in draw for c in range(2)}
    assert starts == {0, 1, 2, 3, 4}


def test_clip_longer_than_the_video_is_one_clear_error():
    with pytest.raises(ClipError, match=r"video v0 has 6 frames; a clip of 4 frames at stride 2 needs 7"):
        check_clips(numbered_videos(1, 6), ClipSpec(frames=4, stride=2), pair=False)
    with pytest.raises(ClipError, match=r"two clips at different times of 4 frames at stride 2 need 8"):
        check_clips(numbered_videos(1, 7), ClipSpec(frames=4, stride=2), pair=True)


# ------------------------------------------------------------------------------------ generated moving clips

def centroid(frame: np.ndarray) -> np.ndarray:
    weights = frame.astype(np.float64)
    ys, xs = np.indices(frame.shape)
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


def test_moving_clips_labels_match_the_motion_drawn(small_clips):
    spec = MovingSpec()
    steps = list(DIRECTIONS.values())
    assert set(small_clips.labels["motion"]) == set(range(8))  # every direction drawn in 48 clips
    for video, motion in zip(small_clips.videos, small_clips.labels["motion"], strict=True):
        path = np.array([centroid(frame[..., 0]) for frame in video])
        displacement = path[-1] - path[0]
        np.testing.assert_allclose(displacement, np.array(steps[motion]) * spec.speed * (spec.frames - 1), atol=1e-6)
        np.testing.assert_allclose(np.diff(path, axis=0), np.tile(steps[motion], (spec.frames - 1, 1)), atol=1e-6)


def test_moving_clips_content_and_determinism(small_clips):
    again = moving_clips(48, "train", MovingSpec(), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(small_clips.videos, again.videos, strict=True))
    other = moving_clips(48, "train", MovingSpec(), seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(small_clips.videos, other.videos, strict=True))
    assert small_clips.labels["content"].min() >= 0 and small_clips.labels["content"].max() <= 9
    test = moving_clips(8, "test", MovingSpec(), seed=0)
    assert not np.array_equal(test.videos[0], small_clips.videos[0])  # test items come from the test split


def test_moving_clips_that_cannot_fit_are_refused():
    with pytest.raises(ClipError, match="needs a canvas of at least 27 px; got 24"):
        MovingSpec(canvas=24, item=16, frames=12, speed=1).check()


# ------------------------------------------------------------------------------------------------ frames folder

def test_frames_folder_round_trip(tmp_path, small_clips):
    subset = ClipSet(small_clips.videos[:5], small_clips.names[:5],
                     {k: v[:5] for k, v in small_clips.labels.items()})
    back = read_frames_folder(write_frames_folder(subset, tmp_path / "clips"))
    assert back.names == subset.names
    assert all(np.array_equal(a, b) for a, b in zip(subset.videos, back.videos, strict=True))
    for task in ("content", "motion"):
        np.testing.assert_array_equal(back.labels[task], subset.labels[task])
    rgb = ClipSet([np.random.default_rng(0).integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)], ["c"])
    np.testing.assert_array_equal(read_frames_folder(write_frames_folder(rgb, tmp_path / "rgb")).videos[0],
                                  rgb.videos[0])


def test_frames_folder_errors(tmp_path):
    with pytest.raises(ClipError, match="not found"):
        read_frames_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipError, match="holds no clip folder"):
        read_frames_folder(tmp_path / "empty")
    (tmp_path / "empty" / "clip0").mkdir()
    with pytest.raises(ClipError, match=r"clip folder .*clip0 holds no frame"):
        read_frames_folder(tmp_path / "empty")


# ---------------------------------------------------------------------------------- objective and distillation

def test_losses_against_an_explicit_computation():
    torch.manual_seed(1)
    a, b, t = torch.randn(5, 7), torch.randn(5, 7), 0.2
    a64, b64 = a.double(), b.double()
    terms = []
    for x, y in ((a64, b64), (b64, a64)):
        for i in range(5):
            sims = [float(x[i] @ y[j] / (x[i].norm() * y[j].norm())) / t for j in range(5)]
            terms.append(-sims[i] + math.log(sum(math.exp(s) for s in sims)))
    assert float(temporal_info_nce(a, b, t)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    p, q = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    explicit = np.mean([2 - 2 * float(p[i, j].double() @ q[i, j].double()) / float(p[i, j].norm() * q[i, j].norm())
                        for i in range(3) for j in range(4)])
    assert float(distillation_loss(p, q)) == pytest.approx(explicit, rel=1e-5)


def test_total_loss_is_infonce_plus_weighted_distillation():
    torch.manual_seed(0)
    model = VideoSsl(VideoEncoder(4), projection_dim=8, target_width=5).eval()
    pairs, targets = torch.randn(3, 2, 4, 3, 16, 16), torch.randn(3, 2, 4, 5)
    with torch.no_grad():
        out = model.losses(pairs, targets, 0.1, distill_weight=0.5)
        steps = model.encoder.time_steps(pairs.flatten(0, 1))
        z = model.projector(steps.mean(dim=2)).view(3, 2, -1)
        predicted = model.distill_head(steps.transpose(1, 2).reshape(-1, steps.shape[1])).view(6, 4, 5)
    assert float(out["contrastive"]) == pytest.approx(float(temporal_info_nce(z[:, 0], z[:, 1], 0.1)), rel=1e-6)
    assert float(out["distill"]) == pytest.approx(float(distillation_loss(predicted, targets.flatten(0, 1))),
                                                  rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(out["contrastive"] + 0.5 * out["distill"]), rel=1e-6)


def test_distillation_target_is_frozen(image_model_file, small_clips):
    teacher, found = load_image_model(image_model_file, mean=MEAN, std=STD)
    assert "resnet18" in found
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    assert not teacher.training and not teacher.backbone.training
    assert not any(p.requires_grad for p in teacher.parameters())
    spec, clips = ClipSpec(4), ClipSet(small_clips.videos[:6], small_clips.names[:6])
    frames, indices = pair_batch(clips, np.arange(6), spec, np.random.default_rng(0))
    targets = teacher(frames.flatten(0, 2)).view(6, 2, 4, -1)  # through the teacher, inside the step's graph
    assert not targets.requires_grad
    table = teacher.clip_set_features(clips)  # the cached per-frame targets are the same features
    torch.testing.assert_close(gather_targets(table, np.arange(6), indices), targets, rtol=1e-4, atol=1e-4)
    model = VideoSsl(VideoEncoder(4), 8, teacher.width)
    model.losses(normalised(frames, torch.tensor(MEAN), torch.tensor(STD)), targets, 0.1, 1.0)["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert model.distill_head[0].weight.grad is not None
    train_video(clips, spec, VideoTrain(width=4, steps=3, batch_size=4), 0, MEAN, STD, table)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BatchNorm statistics too


# ------------------------------------------------------------------------------------------------------ learning

def test_training_lowers_the_contrastive_loss_on_held_batch(small_clips):
    """About 20 s on one thread: 40 steps of 16 videos against 1 step, scored on the same held-out pairs."""
    spec, settings = ClipSpec(8), VideoTrain(width=8, steps=40, batch_size=16)
    held = moving_clips(32, "test", MovingSpec(), seed=3)
    frames, _ = pair_batch(held, np.arange(32), spec, np.random.default_rng(0))
    pairs = normalised(frames, torch.tensor(MEAN), torch.tensor(STD))

    def held_loss(steps: int) -> float:
        model = train_video(small_clips, spec, dataclasses.replace(settings, steps=steps), 0, MEAN, STD).model
        with torch.no_grad():
            return float(model.eval().losses(pairs, None, settings.temperature, 0.0)["contrastive"])

    assert held_loss(40) < 0.8 * held_loss(1)


# ------------------------------------------------------------------------------------------- study end to end

@pytest.mark.slow
def test_study_end_to_end_from_frames_folders(tmp_path, image_model_file, monkeypatch):
    root = tmp_path / "clips"
    for split, count in (("train", 120), ("test", 40)):
        write_frames_folder(moving_clips(count, split, MovingSpec(), seed=0), root / split)
    recipe = tmp_path / "video.yaml"
    recipe.write_text(f"name: tiny\nimage_model: {image_model_file}\nseeds: [0]\n"
                      f"data: {{train: {root / 'train'}, test: {root / 'test'}}}\n"
                      "train: {width: 4, steps: 2, batch_size: 8}\n")
    monkeypatch.chdir(tmp_path)
    assert video_main(["--config", str(recipe)]) == 0
    lines = [json.loads(line) for line in (tmp_path / "results/tiny/results.jsonl").read_text().splitlines()]
    assert {(r["arm"], r["task"]) for r in lines} == {(a, t) for a in ("image_model", "random_init", "temporal",
                                                                       "distilled") for t in ("content", "motion")}
    assert all({"command", "commit", "machine", "seed"} <= set(r) for r in lines)
    assert all(0 <= r["metrics"]["top1"] <= 100 for r in lines)
    report = (tmp_path / "results/tiny/REPORT.md").read_text()
    assert "distilled − temporal" in report and "results.jsonl" in report
    assert video_main(["--config", str(recipe)]) == 0  # everything recorded: nothing measured again
    assert len((tmp_path / "results/tiny/results.jsonl").read_text().splitlines()) == len(lines)


def labelled_clips(count: int, seed: int) -> ClipSet:
    """Random 10-frame videos of 16 px with random content and motion labels: enough for the study's path."""
    rng = np.random.default_rng(seed)
    videos = [rng.integers(0, 256, (10, 16, 16, 1), dtype=np.uint8) for _ in range(count)]
    labels = {"content": rng.integers(0, 2, count), "motion": rng.integers(0, 2, count)}
    return ClipSet(videos, [f"v{i}" for i in range(count)], labels)


def test_device_setting_reaches_training_the_teacher_and_the_features(tmp_path, image_model_file, monkeypatch):
    """The recipe's `device` goes through runtime.resolve_device (here stood in for, to see its answer reach every
    module: a GPU is not needed to check the wiring), and the records name the resolved device's machine."""
    for split, count in (("train", 16), ("test", 8)):
        write_frames_folder(labelled_clips(count, seed=len(split)), tmp_path / split)
    recipe = tmp_path / "video.yaml"
    recipe.write_text(f"name: tiny\nimage_model: {image_model_file}\nseeds: [0]\ndevice: cuda:3\n"
                      f"data: {{train: {tmp_path / 'train'}, test: {tmp_path / 'test'}, frames: 4}}\n"
                      "train: {width: 4, steps: 1, batch_size: 4}\n")
    asked, seen = [], []
    monkeypatch.setattr(video_study, "resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    monkeypatch.setattr(video_study, "provenance", lambda device: seen.append(("provenance", device)) or {})
    real_teacher, real_train, real_features = (video_study.load_image_model, video_study.train_video,
                                               video_study.clip_features)

    def teacher(*args, **kwargs):
        model, found = real_teacher(*args, **kwargs)
        seen.append(("teacher", model.mean.device, kwargs["device"]))
        return model, found

    def train(*args):
        seen.append(("train", args[-1]))
        return real_train(*args)

    def features(encoder, *args):
        seen.append(("features", next(encoder.parameters()).device))
        return real_features(encoder, *args)

    monkeypatch.setattr(video_study, "load_image_model", teacher)
    monkeypatch.setattr(video_study, "train_video", train)
    monkeypatch.setattr(video_study, "clip_features", features)
    study = video_study.VideoStudy(load_recipe(recipe), tmp_path / "results")
    study.run(log=lambda line: None)
    cpu = torch.device("cpu")
    assert asked == ["cuda:3"] and study.device == cpu
    assert seen[:2] == [("provenance", cpu), ("teacher", cpu, cpu)]
    assert sorted(set(seen[2:]), key=str) == [("features", cpu), ("train", cpu)]
    assert [entry[0] for entry in seen[2:]].count("train") == 2  # temporal and distilled
    assert len((tmp_path / "results" / "tiny" / "results.jsonl").read_text().splitlines()) == 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is")
def test_a_gpu_asked_for_where_there_is_none_is_one_error_line(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "video.yaml"
    recipe.write_text("device: cuda\n")
    monkeypatch.chdir(tmp_path)
    assert video_main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: device=cuda was requested but no CUDA GPU is available here (torch.cuda.is_available() is "
                   "False); use --set device=cpu or device=auto"]


@pytest.mark.cuda
def test_training_and_features_run_on_a_gpu(image_model_file):
    """A few distilled steps on cuda: the teacher's targets, the modules and the step on the GPU, the features back
    on the CPU; finite losses, and the first step's loss as on the CPU (to 1%: cuDNN may convolve in TF32)."""
    clips, spec, cuda = labelled_clips(12, seed=0), ClipSpec(4), torch.device("cuda")
    settings = VideoTrain(width=4, steps=3, batch_size=6)
    teacher, _ = load_image_model(image_model_file, mean=MEAN, std=STD, device=cuda)
    targets = teacher.clip_set_features(clips)
    assert all(t.device.type == "cuda" for t in targets)
    result = train_video(clips, spec, settings, 0, MEAN, STD, targets, cuda)
    assert all(p.device.type == "cuda" for p in result.model.parameters())
    assert all(math.isfinite(value) for value in result.final.values())
    features = clip_features(result.model.encoder, clips, spec, MEAN, STD)
    assert features.device.type == "cpu" and features.shape == (12, 16) and torch.isfinite(features).all()
    one = dataclasses.replace(settings, steps=1)
    on_cpu = train_video(clips, spec, one, 0, MEAN, STD, [t.cpu() for t in targets]).final["loss"]
    assert train_video(clips, spec, one, 0, MEAN, STD, targets, cuda).final["loss"] == pytest.approx(on_cpu, rel=1e-2)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "video").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_video_recipes_load(path):
    recipe = load_recipe(path)
    assert recipe.data.frames <= MovingSpec().frames - 1  # two clips at different times fit the generated videos


def test_recipe_errors(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "video.yaml"
    recipe.write_text("trian: {steps: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        load_recipe(recipe)
    recipe.write_text("train: {batch_size: 1}\n")
    with pytest.raises(ConfigError, match="at least 2"):
        load_recipe(recipe)
    recipe.write_text(f"data: {{train: {tmp_path / 'none'}}}\n")
    monkeypatch.chdir(tmp_path)  # results/<name>/ of its own: nothing recorded yet
    assert video_main(["--config", str(recipe), "--set", "train.steps=1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: frames folder {tmp_path / 'none'} not found")
