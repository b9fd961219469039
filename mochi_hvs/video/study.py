"""The video study: for each seed, the arms image_model (the frozen image model's frame features averaged over the
clip), random_init (the video encoder untrained), temporal (trained with temporal InfoNCE alone) and distilled
(InfoNCE plus distillation of the image model), each probed for content and motion with the converged linear probe
on frozen centre-clip features. Every probe appends one line to results/<name>/results.jsonl (arm, seed, task,
metrics, command, commit, machine); lines already there are not measured again."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..config.evaluators import L2_GRID
from ..evaluation.logistic import fit_logistic
from ..provenance import append_result, provenance
from ..runtime import resolve_device
from .clips import ClipError, ClipSet, ClipSpec, check_clips, read_frames_folder
from .encoder import VideoEncoder
from .recipe import VideoRecipe
from .teacher import load_image_model
from .train import centre_clip_targets, clip_features, train_video

ARMS = ("image_model", "random_init", "temporal", "distilled")
TASKS = ("content", "motion")
RESULTS = "results.jsonl"
VAL_FRACTION = 0.1


def probe(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
          seed: int) -> dict[str, Any]:
    """Test top-1 (percent) of the converged linear probe (its L2 strength chosen on a validation split)."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    fit = fit_logistic(train.double(), train_labels, classes, L2_GRID, VAL_FRACTION, seed)
    top1 = float((fit.logits(test.double()).argmax(dim=1) == test_labels).double().mean() * 100)
    return {"top1": top1, "chance": 100 / classes, **fit.summary()}


class VideoStudy:
    """Runs the recipe's arms and seeds that results/<name>/results.jsonl lacks."""

    def __init__(self, recipe: VideoRecipe, results_root: str | Path = "results") -> None:
        self.recipe = recipe
        self.results = Path(results_root) / recipe.name / RESULTS
        self.spec = ClipSpec(recipe.data.frames, recipe.data.stride)
        self.device = resolve_device(recipe.device)
        self.provenance = provenance(self.device)
        self.image_model = ""  # the loader's line about the image model, once loaded

    def recorded(self) -> set[tuple[str, int, str]]:
        """(arm, seed, task) of every line already written."""
        if not self.results.is_file():
            return set()
        lines = [json.loads(line) for line in self.results.read_text().splitlines() if line.strip()]
        return {(r["arm"], r["seed"], r["task"]) for r in lines}

    def record(self, arm: str, seed: int, task: str, metrics: dict[str, Any], **extra: Any) -> None:
        """Append one probe's line with its provenance."""
        append_result(self.results, {"arm": arm, "seed": seed, "task": task}, metrics, {**extra, **self.provenance})

    def load_split(self, folder: str) -> ClipSet:
        """A labelled frames folder; ClipError when a task's labels are missing or its clips too short."""
        clips = read_frames_folder(folder)
        if missing := [task for task in TASKS if task not in clips.labels]:
            raise ClipError(f"{folder}/labels.csv has no {', '.join(missing)} column (the probes need "
                            f"{', '.join(TASKS)})")
        check_clips(clips, self.spec, pair=True)
        return clips

    def run(self, seeds: list[int] | None = None, arms: list[str] | None = None, log=print) -> None:
        """Measure every (arm, seed, task) not yet recorded, of the given seeds and arms (default: all)."""
        r = self.recipe
        todo = [(arm, seed) for seed in (seeds or r.seeds) for arm in ARMS if arm in (arms or ARMS)
                if any((arm, seed, task) not in self.recorded() for task in TASKS)]
        if not todo:
            log(f"{self.results}: every arm and seed is recorded")
            return
        train, test = self.load_split(r.data.train), self.load_split(r.data.test)
        teacher, found = load_image_model(r.image_model, mean=r.data.mean, std=r.data.std, device=self.device)
        log(f"image model {found}")
        self.image_model = found
        targets = {"train": teacher.clip_set_features(train), "test": teacher.clip_set_features(test)}
        labels = {split: {task: torch.from_numpy(clips.labels[task]) for task in TASKS}
                  for split, clips in (("train", train), ("test", test))}
        for arm, seed in todo:
            extra: dict[str, Any] = {"image_model": self.image_model}
            if arm == "image_model":
                features = [centre_clip_targets(targets[s], clips, self.spec) for s, clips in
                            (("train", train), ("test", test))]
            else:
                encoder = self.encoder(arm, seed, train, targets["train"], extra)
                features = [clip_features(encoder, clips, self.spec, r.data.mean, r.data.std)
                            for clips in (train, test)]
            for task in TASKS:
                if (arm, seed, task) in self.recorded():
                    continue
                metrics = probe(features[0], labels["train"][task], features[1], labels["test"][task], seed)
                self.record(arm, seed, task, metrics, **extra)
                log(f"{arm} seed {seed} {task}: top-1 {metrics['top1']:.2f}% (chance {metrics['chance']:.1f}%)")

    def encoder(self, arm: str, seed: int, train: ClipSet, targets: list[torch.Tensor],
                extra: dict[str, Any]) -> VideoEncoder:
        """The arm's video encoder: seeded and untrained (random_init), or trained; its training figures go into
        `extra`."""
        r = self.recipe
        if arm == "random_init":
            torch.manual_seed(seed)
            return VideoEncoder(r.train.width).to(self.device)
        distil = arm == "distilled"
        result = train_video(train, self.spec, r.train, seed, r.data.mean, r.data.std,
                             targets if distil else None, self.device)
        extra["train"] = {"steps": r.train.steps, "seconds": round(result.seconds, 1), "final": result.final,
                          "settings": {**asdict(r.train), "distill_weight": r.train.distill_weight if distil else 0}}
        return result.model.encoder
