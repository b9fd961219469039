"""The config's sections: dataclasses whose fields are settings (settings.py's `setting`), the sections registered by
the objectives and methods beside them, and the walk over every section of a config."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..objectives.registry import sections as objective_sections
from .continual import DATASET_CLASSES, ContinualConfig
from .evaluators import (
    DetectionSettings,
    LinearSettings,
    NucleiSettings,
    SelectSettings,
    SemisupSettings,
    TransferabilitySettings,
    TransferSettings,
)
from .settings import APPLY, REFUSE, check, section, setting

UNLABELLED_DATASETS = ("tiles", "slides")  # pretraining only: no kNN monitor, no final kNN
DATASETS = tuple(DATASET_CLASSES) + UNLABELLED_DATASETS  # the labelled ones with their classes: config/continual.py


@dataclass
class DataConfig:
    """Which images to train on and how views are made."""

    name: str = setting("fashion_mnist", "the dataset (imagefolder: a folder of class folders at data.root; tiles: "
                                         "every image under data.root, unlabelled; slides: every image under "
                                         "data.root cut into tiles by data.tile_size, tile_stride and "
                                         "magnifications)", DATASETS)
    root: str | None = setting(None, "where the dataset lives; null: its default location", resume=APPLY)
    image_size: int = setting(28, "side in px of the views", bounds=">= 8")
    augmentation: str = setting("mocov2", "mocov2: aug+, with blur; mocov2_small: aug+ without blur",
                                ("mocov2", "mocov2_small"))
    crop_scale: list[float] = setting([0.2, 1.0], "RandomResizedCrop's area range [low, high], 0 < low <= high <= 1 "
                                                  "(aug+: 0.2-1)")
    color_jitter: list[float] = setting([0.4, 0.4, 0.4, 0.1], "ColorJitter strengths [brightness, contrast, "
                                                              "saturation, hue], each >= 0 (0: not jittered), hue "
                                                              "<= 0.5; aug+: 0.4, 0.4, 0.4, 0.1")
    stain_jitter: list[float] = setting([0.0, 0.0], "stain augmentation in HED space [scale, shift]: per view, each "
                                                    "stain's density d becomes d * U(1 - scale, 1 + scale) + "
                                                    "U(-shift, shift); 0, 0: off (docs/methods/pathology.md)")
    orientation: bool = setting(False, "per view, a random quarter turn and vertical flip (for images without an up, "
                                       "such as tissue)")
    tile_size: int = setting(64, "slides: side in px of a tile (at magnification m cut at m times the side and "
                                 "reduced to it)", bounds=">= 8")
    tile_stride: int | None = setting(None, "slides: px between tiles at magnification 1 (times m at m); null: "
                                            "data.tile_size", bounds="positive")
    magnifications: list[int] = setting([1], "slides: the fields of view, each a factor of data.tile_size (e.g. [1, "
                                             "2, 4])")
    augment_on: str = setting("auto", "auto: the device for in-memory sets; device: batched, on the training device; "
                                      "cpu", ("auto", "device", "cpu"), resume=APPLY)
    train_subset: int | None = setting(None, "train on a fixed, class-balanced subset of this size (at least one "
                                             "batch)")
    workers: int = setting(2, "data-loading worker processes", bounds=">= 0", resume=APPLY)
    skip_unreadable: bool = setting(False, "undecodable image files: an error (false), or a warning and the next "
                                           "readable one", resume=APPLY)
    mean: list[float] = setting([0.485, 0.456, 0.406], "per-channel mean subtracted from the images (3 values)")
    std: list[float] = setting([0.229, 0.224, 0.225], "per-channel std the images are divided by (3 values)",
                               bounds="positive (images are divided by it)")


@dataclass
class ModelConfig:
    """Backbone and projection head."""

    arch: str = setting("resnet18", "the backbone: resnet18 | resnet34 | resnet50 | timm/<name> | torchvision/<name> "
                                    "(models/arch.py)")
    small_stem: bool = setting(False, "resnet18|34|50: a 3x3 stride-1 first conv and no max-pool (CIFAR-style)")
    arch_kwargs: dict[str, Any] = setting({}, "timm/ and torchvision/ backbones: keyword arguments of "
                                              "timm.create_model or torchvision.models.get_model (e.g. {img_size: "
                                              "28, patch_size: 4} for a ViT at 28 px)")
    frozen_patch_embed: bool = setting(False, "MoCo v3: a ViT's patch projection stays at its random initialisation")
    head: str = setting("mlp", "the projection head: mlp (MoCo-v2); mlp_bn (BYOL's: BatchNorm after the hidden "
                               "layer); linear (MoCo-v1)", ("mlp", "mlp_bn", "linear"))
    head_hidden_dim: int | None = setting(None, "the head's hidden width; null: the backbone's feature width",
                                          bounds="positive")
    feature_dim: int = setting(128, "embedding size (the head's output)", bounds="positive")
    bn_splits: int = setting(8, "BatchNorm groups across the global batch, dividing optim.batch_size into groups of "
                                "at least 8 samples; each process gets bn_splits / world_size")
    sync_bn: bool = setting(False, "under torchrun: SyncBatchNorm over all processes instead of per-process groups "
                                   "(with model.bn_splits=1)")
    init_from: str | None = setting(None, "HPT: start from this backbone (our checkpoint, an export, an official MoCo "
                                          "file, a torchvision state dict)")
    train_bn_only: bool = setting(False, "HPT-BN: the backbone is frozen except its BatchNorm layers (the head trains "
                                         "fully)")


@dataclass(frozen=True)
class LocalCrops:
    """Small crops the data path draws per image beside its views (multi-crop): how many, their side in px and the
    range of the image's area each one covers."""

    count: int
    size: int
    scale: tuple[float, float]


