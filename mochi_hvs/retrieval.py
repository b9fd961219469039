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

from .faiss_index import FaissIndex, build_index, import_faiss


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


class FaissTopK:
    """A Faiss inner-product index over a bank that changes between searches (the MoCo queue).

    `index="flat"`: exact search. `index="ivf"`: inverted lists with `nlist` centroids, trained on the
    first bank it sees, `nprobe` lists visited per query (approximate). The index is refreshed from the
    bank before each search, since the queue is rewritten every step.
    """

    name = "faiss"

    def __init__(self, index: str = "flat", nlist: int = 256, nprobe: int = 16) -> None:
        import_faiss()  # fail at construction, naming the package, rather than at the first search
        self.kind = index
        self.nlist = nlist
        self.nprobe = nprobe
        self.index: FaissIndex | None = None

    @torch.no_grad()
    def refresh(self, bank: torch.Tensor) -> None:
        """Re-index the bank's current contents (training the IVF quantiser on first use)."""
        if self.index is None:
            self.index = build_index(bank.shape[1], bank.device, self.kind, nlist=self.nlist, nprobe=self.nprobe)
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
        return self.index.search(queries, k)


def build_retrieval(kind: str, faiss_index: str = "flat", nlist: int = 256, nprobe: int = 16) -> TorchTopK | FaissTopK:
    """The backend named by `mochi.retrieval`."""
    if kind == "torch":
        return TorchTopK()
    if kind == "faiss":
        return FaissTopK(faiss_index, nlist, nprobe)
    raise ValueError(f"unknown retrieval backend {kind!r}; choose torch or faiss")
