"""Raw-pixel features of a labelled split, computed once per dataset and kept on disk.

Pixel features need no model, but a pass over the data (every image through the evaluation transform: about
half a minute for Fashion-MNIST's 70,000 images on 2 CPU cores, against a fraction of a second to read the
features back), and the raw-pixel reference is evaluated again and again. The cache file is named by a
fingerprint of the split's content (image bytes and labels of in-memory sets; paths, sizes and modification
times of image files) and of everything the features depend on (image size, normalisation, channels), so a
changed dataset or setting never gets stale features. Files live under $XDG_CACHE_HOME/mochi_hvs/pixels
(default ~/.cache); delete the folder to drop them. A file that cannot be read is recomputed; one that cannot
be written is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..data.datasets import ImageSet
from ..data.loader import eval_loader
from ..distributed import world
from .features import extract_features
from .pixels import pixel_model

CACHE_VERSION = 1  # raise when the evaluation transform or PixelFeatures change what a cached file holds


def cache_dir() -> Path:
    """The folder of cached pixel features."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mochi_hvs" / "pixels"


def images_fingerprint(images: ImageSet) -> str:
    """SHA-256 of what the images are: labels plus pixel bytes (in memory) or path, size and mtime (files)."""
    digest = hashlib.sha256(np.ascontiguousarray(images.labels, dtype=np.int64).tobytes())
    if images.array is not None:
        digest.update(str(images.array.shape).encode())
        digest.update(np.ascontiguousarray(images.array).tobytes())
    else:
        for path in images.files:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(images: ImageSet, data: DataConfig) -> Path:
    """Where the pixel features of `images` under the data settings `data` are cached."""
    key = {"version": CACHE_VERSION, "images": images_fingerprint(images), "image_size": data.image_size,
           "mean": data.mean, "std": data.std, "skip_unreadable": data.skip_unreadable}
    return cache_dir() / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]}.pt"


def _read(path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        features, labels = stored["features"], stored["labels"]
    except Exception:  # a damaged cache file raises whatever the unpickler met; the cache is only an optimisation
        return None
    return (features, labels) if len(features) == len(labels) == size else None


def _write(path: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Write atomically (a complete file or none); failures only cost the next run the data pass."""
    part = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, part = tempfile.mkstemp(dir=path.parent, suffix=".part")
        os.close(handle)
        torch.save({"features": features.cpu(), "labels": labels.cpu()}, part)
        os.replace(part, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        if part is not None:
            Path(part).unlink(missing_ok=True)
        print(f"warning: pixel features not cached in {path.parent} ({err})", file=sys.stderr)


def pixel_features(images: ImageSet, data: DataConfig, batch_size: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw-pixel features (N, channels x size x size; unnormalised) and labels of `images` in dataset order, on
    `device`: read from the cache when computed before (not under torch.distributed, where every process must
    join the sharded extraction)."""
    alone = world()[1] == 1
    path = cache_path(images, data)
    cached = _read(path, len(images)) if alone else None
    if cached is not None:
        return cached[0].to(device), cached[1].to(device)
    model = pixel_model(images, data.mean, data.std).to(device)
    features, labels = extract_features(model, eval_loader(images, data, batch_size), device, normalize=False)
    if alone:
        _write(path, features, labels)
    return features, labels