@dataclass
class Section:
    """A config section declared in the module of what it configures (an objective, a training method) and registered
    with it: every Config holds one under its key (`registered_sections`), in recipes, --set and stored configs.
    Config validation checks what its fields declare (`setting(default, help, choices, bounds=...)`), then calls its
    `validate` for the rules that involve other settings."""

    def validate(self, cfg: Config, source: str) -> None:
        """Reject impossible combinations of this section's values with each other and with the rest of `cfg`."""

    check = staticmethod(check)  # self.check(condition, source, key, message): the one-line error of a rule


@dataclass
class ObjectiveConfig(Section):
    """The config section of an objective (mochi_hvs/objectives/), declared in the objective's own module as its
    `section` and keyed by its section_key or name (contrastive's `moco`)."""

    name: ClassVar[str] = ""  # the section's key: its objective's section_key or name (registry.register sets it)


@dataclass
class MethodConfig(Section):
    """The config section of a training method (mochi_hvs/methods/), declared in the method's own module as its
    `config_section` and keyed by its `section` (methods/base.py's register records it in METHOD_SECTIONS): whether
    it runs, the views per image it needs from the data path, and its own validation."""

    enabled: bool = setting(False, "train with this method")
    needs_queue: ClassVar[bool] = False  # it reads the objective's memory queue (MoCHi mixes negatives from it)
    # the Needs flag of objectives without method hooks whose step reads this method's data itself (multi-crop's
    # small crops: "local_views"); None: only objectives with method hooks take it
    read_by: ClassVar[str | None] = None

    def views_per_image(self) -> int:
        """Views the data path must draw per image while this method is enabled (a pair by default)."""
        return 2

    def local_crops_per_image(self, cfg: Config) -> LocalCrops | None:
        """Small crops the data path must draw per image besides the views while this method is enabled; none by
        default."""
        return None


# The config sections of the registered training methods by key, in their hook order: methods/base.py's `register`
# records each method's `config_section` here, so that this package names no method (and imports none).
METHOD_SECTIONS: dict[str, type[MethodConfig]] = {}


def registered_sections() -> dict[str, type[Section]]:
    """The sections every Config holds besides its own fields, by key: the objectives' (objectives/registry.py), then
    the methods' in their hook order (the order to_dict stores them in, after `model`)."""
    return objective_sections() | METHOD_SECTIONS


@dataclass
class OptimConfig:
    """The optimiser (SGD or AdamW), learning-rate schedule and run length."""

    name: str = setting("sgd", "sgd | adamw (MoCo v3's, for ViTs)", ("sgd", "adamw"), resume=REFUSE)
    batch_size: int = setting(256, "global batch (summed over processes)", bounds="positive", resume=REFUSE)
    lr: float = setting(0.06, "learning rate at optim.base_batch_size", bounds="> 0")
    base_batch_size: int | None = setting(None, "null: optim.lr is used as is; else lr x batch_size / "
                                                "base_batch_size", bounds="positive")
    momentum: float = setting(0.9, "SGD's momentum", bounds="[0, 1) (SGD momentum)")
    weight_decay: float = setting(5e-4, "weight decay (decoupled, AdamW's, with adamw)", bounds=">= 0")
    epochs: int = setting(200, "run length in epochs", bounds="positive")
    steps: int | None = setting(None, "run length in optimisation steps; when set it replaces optim.epochs (HPT: "
                                      "5000)", bounds="positive")
    warmup_epochs: float = setting(0.0, "linear learning-rate warm-up from 0, in epochs (at most optim.epochs)")
    schedule: str = setting("cosine", "the learning-rate schedule", ("cosine", "step", "constant"))
    lr_milestones: list[int] = setting([120, 160], "step: epochs where the learning rate is divided by 10 "
                                                         "(positive, increasing)")
    grad_clip: float | None = setting(None, "max global gradient norm; null: not clipped", bounds="> 0")


