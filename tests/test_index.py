"""FAISS layer: exact and IVF-PQ search with re-rank, recall against exact search, add/remove, staleness."""

from __future__ import annotations

import numpy as np
import pytest

from xsearch.index import IndexCfg, IndexSet, VectorIndex
from xsearch.store import ItemRecord, Store

from synthetic import clustered_embeddings, exact_top_k, recall_at_k


@pytest.fixture(scope="module")
def data():
    # 6k vectors: enough for IVF-PQ to be far from exact on its own (recall ~0.6), so the re-rank must work.
    vectors = clustered_embeddings(6_000, seed=1)
    queries = clustered_embeddings(200, seed=2)
    return vectors, queries, exact_top_k(vectors, queries, 10)


@pytest.fixture(scope="module")
def ivfpq(data):
    vectors, _, _ = data
    return VectorIndex.build(np.arange(len(vectors)), vectors, IndexCfg(flat_threshold=1000))


def test_flat_is_exact(data):
    vectors, queries, truth = data
    index = VectorIndex.build(np.arange(5000), vectors[:5000])
    assert index.kind == "flat"
    _, ids = index.search(queries, 10)
    assert recall_at_k(ids, exact_top_k(vectors[:5000], queries, 10)) == 1.0


def test_ivfpq_with_rerank_recall(ivfpq, data):
    _, queries, truth = data
    assert ivfpq.kind.startswith("IVF") and "PQ" in ivfpq.kind
    scores, ids = ivfpq.search(queries, 10)
    assert recall_at_k(ids, truth) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_rerank_is_what_gives_recall(ivfpq, data):
    """Without exact re-ranking the PQ scores alone rank far worse: the re-rank step is load-bearing."""
    _, queries, truth = data
    _, raw = ivfpq.index.search(queries, 10)
    assert recall_at_k(raw, truth) < 0.8 and recall_at_k(ivfpq.search(queries, 10)[1], truth) >= 0.95


def test_add_and_remove_by_id(data):
    vectors, queries, _ = data
    index = VectorIndex.build(np.arange(1000) * 10, vectors[:1000])
    index.add(np.array([5]), queries[:1])
    _, ids = index.search(queries[:1], 1)
    assert ids[0, 0] == 5
    index.remove(np.array([5]))
    assert index.search(queries[:1], 1)[1][0, 0] != 5
    assert len(index) == 1000


def test_fewer_items_than_k(data):
    index = VectorIndex.build(np.arange(3), data[0][:3])
    scores, ids = index.search(data[1][:2], 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all() and (ids[:, :3] >= 0).all()


def test_save_load_roundtrip(ivfpq, data, tmp_path):
    _, queries, _ = data
    ivfpq.save(tmp_path / "idx", {"table_version": 7})
    loaded, meta = VectorIndex.load(tmp_path / "idx")
    assert meta["table_version"] == 7 and loaded.kind == ivfpq.kind
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], ivfpq.search(queries, 10)[1])


def _records(vectors, prefix, modality="image"):
    return [ItemRecord(f"{prefix}{i}", modality, v) for i, v in enumerate(vectors)]


def test_stale_index_is_topped_up_and_pruned(data, tmp_path):
    vectors, queries, _ = data
    store = Store.open(tmp_path / "db", model_id="tiny_test")
    store.add_items(_records(vectors[:300], "a"))
    store.add_items(_records(vectors[300:320], "s", modality="audio"))
    indices = IndexSet(store)
    first = indices.fresh("image")
    assert len(first) == 300 and indices.status("image")["fresh"]

    store.add_items(_records(queries[:2], "q"))  # ids 320, 321
    assert not indices.status("image")["fresh"]  # detected as stale
    topped = indices.fresh("image")
    assert len(topped) == 302 and indices.status("image")["fresh"]
    assert topped.search(queries[:1], 1)[1][0, 0] == 320

    store.delete_items(ids=[320])
    pruned = indices.fresh("image")
    assert 320 not in pruned.ids and pruned.search(queries[:1], 1)[1][0, 0] != 320
    assert len(indices.fresh("audio")) == 20


def test_rows_re_embedded_in_place_are_refreshed(data, tmp_path):
    """An upsert keeps a file's id but changes its vector: the top-up must replace it in the index."""
    vectors, queries, _ = data
    store = Store.open(tmp_path / "db", model_id="tiny_test")
    store.add_items(_records(vectors[:200], "a"))
    indices = IndexSet(store)
    indices.fresh("image")
    store.upsert_items([ItemRecord("a7", "image", queries[0])])  # same uri, same id 7, new vector
    refreshed = indices.fresh("image")
    assert len(refreshed) == 200
    scores, ids = refreshed.search(queries[:1], 1)
    assert ids[0, 0] == 7 and scores[0, 0] > 0.99


def test_flat_index_outgrowing_threshold_is_rebuilt(data, tmp_path):
    vectors, _, _ = data
    store = Store.open(tmp_path / "db", model_id="tiny_test")
    store.add_items(_records(vectors[:500], "a"))
    indices = IndexSet(store, IndexCfg(flat_threshold=2000))
    assert indices.fresh("image").kind == "flat"
    store.add_items(_records(vectors[500:3000], "b"))
    rebuilt = indices.fresh("image")
    assert rebuilt.kind.startswith("IVF") and len(rebuilt) == 3000


def test_corrupt_index_is_rebuilt(data, tmp_path):
    store = Store.open(tmp_path / "db", model_id="tiny_test")
    store.add_items(_records(data[0][:50], "a"))
    indices = IndexSet(store)
    indices.fresh("image")
    (indices.directory("image") / "index.faiss").write_bytes(b"garbage")
    assert len(indices.fresh("image")) == 50
