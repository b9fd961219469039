"""The evaluators' config sections (eval.linear, eval.semisup, eval.select, eval.detection, eval.transfer,
eval.transferability, eval.nuclei): each field defined once, with its default, a one-line help and, where it has them,
its choices and bounds; `--help`, the configuration reference and config validation read them from here."""

from __future__ import annotations

from dataclasses import dataclass

from .settings import setting

SCHEDULES = ("step", "cosine")
SCHEDULE_HELP = "lr / 10 at 60% and 80% of training (step) or cosine decay"
LINEAR_MODES = ("lbfgs", "classic", "sklearn")
DETECTION_NORMS = ("sync", "frozen")
# semi-supervised: exactly one of them
LABEL_SOURCES = ("label_fraction", "labels_per_class", "split_file", "random_labels")
TRANSFER_TASKS = ["fashion_mnist", "mnist5k", "sklearn_digits", "opencv_digits"]  # the offline tasks



@dataclass
class SgdSettings:
    """The optimisation settings the linear probe and fine-tuning share."""

    momentum: float = setting(0.9, "SGD momentum", bounds="[0, 1)")
    weight_decay: float = setting(0.0, "SGD weight decay", bounds=">= 0")
    batch_size: int = setting(256, "mini-batch size", bounds="positive")
    schedule: str = setting("step", SCHEDULE_HELP, SCHEDULES)
    seed: int = setting(0, "seed of subsets, shuffling, augmentation and head initialisation", bounds="[0, 2**63)")


# L2 strengths the converged probe tries: half-decades from 1e-1 to 1e-6 (on standardised features; 1e-5 is
# scikit-learn's default C = 1 at 100,000 training rows)
L2_GRID = [float(f"{10 ** (-k / 2):.3g}") for k in range(2, 13)]


@dataclass
class LinearSettings(SgdSettings):
    """Linear-probe protocol. The default (lbfgs) fits L2-regularised logistic regression to convergence on cached
    frozen features, its L2 strength chosen on a validation split of the training set; classic is MoCo's protocol
    (SGD lr 30, momentum 0.9, no weight decay, 100 epochs over augmented images) for ImageNet-scale reproduction."""

    mode: str = setting("lbfgs", "lbfgs: features computed once, standardised; multinomial logistic regression "
                        "fitted by full-batch L-BFGS to eval.linear.tolerance, its L2 strength the best of "
                        "eval.linear.l2_grid on a validation split; classic: MoCo's protocol, a linear layer trained "
                        "by SGD on augmented images through the frozen backbone every epoch; sklearn: scikit-learn's "
                        "logistic regression on standardised features at C = eval.linear.sklearn_c", LINEAR_MODES)
    l2_grid: list[float] = setting(L2_GRID, "lbfgs: L2 strengths lambda tried (objective: mean cross-entropy + "
                                            "lambda / 2 * ||W||^2 on standardised features; scikit-learn's C = 1 / "
                                            "(lambda * rows)), each positive; a single value fits without a validation "
                                            "split")
    val_fraction: float = setting(0.1, "lbfgs: share of the training images (stratified, seeded) that scores each "
                                       "L2 strength; the chosen one is then refitted on all training images",
                                  bounds="(0, 1)")
    max_iter: int = setting(1000, "lbfgs: L-BFGS iterations per fit at most", bounds="positive")
    tolerance: float = setting(1e-4, "lbfgs: a fit has converged when no gradient entry exceeds this (in the "
                                     "solver's preconditioned coordinates)", bounds="> 0")
    epochs: int = setting(100, "classic: training epochs", bounds="positive")
    lr: float = setting(30.0, "classic: SGD learning rate", bounds="> 0")
    train_subset: int | None = setting(None, "class-balanced subset of the labelled training images", bounds="positive")
    test_subset: int | None = setting(None, "class-balanced subset of the test images", bounds="positive")
    sklearn_c: float = setting(1.0, "sklearn: inverse L2 strength of the logistic regression", bounds="> 0")
    sklearn_max_iter: int = setting(1000, "sklearn: iterations of the logistic regression solver", bounds="positive")


