"""Study recipes: arms (a pretraining recipe plus overrides), seeds, shared overrides, evaluations, baseline.

```yaml
name: fmnist_hardness
seeds: [0, 1, 2]
baseline: moco_v2
shared: [optim.epochs=20, data.train_subset=10000]        # --set style, applied to every arm
arms:
  moco_v2: {recipe: ../moco_v2.yaml}
  hvs: {recipe: ../moco_hvs.yaml, set: [hvs.num_views=4]}
  moco_v2_matched: {recipe: ../moco_v2.yaml, budget: {match: hvs, by: forwards}}
evaluations: [knn, linear]                                 # run on every finished checkpoint
references: [pixels, random_init]                          # rows beside the arms
```

Recipe paths are relative to the study file. Every arm is loaded and validated (with each seed) when the
study is, so a typo stops the study before anything runs, naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, apply_values, load_config, read_yaml, to_dict
from .floors import parse_floor

EVALUATIONS = ("knn", "linear", "semisup")
REFERENCES = ("pixels", "random_init", "supervised")
MATCH_BY = ("forwards", "seconds")
FULL_SETS = ("eval.knn_train_subset=null", "eval.knn_test_subset=null", "eval.knn_k=[20,200]")
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class BudgetSpec:
    """Give this arm the training compute of another arm instead of its own step budget."""

    match: str | None = None  # the arm whose compute this arm gets (per seed)
    by: str = "forwards"  # forwards: encoder image-forwards (compute_cost.py) | seconds: measured training time


@dataclass
class ArmSpec:
    """One arm: a pretraining recipe, overrides on top of it (after the study's shared ones) and its budget."""

    recipe: str = ""
    set: list[str] = field(default_factory=list)
    budget: BudgetSpec = field(default_factory=BudgetSpec)


@dataclass
class StudySpec:
    """A whole study."""

    name: str = ""
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str = ""
    shared: list[str] = field(default_factory=list)
    arms: dict[str, Any] = field(default_factory=dict)  # name -> ArmSpec (converted on load)
    evaluations: list[str] = field(default_factory=lambda: ["knn", "linear"])
    # --set style overrides of the evaluations' settings (eval.knn_*, eval.linear.*, eval.semisup.* except its label
    # source: semi-sup uses 1% of the labels); the default evaluates on the full labelled sets
    evaluation_set: list[str] = field(default_factory=lambda: list(FULL_SETS))
    references: list[str] = field(default_factory=lambda: ["pixels", "random_init"])  # + supervised (trained)
    output_dir: str = "runs"  # runs/<study>/<arm>/seed<k>/
    results_dir: str = "results"  # results/<study>/: JSONL, report, plots, run summaries


@dataclass(frozen=True)
class Study:
    """A loaded study: its spec and the file it came from (recipe paths are relative to it)."""

    spec: StudySpec
    path: Path

    @property
    def runs_dir(self) -> Path:
        """Where the study's training runs live."""
        return Path(self.spec.output_dir) / self.spec.name

    @property
    def report_dir(self) -> Path:
        """Where the study's results (JSONL, report, plots) live."""
        return Path(self.spec.results_dir) / self.spec.name

    def arm_config(self, arm: str, seed: int, extra: list[str] | None = None) -> Config:
        """The validated pretraining config of one (arm, seed) run, in its own folder."""
        spec: ArmSpec = self.spec.arms[arm]
        overrides = [*self.spec.shared, *spec.set, f"seed={seed}", f"output_dir={self.runs_dir / arm}",
                     f"name=seed{seed}", *(extra or [])]
        return load_config(self.path.parent / spec.recipe, overrides)


def _check(condition: bool, source: str, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: '{key}' {message}")


def load_study(path: str | Path, overrides: list[str] | None = None,
               evaluation_overrides: list[str] | None = None) -> Study:
    """Read and validate a study recipe; `overrides` are --set values added to every arm (after `shared`),
    `evaluation_overrides` --set values added to the evaluations' settings (after `evaluation_set`)."""
    path = Path(path)
    source = str(path)
    values = read_yaml(path)
    study = StudySpec()
    apply_values(study, {k: v for k, v in values.items() if k != "arms"}, "", source)
    arms = values.get("arms")
    _check(isinstance(arms, dict) and bool(arms), source, "arms", "must map arm names to {recipe: ..., set: [...]}")
    study.arms = {}
    for name, arm_values in arms.items():
        _check(isinstance(name, str) and bool(ARM_NAME.match(name)) and name not in REFERENCES
               and parse_floor(name) is None, source, f"arms.{name}", "must be a folder-safe name (letters, digits, "
               f"_ . -), not {', '.join(REFERENCES)} or a floor's label (e.g. random_init_42px)")
        spec = ArmSpec()
        apply_values(spec, arm_values if isinstance(arm_values, dict) else {"recipe": arm_values}, f"arms.{name}.",
                     source)
        study.arms[name] = spec
    study.shared = [*study.shared, *(overrides or [])]
    study.evaluation_set = [*study.evaluation_set, *(evaluation_overrides or [])]
    loaded = Study(study, path)
    validate_study(loaded, source)
    return loaded


def validate_study(loaded: Study, source: str) -> None:
    """Names, seeds, references and budgets are consistent, and every arm's config loads for every seed."""
    study = loaded.spec
    _check(bool(ARM_NAME.match(study.name)), source, "name", f"must be a folder-safe name; got {study.name!r}")
    _check(bool(study.seeds) and len(set(study.seeds)) == len(study.seeds) and min(study.seeds) >= 0, source,
           "seeds", f"must be distinct non-negative integers; got {study.seeds}")
    _check(study.baseline in study.arms, source, "baseline", f"must name one of the arms ({', '.join(study.arms)}); "
           f"got {study.baseline!r}")
    for evaluation in study.evaluations:
        _check(evaluation in EVALUATIONS, source, "evaluations", f"must be among {', '.join(EVALUATIONS)}; "
               f"got {evaluation!r}")
    for reference in study.references:
        _check(reference in REFERENCES, source, "references", f"must be among {', '.join(REFERENCES)}; "
               f"got {reference!r}")
    for name, spec in study.arms.items():
        key = f"arms.{name}"
        _check(bool(spec.recipe), source, f"{key}.recipe", "must name a pretraining recipe (relative to the study)")
        recipe = loaded.path.parent / spec.recipe
        _check(recipe.is_file(), source, f"{key}.recipe", f"not found: {recipe}")
        budget = spec.budget
        _check(budget.by in MATCH_BY, source, f"{key}.budget.by", f"must be one of {', '.join(MATCH_BY)}")
        if budget.match is not None:
            _check(budget.match in study.arms and budget.match != name, source, f"{key}.budget.match",
                   f"must name another arm; got {budget.match!r}")
            _check(study.arms[budget.match].budget.match is None, source, f"{key}.budget.match",
                   f"names {budget.match!r}, whose own budget is matched to another arm (no chains)")
        for seed in study.seeds:
            try:
                loaded.arm_config(name, seed)
            except ConfigError as err:
                raise ConfigError(f"{source}: arm {name!r} (seed {seed}): {err}") from err
    try:
        loaded.arm_config(study.baseline, study.seeds[0], study.evaluation_set)
    except ConfigError as err:
        raise ConfigError(f"{source}: evaluation_set: {err}") from err


def relocated(loaded: Study, folder: str | Path) -> Study:
    """The study with its runs in FOLDER/runs/<study>/ and its results in FOLDER/results/<study>/."""
    folder = Path(folder)
    spec = dataclasses.replace(loaded.spec, output_dir=str(folder / "runs"), results_dir=str(folder / "results"))
    return Study(spec, loaded.path)


def resolved(loaded: Study) -> dict[str, Any]:
    """The study as plain data, with each arm's full config for the first seed (written beside the results)."""
    study = loaded.spec
    return {
        "name": study.name, "description": study.description, "seeds": study.seeds, "baseline": study.baseline,
        "shared": study.shared, "evaluations": study.evaluations, "evaluation_set": study.evaluation_set,
        "references": study.references,
        "arms": {name: {**dataclasses.asdict(spec),
                        "config": to_dict(loaded.arm_config(name, study.seeds[0]))}
                 for name, spec in study.arms.items()},
    }
