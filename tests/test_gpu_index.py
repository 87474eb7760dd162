"""The index on a GPU: one recipe whatever trains it, and exact search from the re-rank vectors.

What runs here (no GPU): the recipe with a separate clustering index (as the GPU one is used) gives the same
trained index byte for byte; the FAISS names used exist (its Python objects accept misspelt attributes
silently); the exact searcher on ``device="cpu"`` equals ``IndexFlatIP``, before and after top-ups; a
``Collection`` with an exact device answers as the FAISS path does. Tests marked ``gpu`` run the same on a
CUDA device and skip, visibly, without one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xsearch import Collection, Modality, Query
from xsearch.index import IndexCfg, VectorIndex
from xsearch.index.faiss_ops import train_ivfpq
from xsearch.options import EngineSettings
from xsearch.store import Database, ItemRecord
from xsearch.testing.synthetic import clustered_embeddings

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(scope="module")
def vectors():
    return clustered_embeddings(6000, dim=64, seed=1)


def _serialised(index) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def test_the_recipe_is_the_same_whoever_clusters(vectors):
    """k-means assigned through another index (on a GPU, FAISS's GpuIndexFlatIP) trains the same index."""
    import faiss

    cfg = IndexCfg(flat_threshold=0, nlist=32, use_gpu=False)
    plain, spec = train_ivfpq(vectors[:3000], len(vectors), cfg)
    helped, helped_spec = train_ivfpq(vectors[:3000], len(vectors), cfg, clustering=faiss.IndexFlatIP(64))
    assert spec == helped_spec == "IVF32,PQ16x4fs"
    assert _serialised(plain) == _serialised(helped)
    assert faiss.extract_index_ivf(helped).clustering_index is None  # nothing of the helper is kept


def test_the_faiss_names_used_for_the_gpu_exist():
    """SWIG objects take any attribute: the GPU IVF-PQ path had set ``useFloat16LookupTables``, a field no
    FAISS class has, and so crashed on a GPU for want of shared memory."""
    import faiss

    assert hasattr(faiss, "GpuIndexFlatIP") and hasattr(faiss, "StandardGpuResources")
    assert hasattr(faiss.GpuIndexFlatConfig(), "device")
    ivf = faiss.extract_index_ivf(faiss.index_factory(64, "IVF8,PQ16x4fs", faiss.METRIC_INNER_PRODUCT))
    assert hasattr(ivf, "clustering_index")
    assert not hasattr(faiss.GpuClonerOptions(), "useFloat16LookupTables")


def _flat_top(vectors, ids, dead, queries, k):
    live = ~dead
    scores = queries @ vectors[live].T
    order = np.argsort(-scores, axis=1)[:, :k]
    return ids[live][order]


def test_exact_search_on_cpu_equals_flat_search_before_and_after_top_ups(vectors):
    ids = np.arange(len(vectors), dtype=np.int64) * 3
    index = VectorIndex.build(ids[:5000], vectors[:5000], IndexCfg(flat_threshold=0, nlist=32, use_gpu=False))
    assert index.use_exact("cpu", budget_bytes=1 << 30)
    queries = clustered_embeddings(20, dim=64, seed=9)
    _, found = index.search(queries, 10)
    half = index.rows.vectors(np.arange(5000)).astype(np.float32)  # what the index holds (float16 rows)
    expected = _flat_top(half, ids[:5000], np.zeros(5000, bool), queries, 10)
    assert (found == expected).mean() > 0.99  # exact: only float16 ties may swap
    index.add(ids[5000:], vectors[5000:])  # a top-up
    index.remove(ids[:100])  # deleted items
    _, found = index.search(queries, 10)
    rows = index.rows.vectors(np.arange(len(index.rows))).astype(np.float32)
    dead = np.isin(index.rows.ids, ids[:100])
    assert (found == _flat_top(rows, index.rows.ids, dead, queries, 10)).mean() > 0.99
    assert not np.isin(found, ids[:100]).any()


def test_rows_assigned_by_another_copy_of_the_centroids_make_the_same_files(vectors):
    """A build assigns rows to lists through a GPU copy of the centroids where there is one
    (``assigned_by``); any copy of them gives the same lists and codes, and the saved index keeps its own."""
    import faiss

    from xsearch.index import assigned_by

    template, _ = train_ivfpq(vectors[:3000], len(vectors), IndexCfg(flat_threshold=0, nlist=32, use_gpu=False))
    plain, assigned = faiss.clone_index(template), faiss.clone_index(template)
    ids = np.arange(len(vectors), dtype=np.int64)
    plain.add_with_ids(vectors, ids)
    copy = faiss.clone_index(faiss.extract_index_ivf(assigned).quantizer)  # a GPU machine: index_cpu_to_gpu
    with assigned_by(assigned, copy):
        assigned.add_with_ids(vectors, ids)
    assert faiss.extract_index_ivf(assigned).quantizer.this != copy.this  # its own quantiser is back
    assert np.array_equal(faiss.serialize_index(assigned), faiss.serialize_index(plain))


def test_past_its_budget_the_ivf_candidates_are_reranked_on_the_device(vectors):
    index = VectorIndex.build(np.arange(6000), vectors, IndexCfg(flat_threshold=0, nlist=32, use_gpu=False))
    queries = clustered_embeddings(40, dim=64, seed=11)
    on_cpu = index.search(queries, 10)
    assert not index.use_exact("cpu", budget_bytes=1000)
    assert index._exact is None and index._rerank_device is not None  # the device re-ranks the candidates
    on_device = index.search(queries, 10)
    assert (on_device[1] == on_cpu[1]).mean() > 0.99  # the same candidates, the same exact scores
    assert np.allclose(on_device[0], on_cpu[0], atol=1e-5)
    assert index.search(vectors[:1], 1)[1][0, 0] == 0
    assert index.use_exact("cpu", budget_bytes=1 << 30) and index._rerank_device is None


def test_a_collection_with_an_exact_device_answers_as_the_index_does(tmp_path, vectors):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=64)
    store.add_items([ItemRecord(f"/v/{i}.jpg", Modality.IMAGE, v) for i, v in enumerate(vectors[:800])])
    exact = Collection.open(tmp_path / "db", settings=EngineSettings(exact_device="cpu"))
    usual = Collection.open(tmp_path / "db")
    for probe in (3, 77, 500):
        query = Query.vector(vectors[probe])
        assert [r.id for r in exact.search(query, k=5)] == [r.id for r in usual.search(query, k=5)]
    assert exact.engine.index(Modality.IMAGE)._exact is not None  # the device path was taken