@dataclass
class SemisupSettings(SgdSettings):
    """Which labels to use and how to fine-tune: SwAV's 20 epochs and backbone lr 0.01, with a gentler head (lr 0.05
    after a one-epoch linear warm-up, then cosine decay). SwAV's head lr 0.2 with step decay from the first step
    made the fine-tuning unstable on short pretraining runs (the loss jumped at the decays and 10% labels ended
    below random init), hence these defaults; `lr_head=0.2 warmup_epochs=0 schedule=step` is SwAV's protocol."""

    label_fraction: float | None = setting(None, "fraction of each class to label, e.g. 0.01 or 0.1 (stratified)",
                                           bounds="(0, 1]")
    labels_per_class: int | None = setting(None, "labelled images per class", bounds="positive")
    split_file: str | None = setting(None, "file listing the labelled images, one per line: file names (e.g. the "
                                           "ImageNet 1%/10% lists) or, for in-memory sets, indices (e.g. "
                                           "written by mochi-select)")
    random_labels: int | None = setting(None, "this many labelled images drawn uniformly at random, without class "
                                              "balance (seeded): the baseline of mochi-select's label sets",
                                        bounds="positive")
    epochs: int = setting(20, "fine-tuning epochs", bounds="positive")
    lr_backbone: float = setting(0.01, "SGD learning rate of the backbone", bounds=">= 0")
    lr_head: float = setting(0.05, "SGD learning rate of the new linear head", bounds="> 0")
    warmup_epochs: float = setting(1.0, "linear learning-rate warm-up from 0, in epochs (at most "
                                        "eval.semisup.epochs)")
    schedule: str = setting("cosine", SCHEDULE_HELP, SCHEDULES)
    test_subset: int | None = setting(None, "class-balanced subset of the test images (default: all of them)",
                                      bounds="positive")

    def label_sources(self) -> list[str]:
        """The names of the label-source settings that are set (a valid evaluation has exactly one)."""
        return [name for name in LABEL_SOURCES if getattr(self, name) is not None]


@dataclass
class SelectSettings:
    """Unsupervised selection of the images to label (USL, Wang et al., ECCV 2022): k-means on the self-supervised
    features into `budget` clusters, from each the densest image, pushed apart by a diversity regulariser.
    Defaults: k = 20 as in the paper; the regulariser's lambda, alpha, momentum and iterations are the authors'."""

    budget: int | None = setting(None, "images to select, one per k-means cluster (required; --budget N)",
                                 bounds="positive")
    pool: int | None = setting(None, "select among this many training images drawn uniformly at random (seeded, "
                                     "no labels); default: all of them", bounds="positive")
    knn_k: int = setting(20, "neighbours of the density estimate: 1 / mean squared distance to the k nearest",
                         bounds="positive")
    kmeans_iterations: int = setting(100, "Lloyd iterations of each k-means run", bounds="positive")
    restarts: int = setting(3, "k-means runs from different initialisations; the best objective is kept",
                            bounds="positive")
    reg_lambda: float = setting(0.5, "weight of the diversity regulariser (0: the densest image of each cluster)",
                                bounds=">= 0")
    reg_alpha: float = setting(0.5, "regulariser: sum over the picks of the other clusters of 1 / squared "
                                    "distance^alpha", bounds="> 0")
    reg_momentum: float = setting(0.9, "weight of the previous iterations in the regulariser's moving average",
                                  bounds="[0, 1)")
    iterations: int = setting(10, "selection rounds; each recomputes the regulariser from the last picks (1: none)",
                              bounds="positive")
    seed: int = setting(0, "seed of the k-means initialisation and of the pool",
                        bounds="[0, 2**31) (Faiss's k-means seed)")


@dataclass
class DetectionSettings:
    """Data, fine-tuning schedule and model options of detection transfer (torchvision/detectron2 defaults)."""

    train: list[str] = setting([], "training sets as ROOT:SPLIT (COCO or VOC layout), concatenated")
    val: str = setting("", "validation set as ROOT:SPLIT")
    iterations: int = setting(1500, "SGD iterations", bounds="positive")
    batch_size: int = setting(8, "images per iteration", bounds="positive")
    lr: float = setting(0.02, "learning rate at batch 16 (detectron2's reference), scaled linearly with batch size",
                        bounds="> 0")
    momentum: float = setting(0.9, "SGD momentum", bounds="[0, 1)")
    weight_decay: float = setting(1e-4, "SGD weight decay", bounds=">= 0")
    warmup_iterations: int = setting(100, "linear warm-up iterations", bounds=">= 0")
    milestones: list[float] = setting([0.75, 0.92], "fractions of training in (0, 1], increasing, where the lr is "
                                                    "divided by 10")
    norm: str = setting("sync", "sync: trainable BatchNorm (SyncBatchNorm under torch.distributed), as in MoCo's "
                                "detection configs; frozen: FrozenBatchNorm2d with the pretrained statistics",
                        DETECTION_NORMS)
    trainable_layers: int = setting(5, "ResNet stages fine-tuned, counted from the top (5: all, 0: none)",
                                    bounds="[0, 5] (ResNet stages)")
    min_size: int = setting(800, "shorter image side after resizing", bounds="positive")
    max_size: int = setting(1333, "longer image side limit after resizing (at least eval.detection.min_size)")
    proposals: int = setting(2000, "RPN proposals kept per training image", bounds="positive")
    roi_batch: int = setting(512, "RoIs sampled per training image for the box head", bounds="positive")
    workers: int = setting(2, "data-loading worker processes", bounds=">= 0")
    seed: int = setting(0, "seed of the head initialisation, shuffling and flips", bounds="[0, 2**63)")


