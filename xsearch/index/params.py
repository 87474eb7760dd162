"""What an index is built with: ``IndexCfg`` and the measured defaults of IVF-PQ's parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class IndexCfg:
    flat_threshold: int = 50_000  # exact search below this many vectors
    nlist: int | None = None  # IVF lists; None: ``search_defaults``
    nprobe: int | None = None  # lists visited per query; None: ``search_defaults``
    refine_factor: int | None = None  # candidates re-ranked exactly: k * refine_factor; None: ``search_defaults``
    pq_bytes_per_dim: float = 1 / 8  # PQ code size: d/4 sub-quantisers of 4 bits = d/8 bytes (128 B at 1024-d)
    train_size: int | None = None  # training sample; None: 50 points per list, at most 100k
    chunk_rows: int = 16_384  # rows read from the store per batch while building
    max_segments: int = 16  # more top-ups than this and the next writer rebuilds
    max_dead_fraction: float = 0.25  # ... or more masked rows than this
    use_gpu: bool | None = (
        None  # k-means of the IVF centroids, and a build's list assignment, on a GPU; None: when faiss sees one
    )


def search_defaults(n: int) -> tuple[int, int, int]:
    """``(nlist, nprobe, refine_factor)`` for an IVF-PQ index of ``n`` vectors (recall@10 >= 0.95 in
    ``benchmarks/search.py`` on embedding-like vectors; the table is in BENCHMARKS.md)."""
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(n), 16)))
    nlist = int(min(nlist, max(n // 39, 16)))
    return nlist, default_nprobe(nlist), 15


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(16, nlist // 32))
