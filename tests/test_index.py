"""FAISS layer: exact and IVF-PQ search with re-rank, recall against exact search, add/remove, staleness."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from xsearch.index import IndexCfg, IndexSet, VectorIndex
from xsearch.store import ITEMS, Database, ItemRecord, TableView
from xsearch.testing.synthetic import clustered_embeddings, exact_top_k, recall_at_k


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


def latest(store: Database, cfg: IndexCfg = IndexCfg()) -> IndexSet:
    """The index set over the items as they are now (a view, and the set over it, stays at its version)."""
    return IndexSet(store.items(), store.index_folder(ITEMS), cfg)


def _records(vectors, prefix, modality="image"):
    return [ItemRecord(f"{prefix}{i}", modality, v) for i, v in enumerate(vectors)]


def test_stale_index_is_topped_up_and_pruned(data, tmp_path):
    vectors, queries, _ = data
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(vectors[:300], "a"))
    store.add_items(_records(vectors[300:320], "s", modality="audio"))
    first = latest(store).current("image")[0]
    assert len(first) == 300 and latest(store).status("image")["fresh"]

    store.add_items(_records(queries[:2], "q"))  # ids 320, 321
    assert not latest(store).status("image")["fresh"]  # detected as stale
    topped = latest(store).current("image")[0]
    assert len(topped) == 302 and latest(store).status("image")["fresh"]
    assert topped.search(queries[:1], 1)[1][0, 0] == 320

    store.delete_items(ids=[320])
    pruned = latest(store).current("image")[0]
    assert 320 not in pruned.ids and pruned.search(queries[:1], 1)[1][0, 0] != 320
    assert len(latest(store).current("audio")[0]) == 20


def test_rows_re_embedded_in_place_are_refreshed(data, tmp_path):
    """An upsert keeps a file's id but changes its vector: the top-up must replace it in the index."""
    vectors, queries, _ = data
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(vectors[:200], "a"))
    latest(store).current("image")[0]
    store.upsert_items([ItemRecord("a7", "image", queries[0])])  # same uri, same id 7, new vector
    refreshed = latest(store).current("image")[0]
    assert len(refreshed) == 200
    scores, ids = refreshed.search(queries[:1], 1)
    assert ids[0, 0] == 7 and scores[0, 0] > 0.99


def test_flat_index_outgrowing_threshold_is_rebuilt(data, tmp_path):
    vectors, _, _ = data
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(vectors[:500], "a"))
    cfg = IndexCfg(flat_threshold=2000)
    assert latest(store, cfg).current("image")[0].kind == "flat"
    store.add_items(_records(vectors[500:3000], "b"))
    rebuilt = latest(store, cfg).current("image")[0]
    assert rebuilt.kind.startswith("IVF") and len(rebuilt) == 3000


def test_corrupt_index_is_rebuilt(data, tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(data[0][:50], "a"))
    latest(store).current("image")[0]
    segment = latest(store).directory("image") / "seg-0.faiss"
    segment.write_bytes(b"garbage")
    rebuilt = latest(store).current("image")[0]
    assert len(rebuilt) == 50 and segment.read_bytes() != b"garbage"  # written again, not read as it was
    ids = np.sort(store.items().ids())
    assert rebuilt.search(data[0][7:8], 1)[1][0][0] == ids[7]  # and it answers: a stored vector finds itself


def _files(directory):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


@pytest.mark.parametrize("flat_threshold", [100_000, 1000])
def test_a_top_up_appends_and_equals_a_rebuild(data, tmp_path, flat_threshold):
    vectors, queries, _ = data
    cfg = IndexCfg(flat_threshold=flat_threshold, nlist=32, nprobe=32, refine_factor=50, train_size=2000)
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(vectors[:3000], "a"))
    latest(store, cfg).current("image")[0]
    directory = latest(store, cfg).directory("image")
    before = _files(directory)
    store.add_items(_records(vectors[3000:3030], "b"))  # 1% more rows
    store.delete_items(ids=[5, 6])
    store.upsert_items([ItemRecord("a7", "image", queries[0])])  # re-embedded in place
    topped = latest(store, cfg).current("image")[0]
    after = _files(directory)
    for name in ("trained.faiss", "seg-0.faiss"):
        assert after[name] == before[name]  # earlier segments are not rewritten
    assert after["rows.f16"][0] == before["rows.f16"][0] + 31 * 2 * 1024  # appended: 30 new rows + a7's new one
    assert "seg-1.faiss" in after and latest(store, cfg).status("image")["fresh"]
    assert len(topped) == 3028 and 5 not in topped.ids
    rebuilt = latest(store, cfg).build("image", persist=False)
    reloaded = latest(store, cfg).current("image", persist=False)[0]  # from the files: base + segment + mask
    want_scores, want_ids = rebuilt.search(queries, 10)
    for index in (topped, reloaded):
        scores, ids = index.search(queries, 10)
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)
        assert [set(row) for row in ids] == [set(row) for row in want_ids]  # equal scores may swap places


