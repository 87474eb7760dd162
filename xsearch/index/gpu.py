"""The GPU's part in the indices: whether there is one, its free memory, FAISS's resources on it, and the
exact indices that do a build's k-means and list assignment there (``assigned_by``). Without a GPU each
answers ``False`` or ``None`` and the CPU does the work, with the same files as the result."""

from __future__ import annotations

import contextlib
import functools
import os

from xsearch.index.params import IndexCfg


def _faiss():
    import faiss  # on first use: ``xsearch --help`` and searches without an index never load it

    return faiss


def gpu_available() -> bool:
    try:
        return _faiss().get_num_gpus() > 0
    except Exception:  # a faiss build without GPU support
        return False


def torch_device(device):
    import torch

    return torch.device(device)


def free_bytes(device) -> int:
    """Free memory on ``device`` (a CUDA device's, or the machine's RAM for the CPU)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def gpu_clustering_index(d: int, cfg: IndexCfg):
    """An exact inner-product index on GPU 0 for k-means assignments, or ``None`` without a GPU."""
    if not (gpu_available() if cfg.use_gpu is None else cfg.use_gpu):
        return None
    faiss = _faiss()
    config = faiss.GpuIndexFlatConfig()
    config.device = 0
    return faiss.GpuIndexFlatIP(gpu_resources(), d, config)


def gpu_quantizer(index, cfg: IndexCfg):
    """The IVF centroids of ``index`` in an exact index on GPU 0, for a build to assign its rows to lists
    there; ``None`` for a flat index or without a GPU."""
    if isinstance(index, _faiss().IndexFlat) or not (gpu_available() if cfg.use_gpu is None else cfg.use_gpu):
        return None
    faiss = _faiss()
    return faiss.index_cpu_to_gpu(gpu_resources(), 0, faiss.extract_index_ivf(index).quantizer)


@contextlib.contextmanager
def assigned_by(index, quantizer):
    """Rows added inside are assigned to their IVF lists by ``quantizer`` (the same centroids, held where
    the nearest one is found faster: a GPU); the index's own quantiser is back when done, so what is saved
    is the CPU recipe. ``quantizer=None``: the index's own. The PQ codes are made on the CPU either way
    (fast-scan codes have no GPU encoder, and FAISS's ``add_core`` with precomputed lists fails on their
    block inverted lists in faiss 1.15.1), so this is the one part of adding a GPU can take."""
    if quantizer is None:
        yield
        return
    ivf = _faiss().extract_index_ivf(index)
    own = ivf.quantizer
    ivf.quantizer = quantizer
    try:
        yield
    finally:
        ivf.quantizer = own


@functools.lru_cache(maxsize=1)
def gpu_resources():
    """FAISS's GPU memory and streams, made once per process (they are costly) and kept alive."""
    return _faiss().StandardGpuResources()