@dataclass
class EvalConfig:
    """Evaluation: the kNN monitor used during and at the end of training (and by eval/knn.py), and the sections
    of the other evaluators (eval/linear.py, eval/semisup.py, eval/select_labels.py, eval/detection.py,
    eval/transfer.py, eval/transferability.py, eval/nuclei.py)."""

    knn_every: int = setting(0, "epochs between kNN evaluations during training (0: only at the end)", bounds=">= 0")
    knn_every_steps: int = setting(0, "steps between kNN evaluations, for runs measured in steps (0: off)",
                                   bounds=">= 0")
    knn_k: int | list[int] = setting([20, 200], "neighbours voting, one positive value or a list, at most "
                                                "eval.knn_train_subset (the largest is logged during training)")
    knn_temperature: float = setting(0.07, "temperature T of the exp(similarity / T) vote weights", bounds="> 0")
    knn_backend: str = setting("auto", "search backend: auto (Faiss when installed), faiss or torch (chunked matrix "
                                       "products)", ("auto", "faiss", "torch"))
    knn_fp16: bool = setting(False, "half-precision bank in the search (halves its memory)")
    knn_train_subset: int | None = setting(None, "class-balanced subset of the labelled training images (the bank)",
                                           bounds="positive")
    knn_test_subset: int | None = setting(None, "class-balanced subset of the test images (the queries)",
                                          bounds="positive")
    knn_baseline: bool = setting(True, "also evaluate the backbone the run started from (random init or "
                                       "init_from) at the end of training")
    knn_pixels: bool = setting(True, "also evaluate the raw pixels at the end of training (the floor)")
    analysis_every: int = setting(0, "epochs between alignment/uniformity of embeddings on a held-out batch (0: off)",
                                  bounds=">= 0")
    analysis_samples: int = setting(512, "size of that held-out batch (test split)", bounds=">= 2")
    batch_size: int = setting(512, "images per batch of feature extraction and testing", bounds="positive")
    linear: LinearSettings = section(LinearSettings)
    semisup: SemisupSettings = section(SemisupSettings)
    select: SelectSettings = section(SelectSettings)
    detection: DetectionSettings = section(DetectionSettings)
    transfer: TransferSettings = section(TransferSettings)
    transferability: TransferabilitySettings = section(TransferabilitySettings)
    nuclei: NucleiSettings = section(NucleiSettings)

    @property
    def knn_ks(self) -> list[int]:
        """The configured k values, distinct and sorted (knn_k holds one value or a list)."""
        return sorted(set(self.knn_k if isinstance(self.knn_k, list) else [self.knn_k]))


@dataclass
class CollapseConfig:
    """The collapse monitor (mochi_hvs/collapse.py): at every log point, the step's embeddings and loss are read for
    collapse; a run whose representation stays collapsed stops like a diverged one."""

    stop: bool = setting(True, "stop a run whose representation stays collapsed for `patience` checks (exit 2, "
                               "naming the step and the last good checkpoint); false: warn and keep going")
    patience: int = setting(5, "consecutive collapsed checks (one per log point) that stop the run", bounds=">= 1")
    min_std: float = setting(0.02, "a check is collapsed when the per-dimension std of the L2-normalised embeddings "
                                   "falls below this many 1 / sqrt(dim) (spread embeddings: about 1)",
                             bounds=">= 0 (0: not checked)")
    min_rank: float = setting(1.5, "... or their RankMe effective rank falls below this (one direction: 1)",
                              bounds=">= 0 (0: not checked)")
    loss_tolerance: float = setting(1e-4, "... or the loss lies within this of its uniform value (ln of the number "
                                          "of logits: every logit equal)", bounds=">= 0 (0: not checked)")