@dataclass
class TransferSettings:
    """The transfer suite: its target tasks and few-shot episodes (prototypes on frozen features, as in Ericsson et
    al., "How well do self-supervised models transfer?"); kNN and the linear probe take eval.knn_* and eval.linear.*."""

    tasks: list[str] = setting(TRANSFER_TASKS, "target tasks: a dataset name (data.name), or NAME=ROOT for its data at "
                                               "ROOT (e.g. cifar10=/data/cifar, imagefolder=/data/pets)")
    ways: int = setting(5, "classes per few-shot episode (N-way)", bounds=">= 2")
    shots: list[int] = setting([1, 5, 10], "labelled support images per class (K-shot), distinct positive numbers, "
                                           "one evaluation each")
    queries: int = setting(15, "query images per class and episode", bounds="positive")
    episodes: int = setting(600, "few-shot episodes per shot count (mean and 95% interval over them)",
                            bounds=">= 2 (the interval needs a spread)")
    seed: int = setting(0, "seed of the episodes", bounds="[0, 2**63)")


@dataclass
class TransferabilitySettings:
    """Transferability estimates from one source task to each target (PGE, after Qi et al. 2023, and LogME, after
    You et al. 2021): the images they read and the backbone parameters whose gradients PGE compares."""

    source: str = setting("fashion_mnist", "the source task: a dataset name, or NAME=ROOT")
    tasks: list[str] = setting(TRANSFER_TASKS, "target tasks: a dataset name (data.name), or NAME=ROOT")
    batches: int = setting(16, "mini-batches of labelled training images per task whose gradients are averaged; as "
                               "many other images fit the task's head (seeded class-balanced subsets)",
                           bounds="positive")
    batch_size: int = setting(64, "images per mini-batch", bounds="positive")
    parameters: list[str] = setting(["layer4"], "backbone parameter-name prefixes whose gradients PGE compares "
                                                "(layer4: the last ResNet stage; '': every parameter)")
    seed: int = setting(0, "seed of the image subsets", bounds="[0, 2**63)")


@dataclass
class NucleiSettings:
    """Nuclei instance segmentation (mochi-nuclei): a small decoder on the backbone's dense features, trained to
    classify each pixel as background, nucleus interior or nucleus boundary, the nuclei then recovered as the interiors'
    connected components grown over the boundaries; Dice and AJI on the test set."""

    train: str = setting("", "training set: a folder with images/ and masks/ (instance maps, same file stems)")
    test: str = setting("", "test set, the same layout")
    crop: int = setting(64, "side in px of the random training crops (a multiple of 32)", bounds=">= 32")
    iterations: int = setting(600, "decoder training steps", bounds="positive")
    batch_size: int = setting(8, "crops per step", bounds="positive")
    lr: float = setting(3e-3, "AdamW learning rate of the decoder", bounds="> 0")
    finetune: bool = setting(False, "also train the backbone (at eval.nuclei.backbone_lr); false: frozen, in eval "
                                    "mode")
    backbone_lr: float = setting(1e-4, "finetune: AdamW learning rate of the backbone", bounds="> 0")
    channels: int = setting(64, "the decoder's width", bounds="positive")
    min_size: int = setting(10, "predicted nuclei interiors of fewer pixels are dropped", bounds="positive")
    seed: int = setting(0, "seed of the decoder initialisation, the crops and their orientations",
                        bounds="[0, 2**63)")


def task_name_and_root(task: str) -> tuple[str, str | None]:
    """A transfer task as written (NAME or NAME=ROOT) split into the dataset name and its root (None: the default)."""
    name, _, root = task.partition("=")
    return name.strip(), root.strip() or None
