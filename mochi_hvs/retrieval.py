"""Top-k retrieval of the hardest negatives from a feature bank (the MoCo queue), behind one interface.

A backend answers `topk(queries, k, bank) -> (scores, indices)` by inner product against a (K, D) bank
given at search time (the step's read of the queue). `TorchTopK` is exact and, given the query-vs-bank
logits the MoCo step has already computed, costs no extra matrix product. `FaissTopK` keeps a Faiss
index over the bank (exact flat inner product, or IVF for large banks), on the GPU when faiss has GPU
support and the bank is on CUDA.
"""

from __future__ import annotations

from typing import Protocol

import torch

FAISS_INSTALL = "pip install faiss-cpu (or faiss-gpu-cu12 for GPU indexes, the package's [gpu] extra)"


class Retrieval(Protocol):
    """The retrieval interface: the k bank rows with the highest inner product with each query."""

    def topk(
        self, queries: torch.Tensor, k: int, bank: torch.Tensor, logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, k) and indices (B, k) of bank rows, best first; `logits` (B, K) may be reused if given."""
        ...


class TorchTopK:
    """Exact top-k by inner product with torch; reuses precomputed logits (no extra matmul)."""

    name = "torch"

    @torch.no_grad()
    def topk(
        self, queries: torch.Tensor, k: int, bank: torch.Tensor, logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k rows of `logits` (or of queries @ bank.T when no logits are given)."""
        if logits is None:
            logits = queries @ bank.t()
        return logits.detach().float().topk(k, dim=1)


def import_faiss():
    """The faiss module (with torch tensor support), or a clear error naming the package to install."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (lets indexes take torch tensors, CPU or CUDA)
    except ImportError as err:
        raise ImportError(f"Faiss retrieval was requested but faiss is not installed: {FAISS_INSTALL}") from err
    return faiss


class FaissTopK:
    """A Faiss inner-product index over a bank that changes between searches (the MoCo queue).

    `index="flat"`: exact search. `index="ivf"`: inverted lists with `nlist` centroids, trained on the
    first bank it sees, `nprobe` lists visited per query (approximate). The index is refreshed from the
    bank before each search, since the queue is rewritten every step.
    """

    name = "faiss"

    def __init__(self, index: str = "flat", nlist: int = 256, nprobe: int = 16) -> None:
        if index not in ("flat", "ivf"):
            raise ValueError(f"unknown faiss index {index!r}; choose flat or ivf")
        self.faiss = import_faiss()
        self.kind = index
        self.nlist = nlist
        self.nprobe = nprobe
        self.index = None

    def _new_index(self, features: torch.Tensor):
        faiss, dim = self.faiss, features.shape[1]
        if self.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = self.nprobe
        if features.is_cuda and hasattr(faiss, "StandardGpuResources"):
            self.resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self.resources, features.device.index or 0, index)
        return index

    @torch.no_grad()
    def refresh(self, bank: torch.Tensor) -> None:
        """Re-index the bank's current contents (training the IVF quantiser on first use)."""
        bank = bank.detach().float().contiguous()
        if self.index is None:
            self.index = self._new_index(bank)
        if not self.index.is_trained:
            self.index.train(bank)
        self.index.reset()
        self.index.add(bank)

    @torch.no_grad()
    def topk(
        self, queries: torch.Tensor, k: int, bank: torch.Tensor, logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Search the index refreshed with `bank`; `logits` is ignored (Faiss computes its own scores)."""
        self.refresh(bank)
        scores, indices = self.index.search(queries.detach().float().contiguous(), k)
        return scores.to(queries.device), indices.to(queries.device)


def build_retrieval(kind: str, faiss_index: str = "flat", nlist: int = 256, nprobe: int = 16) -> TorchTopK | FaissTopK:
    """The backend named by `mochi.retrieval`."""
    if kind == "torch":
        return TorchTopK()
    if kind == "faiss":
        return FaissTopK(faiss_index, nlist, nprobe)
    raise ValueError(f"unknown retrieval backend {kind!r}; choose torch or faiss")