def test_a_build_streams_the_store_in_chunks(data, tmp_path, monkeypatch):
    """Peak memory of a build does not hold every vector: it reads batches and flushes rows to files."""
    import tracemalloc

    vectors, queries, truth = data
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(vectors, "a"))
    real_scan = TableView.scan

    def scan(self, columns, *args, **kwargs):
        assert "embedding" not in columns, "a build must stream embeddings, not read them whole"
        return real_scan(self, columns, *args, **kwargs)

    monkeypatch.setattr(TableView, "scan", scan)
    cfg = IndexCfg(flat_threshold=1000, train_size=500, chunk_rows=256)
    tracemalloc.start()
    index = latest(store, cfg).build("image")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < vectors.nbytes / 2  # all of them as float32: 24 MB
    assert recall_at_k(index.search(queries, 10)[1], truth) >= 0.95


def test_damaged_or_foreign_index_files_are_rebuilt(data, tmp_path):
    vectors, queries, _ = data
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(vectors[:300], "a"))
    store.add_items(_records(vectors[300:340], "s", modality="audio"))
    cfg = IndexCfg(flat_threshold=100, nlist=8, train_size=300)
    image_dir, audio_dir = latest(store, cfg).directory("image"), latest(store, cfg).directory("audio")
    latest(store, cfg).current("image")[0], latest(store, cfg).current("audio")[0]

    def self_retrieval(index) -> float:
        return float(np.mean(index.search(vectors[:300], 1)[1][:, 0] == np.arange(300)))

    damaged = bytearray((image_dir / "seg-0.faiss").read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 5000] = np.random.default_rng(0).bytes(5000)
    (image_dir / "seg-0.faiss").write_bytes(damaged)
    assert self_retrieval(latest(store, cfg).current("image")[0]) > 0.95  # checksum mismatch -> rebuilt

    vectors_file = image_dir / "rows.f16"
    garbled = np.memmap(vectors_file, np.float16, "r+")
    garbled[: 100 * 1024] = 3e4  # scores far outside [-1, 1] for a search that skips the full check
    garbled.flush()
    del garbled
    before = vectors_file.read_bytes()
    indices = latest(store, cfg)
    assert indices.status("image")["fresh"] and "damaged" in indices.status("image", check=True)  # info --check
    loaded = latest(store, cfg).current("image", persist=False)[0]  # a search checks the vectors too: rebuilt in memory
    assert self_retrieval(loaded) > 0.95 and vectors_file.read_bytes() == before  # and writes nothing
    assert self_retrieval(latest(store, cfg).current("image")[0]) > 0.95  # a writer checks every checksum and rebuilds

    shutil.rmtree(image_dir)
    shutil.copytree(audio_dir, image_dir)  # another modality's index copied in
    assert len(latest(store, cfg).current("image")[0]) == 300

    (image_dir / "meta.json").write_text("[1, 2]")  # JSON, but not an index description
    assert latest(store, cfg).status("image")["damaged"] and len(latest(store, cfg).current("image")[0]) == 300
    (image_dir / "meta.json").write_text('{"format": 2}')  # no kind
    assert len(latest(store, cfg).current("image")[0]) == 300


def test_a_repeated_version_number_is_not_taken_as_fresh(data, tmp_path):
    """A lost newest manifest makes the next commit reuse its version number: the commit time tells them apart."""
    vectors, queries, _ = data
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(vectors[:100], "a"))
    latest(store).current("image")[0]
    store.add_items(_records(vectors[100:130], "b"))
    version = store.items().version
    latest(store).current("image")[0]  # covers the newest version
    manifests = tmp_path / "db" / "items.lance" / "_versions"
    min(manifests.glob("*.manifest"), key=lambda p: int(p.stem)).unlink()  # names count down: the newest
    (manifests / "latest_version_hint.json").unlink(missing_ok=True)  # lost: the table is one version back
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(_records(vectors[200:203], "c"))  # the same version number again, other rows
    assert store.items().version == version
    index = latest(store).current("image")[0]
    assert sorted(index.ids) == sorted(store.items().ids("image"))


def test_an_emptied_index_loads_without_a_rebuild(tmp_path, caplog):
    """Every row of a modality re-embedded as another (``--as``) leaves an index of 0 rows: it loads as one,
    not as "unreadable" on every run and search."""
    import logging

    from xsearch.index import IndexSet
    from xsearch.modalities import Modality
    from xsearch.store import Database, ItemRecord

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=8)
    store.add_items([ItemRecord("/a.png", Modality.DEPTH, np.ones(8, np.float32))])
    assert len(IndexSet.latest(store).current(Modality.DEPTH)[0]) == 1
    store.upsert_items([ItemRecord("/a.png", Modality.IMAGE, np.ones(8, np.float32))])
    assert len(IndexSet.latest(store).current(Modality.DEPTH)[0]) == 0
    with caplog.at_level(logging.WARNING):
        assert len(IndexSet.latest(store).current(Modality.DEPTH)[0]) == 0
        status = IndexSet.latest(store).status(Modality.DEPTH, check=True)
    assert "unreadable" not in caplog.text and status["fresh"] and "damaged" not in status
