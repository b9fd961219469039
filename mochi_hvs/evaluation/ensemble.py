"""Rich representations: several backbones evaluated as one, their features L2-normalised per model and
concatenated (after "rich representations": the features of independently trained runs, concatenated, transfer
better than those of one network). Every frozen-feature evaluator reads the concatenation like any backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import UserError

SHARED_DATA_KEYS = ("name", "image_size", "mean", "std")  # data.* settings every concatenated backbone must share


class ConcatenatedBackbones(nn.Module):
    """Backbones side by side: each one's features L2-normalised, concatenated in the order given."""

    def __init__(self, backbones: Sequence[nn.Module]) -> None:
        super().__init__()
        self.backbones = nn.ModuleList(backbones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(backbone(x).float(), dim=1) for backbone in self.backbones], dim=1)


def check_shared_data(data_by_file: dict[str, DataConfig]) -> None:
    """Raise a UserError naming the files and the first key of SHARED_DATA_KEYS on which their data settings
    differ: one dataset, image size and normalisation serve every concatenated backbone."""
    for key in SHARED_DATA_KEYS:
        values = {path: getattr(data, key) for path, data in data_by_file.items()}
        if len({repr(value) for value in values.values()}) > 1:
            found = ", ".join(f"{path}: {value}" for path, value in values.items())
            raise UserError(f"the checkpoints' configs disagree on data.{key} ({found}); concatenated features need "
                            "checkpoints trained with the same dataset, image size, mean and std")
