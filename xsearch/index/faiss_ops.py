"""FAISS plumbing: vectors made ready for FAISS, IVF-PQ training (its k-means on a GPU when there is one:
``xsearch.index.gpu``), the float16 decoder the re-rank reads through, and what keeps one search on its
own thread (one OpenMP thread, inner products without BLAS's threads)."""

from __future__ import annotations

import contextlib

import numpy as np

from xsearch.index.gpu import gpu_clustering_index
from xsearch.index.params import IndexCfg, search_defaults


def faiss_module():
    import faiss

    return faiss


@contextlib.contextmanager
def one_openmp_thread():
    """FAISS's OpenMP at one thread for the calling thread while the block runs (libgomp keeps the setting
    per thread: other threads, and this one afterwards, keep theirs). One query's FAISS calls are too small
    to share: their spin-waiting team threads cost more than they give, most of all when searches already
    run side by side (BENCHMARKS.md, "Warm search against its index")."""
    faiss = faiss_module()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def inner_products(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``vectors [n, d] @ query [d]`` as float32, by FAISS's SIMD kernel on the calling thread. BLAS splits
    one such product over threads of its own, which spin against each other when searches run side by side
    (BENCHMARKS.md, "Warm search against its index"); this is also the kernel the flat index scores with."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
    if vectors.ndim != 2 or vectors.shape[1] != len(query):
        raise ValueError(f"vectors {vectors.shape} and a query of {len(query)} values do not multiply")
    out = np.empty(len(vectors), np.float32)
    if len(vectors):
        faiss = faiss_module()
        ptr = faiss.swig_ptr
        faiss.fvec_inner_products_ny(ptr(out), ptr(query), ptr(vectors), len(query), len(vectors))
    return out


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


_FP16_DECODERS: dict[int, object] = {}  # FAISS's SIMD fp16 decoder, one per width


def to_float32(half: np.ndarray) -> np.ndarray:
    """float16 -> float32 through FAISS's SIMD fp16 decoder: exact, and twice as fast as numpy's ``astype``,
    which is most of a re-rank's time."""
    dim = half.shape[-1]
    decoder = _FP16_DECODERS.get(dim)
    if decoder is None:
        faiss = faiss_module()
        decoder = _FP16_DECODERS[dim] = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)
    codes = np.ascontiguousarray(half).reshape(-1, dim).view(np.uint8)
    return decoder.sa_decode(codes).reshape(half.shape) if len(codes) else half.astype(np.float32)


def add_rows(index, vectors: np.ndarray, first_row: int) -> None:
    """Add vectors labelled with their row numbers. A flat index labels by position: rows are added in
    order, and its segments are merged in order, so the position is the row."""
    if isinstance(index, faiss_module().IndexFlat):
        index.add(vectors)
    else:
        index.add_with_ids(vectors, np.arange(first_row, first_row + len(vectors), dtype=np.int64))


def train_size(n: int, cfg: IndexCfg) -> int:
    if cfg.train_size:
        return cfg.train_size
    nlist = cfg.nlist or search_defaults(n)[0]
    return min(50 * nlist, 100_000)  # memory: 400 MB of samples at 1024-d, and as much for PQ's residuals


def train_ivfpq(sample: np.ndarray, n: int, cfg: IndexCfg, clustering=None):
    """The empty trained IVF-PQ fast-scan index: one recipe on every machine, so that files built on a GPU
    server are searched on a laptop and the reverse. A GPU, when there is one, does the expensive and
    portable part, the k-means of the IVF centroids (FAISS's ``clustering_index``, as its ``bench_all_ivf``
    does); ``clustering`` names another index for that (tests). The PQ codes are trained and added on the
    CPU: FAISS's GPU IVF-PQ has no fast-scan and caps 1024-d codes at 64 bytes, a lower recall than this
    recipe's (BENCHMARKS.md, "The index on a GPU")."""
    faiss = faiss_module()
    d = sample.shape[1]
    nlist = cfg.nlist or search_defaults(n)[0]
    nlist = min(nlist, max(len(sample) // 39, 1))
    m = max(1, int(d * cfg.pq_bytes_per_dim * 2))  # 4-bit codes: two sub-quantisers per byte
    spec = f"IVF{nlist},PQ{m}x4fs"
    index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    clustering = clustering if clustering is not None else gpu_clustering_index(d, cfg)
    if clustering is not None:
        ivf.clustering_index = clustering  # k-means assigns there; the centroids land in the CPU quantiser
    try:
        index.train(sample)
    finally:
        ivf.clustering_index = None  # no GPU object in what is saved; ``clustering`` lives until here
    return index, spec
