"""The `continual` section: a declared sequence of pretraining tasks run one after the other in one run, and the
sequence itself (TaskSpec), resolved from the section without reading any image."""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from typing import Any

from ..objectives.registry import OBJECTIVES, declared
from .settings import check, setting

# The datasets the toolkit reads (data.name) and their number of classes (None: known once read, an ImageFolder's)
DATASET_CLASSES: dict[str, int | None] = {
    "fashion_mnist": 10, "mnist5k": 10, "sklearn_digits": 10, "opencv_digits": 10, "cifar10": 10, "cifar100": 100,
    "stl10": 10, "imagefolder": None,
}
TASK_KEYS = ("name", "data", "root", "classes")


@dataclass(frozen=True)
class TaskSpec:
    """One task of the sequence: its name, dataset, data root, and the classes it keeps (None: all of them)."""

    name: str
    data: str
    root: str | None
    classes: tuple[int, ...] | None


@dataclass
class ContinualConfig:
    """Continual pretraining: the task sequence trained one task after the other in one run, steps_per_task steps
    each, with predictor distillation from the previous task's frozen encoder where `distill` is on
    (docs/methods/continual.md)."""

    enabled: bool = setting(False, "train on the task sequence (`split` or `tasks`) instead of data.name alone")
    split: int = setting(0, "class-incremental tasks: data.name's classes split into this many tasks of equal size "
                            "(0: `tasks` lists the tasks)", bounds=">= 0")
    class_order: list[int] = setting([], "the order of the classes the split deals out (empty: drawn from "
                                         "split_seed)")
    split_seed: int = setting(0, "seed of the drawn class order (independent of the run's seed)", bounds=">= 0")
    tasks: list[dict[str, Any]] = setting([], "the tasks in order, each {data: NAME, root: PATH, classes: [..], "
                                              "name: NAME} (root and classes optional: all classes)")
    steps_per_task: int = setting(200, "optimisation steps on each task (the learning-rate schedule restarts per "
                                       "task)", bounds="positive")
    joint: bool = setting(False, "train on the union of every task's images for tasks x steps_per_task steps (the "
                                 "joint upper bound)")
    distill: bool = setting(False, "predictor distillation (CaSSLe): a predictor maps the current projection to the "
                                   "previous task's frozen one, scored with the objective's own loss")
    distill_weight: float = setting(1.0, "factor on the distillation term", bounds="> 0")
    predictor_hidden: int = setting(2048, "hidden width of the distillation predictor (mlp_bn)", bounds="positive")

    def validate(self, cfg: Any, source: str) -> None:
        """The sequence resolves (task_specs), and distillation only where it means something."""
        if not self.enabled:
            return
        task_specs(cfg, source)
        check(not (self.joint and self.distill), source, "continual.distill",
              "has no previous task to distil from with continual.joint=true (one task: the union)")
        if self.distill:
            takers = "|".join(name for name, cls in OBJECTIVES.items() if cls.distillation)
            check(declared(cfg.objective).distillation is not None, source, "continual.distill",
                  f"needs an objective with a distillation loss (objective={takers}); objective={cfg.objective} "
                  "has none")


def _classes(values: Any, count: int | None, source: str, key: str) -> tuple[int, ...]:
    """A task's class list: non-empty, distinct integers within the dataset's classes."""
    check(isinstance(values, list) and len(values) > 0, source, key, f"must list at least one class; got {values!r}")
    check(all(isinstance(c, int) and not isinstance(c, bool) for c in values), source, key,
          f"must list class indices (integers); got {values!r}")
    check(len(set(values)) == len(values), source, key, f"lists a class twice: {values}")
    if count is not None:
        outside = [c for c in values if not 0 <= c < count]
        if outside:
            check(False, source, key, f"class {outside[0]} is out of range: the dataset has classes 0-{count - 1}")
    return tuple(values)


def _listed_task(index: int, values: Any, source: str) -> TaskSpec:
    """One entry of continual.tasks, checked."""
    key = f"continual.tasks[{index}]"
    check(isinstance(values, dict), source, key, f"must be a mapping {{data: NAME, classes: [..]}}; got {values!r}")
    unknown = [k for k in values if k not in TASK_KEYS]
    if unknown:
        check(False, source, key, f"has no key {unknown[0]!r} (keys: {', '.join(TASK_KEYS)})")
    data = values.get("data")
    close = difflib.get_close_matches(str(data), DATASET_CLASSES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    check(data in DATASET_CLASSES, source, f"{key}.data",
          f"must be one of {', '.join(DATASET_CLASSES)}; got {data!r}{hint}")
    classes = values.get("classes")
    chosen = None if classes is None else _classes(classes, DATASET_CLASSES[data], source, f"{key}.classes")
    name = values.get("name") or f"task{index}_{data}"
    return TaskSpec(str(name), data, values.get("root"), chosen)


def class_split(count: int, tasks: int, order: list[int], seed: int) -> list[tuple[int, ...]]:
    """`count` classes dealt into `tasks` consecutive groups of equal size, in `order` (empty: a permutation drawn
    from `seed`)."""
    order = list(order) or random.Random(seed).sample(range(count), count)
    size = count // tasks
    return [tuple(order[i * size:(i + 1) * size]) for i in range(tasks)]


def task_specs(cfg: Any, source: str = "<config>") -> list[TaskSpec]:
    """The task sequence continual.split or continual.tasks declares (ConfigError naming the key when it cannot)."""
    c: ContinualConfig = cfg.continual
    check(bool(c.split) != bool(c.tasks), source, "continual.tasks",
          "needs exactly one of continual.split (class-incremental splits of data.name) and continual.tasks; got "
          + ("both" if c.split else "neither"))
    if c.tasks:
        specs = [_listed_task(i, values, source) for i, values in enumerate(c.tasks)]
        names = [spec.name for spec in specs]
        check(len(set(names)) == len(names), source, "continual.tasks", f"need distinct names; got {names}")
        return specs
    count = DATASET_CLASSES[cfg.data.name]
    check(count is not None, source, "continual.split", f"needs a dataset of known classes; data.name="
          f"{cfg.data.name} is known once read: list the tasks in continual.tasks")
    check(c.split <= count and count % c.split == 0, source, "continual.split",
          f"must divide the {count} classes of {cfg.data.name} into tasks of equal size; got {c.split}")
    if c.class_order:
        _classes(c.class_order, count, source, "continual.class_order")
        check(sorted(c.class_order) == list(range(count)), source, "continual.class_order",
              f"must order every class 0-{count - 1} once; got {c.class_order}")
    groups = class_split(count, c.split, c.class_order, c.split_seed)
    return [TaskSpec(f"task{i}_classes{'-'.join(map(str, g))}", cfg.data.name, cfg.data.root, g)
            for i, g in enumerate(groups)]
