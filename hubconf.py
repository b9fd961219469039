"""torch.hub entry points of this checkout's mochi_hvs (mochi_hvs/weights/hub.py):

    model = torch.hub.load("path/to/checkout", "backbone", source="local", weights="backbone.safetensors")
"""

from mochi_hvs.weights.hub import backbone

dependencies = ["torch", "torchvision", "timm", "safetensors"]
__all__ = ["backbone"]
