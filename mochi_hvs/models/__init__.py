"""Backbones, projection heads, split BatchNorm and the MoCo module."""

from .backbone import build_backbone
from .head import projection_head
from .moco import Encoder, MoCo
from .split_bn import SplitBatchNorm2d, convert_split_bn

__all__ = ["Encoder", "MoCo", "SplitBatchNorm2d", "build_backbone", "convert_split_bn", "projection_head"]
