"""Exact maximum-inner-product search of queries in a fixed feature bank (kNN): Faiss, or chunked torch.

Both backends return the k most similar bank rows per query, sorted by decreasing similarity, and
never hold the whole (queries x bank) similarity matrix: queries go through in chunks whose
similarity block stays under `max_block` elements. Unlike the training-step retrieval over the
queue (mochi_hvs.retrieval, re-indexed every step, one small batch of queries), the bank here is a
whole labelled set indexed once, the queries are a whole test set, and the bank may be held in fp16.
Both build their Faiss indexes with mochi_hvs.faiss_index.
"""

from __future__ import annotations

import torch

from ..faiss_index import build_index, import_faiss

BACKENDS = ("auto", "faiss", "torch")
MAX_BLOCK = 2**27  # similarity elements per query chunk (512 MiB in float32)


def faiss_available() -> bool:
    """True when the faiss package imports."""
    try:
        import_faiss()
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """auto: Faiss when installed, torch otherwise (see benchmarks/knn_vs_sklearn.py for the measured ratio)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss":
        import_faiss()  # a clear error naming the package when faiss is missing
    return backend


def query_chunk(bank_size: int, max_block: int = MAX_BLOCK) -> int:
    """How many queries fit in one similarity block of at most `max_block` elements."""
    return max(1, max_block // max(1, bank_size))


def faiss_search(bank: torch.Tensor, queries: torch.Tensor, k: int, fp16: bool = False,
                 max_block: int = MAX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (similarities, indices) with a Faiss flat inner-product index, queries in chunks."""
    index = build_index(bank.shape[1], bank.device, "flat", fp16)
    index.add(bank)
    chunk = query_chunk(bank.shape[0], max_block)
    sims, idx = [], []
    for start in range(0, queries.shape[0], chunk):
        s, i = index.search(queries[start:start + chunk], k)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def torch_search(bank: torch.Tensor, queries: torch.Tensor, k: int, fp16: bool = False,
                 max_block: int = MAX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (similarities, indices) by matrix products and torch.topk, queries in chunks."""
    dtype = torch.float16 if fp16 else torch.float32
    bank = bank.to(dtype)
    chunk = query_chunk(bank.shape[0], max_block)
    sims, idx = [], []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk].to(dtype) @ bank.t()
        s, i = sim.float().topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def search(bank: torch.Tensor, queries: torch.Tensor, k: int, backend: str = "auto", fp16: bool = False,
           max_block: int = MAX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The k (clipped to the bank size) most similar bank rows of each query: (similarities, indices), sorted."""
    k = min(k, bank.shape[0])
    run = faiss_search if resolve_backend(backend) == "faiss" else torch_search
    return run(bank, queries, k, fp16, max_block)
