"""FAISS indices over the store's embeddings, one per modality, with exact re-ranking.

Below ``IndexCfg.flat_threshold`` vectors an index is exact (``IndexFlatIP``). Above it, IVF-PQ with ``d / 4``
sub-quantisers of 4 bits (fast-scan: ``d / 8`` bytes a vector, 128 B at 1024-d), the same files whether a GPU
trained the centroids or not (``train_ivfpq``); ``serve`` on a GPU answers exactly from the re-rank vectors
(``VectorIndex.use_exact``, ``xsearch.exact``). ``nlist``, ``nprobe`` and the re-rank depth come from
``search_defaults(N)``, measured on 1M vectors (BENCHMARKS.md). IVF-PQ scores are approximate, so ``search``
takes ``k * refine`` candidates and re-ranks them exactly against float16 copies of the vectors.

Layout of ``<db>/faiss/<modality>/`` (append-only, so a top-up costs what it adds):

- ``rows.ids`` / ``rows.f16``: raw int64 item ids and float16 vectors, one per *row*. A row is never
  rewritten; FAISS labels are row numbers, and the vectors are read through a memory map, so re-ranking
  never copies them into RAM.
- ``trained.faiss``: the empty trained index (coarse quantiser + PQ); ``seg-N.faiss``: the codes of one
  build or top-up (rows ``[start, stop)``), merged in memory at load.
- ``dead-G.npy``: rows masked out (deleted items, and the old rows of re-embedded ones); searches skip them
  with a FAISS ``IDSelectorBitmap``. Too many dead rows or segments and the next writer rebuilds.
- ``meta.json``, written last and atomically: what the files hold, their CRC-32 (the rows' per segment)
  and the store state covered (table version + that version's commit time, which cannot repeat even when
  a lost manifest makes a version number come back). Files that disagree with it, an unreadable
  ``meta.json``, or scores outside [-1, 1] mean damage: ``xsearch index`` rebuilds, a search rebuilds in
  memory and writes nothing.

Builds stream: a training sample, then ``id, embedding`` batches read from Lance, so memory holds the
index codes and one batch, never all vectors.
"""

from xsearch.index.files import read_meta
from xsearch.index.gpu import assigned_by, gpu_available, torch_device
from xsearch.index.index_set import IndexSet
from xsearch.index.params import IndexCfg, default_nprobe, search_defaults
from xsearch.index.vector_index import VectorIndex

__all__ = [
    "IndexCfg",
    "IndexSet",
    "VectorIndex",
    "assigned_by",
    "default_nprobe",
    "gpu_available",
    "read_meta",
    "search_defaults",
    "torch_device",
]
