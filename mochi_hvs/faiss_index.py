"""Faiss inner-product indexes, built in one place for the training-step retrieval over the queue
(mochi_hvs.retrieval) and the kNN search over a labelled bank (mochi_hvs.evaluation.search).

Kinds: `flat` (exact), `ivf` (inverted lists: `nlist` centroids trained on the first data added, `nprobe` lists
visited per query; approximate) and, with `fp16`, a flat index holding its vectors in half precision. The index
lives on the GPU when the data's device is CUDA and faiss has GPU support, else on the CPU; tensors are moved to
where the index is, and search results come back on the queries' device.
"""

from __future__ import annotations

from typing import Any

import torch

FAISS_INSTALL = "pip install faiss-cpu (or faiss-gpu-cu12 for GPU indexes, the package's [gpu] extra)"
INDEX_KINDS = ("flat", "ivf")


def import_faiss():
    """The faiss module (with torch tensor support), or a clear error naming the package to install."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (lets indexes take torch tensors, CPU or CUDA)
    except ImportError as err:
        raise ImportError(f"Faiss retrieval was requested but faiss is not installed: {FAISS_INSTALL}") from err
    return faiss


def faiss_on_gpu(faiss: Any, device: torch.device) -> bool:
    """True when an index for data on `device` can live on the GPU (CUDA data, faiss built with GPU support)."""
    return device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissIndex:
    """A Faiss inner-product index taking torch tensors, with the GPU resources it needs kept alive."""

    def __init__(self, index: Any, on_gpu: bool, resources: Any = None) -> None:
        self.index = index
        self.on_gpu = on_gpu
        self.resources = resources  # must outlive the GPU index

    def _placed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        return (x if self.on_gpu else x.cpu()).contiguous()

    @property
    def is_trained(self) -> bool:
        """False for an IVF index whose centroids have not been trained yet."""
        return self.index.is_trained

    def train(self, x: torch.Tensor) -> None:
        """Train the IVF centroids on `x` (N, D)."""
        self.index.train(self._placed(x))

    def reset(self) -> None:
        """Remove every vector (trained centroids stay)."""
        self.index.reset()

    def add(self, x: torch.Tensor) -> None:
        """Add the rows of `x` (N, D); they are found by their order of addition."""
        self.index.add(self._placed(x))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest inner products with the indexed rows: (scores, indices), best first, on the queries' device."""
        scores, indices = self.index.search(self._placed(queries), k)
        return scores.to(queries.device), indices.to(queries.device)


def _cpu_index(faiss: Any, dim: int, kind: str, fp16: bool, nlist: int, nprobe: int) -> Any:
    if kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = nprobe
        return index
    if fp16:
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexFlatIP(dim)


def build_index(dim: int, device: torch.device, kind: str = "flat", fp16: bool = False, nlist: int = 256,
                nprobe: int = 16) -> FaissIndex:
    """An empty inner-product index of `kind` for `dim`-dimensional vectors held on `device`."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown faiss index {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if fp16 and kind != "flat":
        raise ValueError("fp16 storage is for flat indexes only")
    faiss = import_faiss()
    if not faiss_on_gpu(faiss, device):
        return FaissIndex(_cpu_index(faiss, dim, kind, fp16, nlist, nprobe), on_gpu=False)
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = fp16  # the GPU flat index stores fp16 itself (no scalar quantiser needed)
    index = faiss.index_cpu_to_gpu(resources, device.index or 0, _cpu_index(faiss, dim, kind, False, nlist, nprobe),
                                   options)
    return FaissIndex(index, on_gpu=True, resources=resources)