@pytest.mark.gpu
@needs_cuda
def test_gpu_clustering_builds_the_cpu_recipe_and_exact_search_runs_on_cuda(vectors):
    import faiss

    cpu, _ = train_ivfpq(vectors[:3000], len(vectors), IndexCfg(flat_threshold=0, nlist=32, use_gpu=False))
    gpu, _ = train_ivfpq(vectors[:3000], len(vectors), IndexCfg(flat_threshold=0, nlist=32, use_gpu=True))
    assert type(cpu) is type(gpu) and cpu.code_size == gpu.code_size  # the same kind of files
    centroids = [faiss.extract_index_ivf(i).quantizer.reconstruct_n(0, 32) for i in (cpu, gpu)]
    assert np.abs(centroids[0] - centroids[1]).max() < 1e-3  # k-means on the GPU: the same centroids
    index = VectorIndex.build(np.arange(6000), vectors, IndexCfg(flat_threshold=0, nlist=32))  # lists on the GPU
    on_cpu = VectorIndex.build(np.arange(6000), vectors, IndexCfg(flat_threshold=0, nlist=32, use_gpu=False))
    assert (index.search(vectors[:50], 1)[1] == on_cpu.search(vectors[:50], 1)[1]).all()
    assert index.use_exact("cuda")
    assert (index.search(vectors[:50], 1)[1][:, 0] == np.arange(50)).all()