@dataclass
class Config:
    """A whole pretraining run: the run-level keys and the sections, among them the section of every registered
    objective (mochi_hvs/objectives/, under its name or section_key: contrastive's is `moco`) and training method
    (mochi_hvs/methods/, under its section's name).

    Those registered sections are not fields: __post_init__ adds them, at their defaults."""

    name: str = setting("moco_v2", "the run's name: its folder under output_dir", resume=APPLY)
    output_dir: str = setting("runs", "the folder of the runs", resume=APPLY)
    seed: int = setting(0, "seed of every random draw (initialisation, data order, views, methods)",
                        bounds="[0, 2**63)")
    objective: str = setting("contrastive", "a registered objective (mochi_hvs/objectives/): contrastive (MoCo-v2 and "
                                            "the enabled methods) | supervised (the same backbone, views and "
                                            "optimiser trained with labels: the supervised reference) | byol | twist "
                                            "| msbreg | relicv2")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", resume=APPLY)
    amp: str = setting("auto", "mixed precision: auto (bf16 on CUDA when supported, else none) | none | bf16 | fp16",
                       ("auto", "none", "bf16", "fp16"), resume=APPLY)
    channels_last: bool | None = setting(None, "channels-last memory format; null: on for CUDA unless BatchNorm is "
                                               "split on the device (train/build.py)", resume=APPLY)
    compile: bool = setting(False, "torch.compile both encoders (in place: checkpoints keep their keys)",
                            resume=APPLY)
    log_every: int = setting(20, "steps between logged metrics", bounds="positive", resume=APPLY)
    checkpoint_every: int = setting(0, "steps between mid-epoch checkpoints (0: at the end of each epoch only)",
                                    bounds=">= 0", resume=APPLY)
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    optim: OptimConfig = section(OptimConfig, resume=APPLY)
    eval: EvalConfig = section(EvalConfig, resume=APPLY)
    collapse: CollapseConfig = section(CollapseConfig, resume=APPLY)
    continual: ContinualConfig = section(ContinualConfig)
    stages: list[dict[str, Any]] = setting([], "staged (HPT) runs: each entry overrides this config for one stage "
                                               "(name, base recipe, data, optim, model...); stages run in order, "
                                               "each initialised from the previous stage's backbone")

    def __post_init__(self) -> None:
        """Each registered objective's and method's config section, at its defaults."""
        for name, registered in registered_sections().items():
            if not hasattr(self, name):
                setattr(self, name, registered())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and to_dict(self) == to_dict(other)

    @property
    def run_dir(self) -> Path:
        """Folder of this run's checkpoints, TensorBoard events and metrics."""
        return Path(self.output_dir) / self.name


def subsections(cls: type) -> dict[str, type]:
    """The sections a section holds, by key in storing order: its section fields, and for Config the registered
    sections after `model`."""
    found: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            found[f.name] = f.metadata["section"]
        if cls is Config and f.name == "model":
            found |= registered_sections()
    return found


def section_types(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, type]]:
    """(key prefix, dataclass) of a section and of every section under it, each before those it holds: ("", Config),
    ("data.", DataConfig), ..., ("eval.linear.", LinearSettings), ..."""
    yield prefix, cls
    for name, held in subsections(cls).items():
        yield from section_types(held, f"{prefix}{name}.")


def settings_of(cls: type) -> list[dataclasses.Field]:
    """The settings of one section (its fields that hold no section), in declaration order."""
    return [f for f in dataclasses.fields(cls) if "section" not in f.metadata]


def resume_policy(key: str) -> str:
    """APPLY or REFUSE for a dotted key of a stored config: the policy the setting declares, else that of the
    innermost section declaring one around it; keys no section declares a policy for (settings of objectives and
    methods, keys unknown to this version) are refused."""
    policy, cls = REFUSE, Config
    for name in key.split("."):
        if cls is Config and name in registered_sections():
            cls = registered_sections()[name]
            continue
        declared = {f.name: f for f in dataclasses.fields(cls)}
        if name not in declared:
            break
        policy = declared[name].metadata.get("resume", policy)
        cls = declared[name].metadata.get("section")
        if cls is None:
            break
    return policy


def section_values(cfg: Config) -> Iterator[tuple[str, Any]]:
    """(key prefix, section instance) of every section of a config, as section_types walks them."""
    for prefix, _ in section_types():
        node: Any = cfg
        for part in prefix.split(".")[:-1]:
            node = getattr(node, part)
        yield prefix, node


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the config (YAML- and checkpoint-safe), the objectives' and methods' sections after
    `model`."""
    values: dict[str, Any] = {}
    for name, value in dataclasses.asdict(cfg).items():
        values[name] = value
        if name == "model":
            values |= {key: dataclasses.asdict(getattr(cfg, key)) for key in registered_sections()}
    return values
