"""Warm search: a search of an unchanged database reads nothing it already has, searches run side by side
with the answers they give one at a time, and a commit never changes what an earlier snapshot searches.
(The answers themselves, for every kind of query, are compared with eb2017c's in test_compatibility.py.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from xsearch import Collection, Modality, Query
from xsearch.index import IndexSet
from xsearch.store import Database, ItemRecord, TableView
from xsearch.testing.synthetic import clustered_embeddings


def _records(vectors, prefix: str, modality: Modality) -> list[ItemRecord]:
    return [ItemRecord(f"/{prefix}/{i}", modality, v, sha256=f"{prefix}{i:062x}") for i, v in enumerate(vectors)]


@pytest.fixture
def collection(tmp_path):
    db = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    db.add_items(_records(clustered_embeddings(3000, seed=1), "t", Modality.TEXT))
    db.add_items(_records(clustered_embeddings(500, seed=2), "i", Modality.IMAGE))
    for modality in (Modality.TEXT, Modality.IMAGE):
        IndexSet.latest(db).current(modality)[0]
    with Collection.open(tmp_path / "db") as opened:
        yield opened


def _answer(collection: Collection, i: int, **options) -> list[tuple]:
    found = collection.search(Query.item(i), k=10, **options)
    return [(r.id, round(r.score, 6), round(r.calibrated, 6)) for r in found]


def test_a_warm_search_reads_no_version_list_and_opens_no_table(collection, monkeypatch):
    first = _answer(collection, 7)

    def refuse(*args, **kwargs):
        raise AssertionError("a warm search read what it already had")

    monkeypatch.setattr(TableView, "versions", refuse)  # a snapshot's key: renewed by a version check only
    monkeypatch.setattr(Database, "_view", refuse)  # no table opened
    monkeypatch.setattr(TableView, "scan", refuse)  # rows by position, never a filtered scan
    assert _answer(collection, 7) == first
    assert _answer(collection, 7, target="all") == _answer(collection, 7, target="all")


def test_searches_side_by_side_answer_as_one_at_a_time(collection):
    kinds = [{}, {"target": "all"}, {"target": "text", "where": "id >= 100"}, {"path": "/t/1*"}]
    queries = [(i, kind) for i in range(0, 3000, 250) for kind in range(len(kinds))]
    alone = {(i, kind): _answer(collection, i, **kinds[kind]) for i, kind in queries}
    together: dict = {}
    failures: list[BaseException] = []

    def search(offset: int) -> None:
        try:
            for i, kind in queries[offset:] + queries[:offset]:
                together.setdefault((i, kind), []).append(_answer(collection, i, **kinds[kind]))
        except BaseException as exc:  # noqa: BLE001 (reported below, in the test's thread)
            failures.append(exc)

    threads = [threading.Thread(target=search, args=(n * 7,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert all(answers == [alone[key]] * 4 for key, answers in together.items()) and len(together) == len(alone)


def test_a_commit_changes_a_copy_of_the_index_never_the_one_an_earlier_snapshot_searches(collection, tmp_path):
    engine = collection.engine
    before = engine.snapshot()
    index = engine.index(Modality.TEXT, before.items)
    rows, ids = len(index), index.ids.copy()
    scores, found = index.search(clustered_embeddings(3, seed=9), 10)
    Database.open(tmp_path / "db", model_id="tiny_test").add_items(
        _records(clustered_embeddings(40, seed=5), "late", Modality.TEXT)
    )
    Database.open(tmp_path / "db", model_id="tiny_test").delete_items(ids=[0, 1, 2])
    after = engine.snapshot()
    assert after is not before and engine.snapshot() is after  # renewed once, then held
    topped = engine.index(Modality.TEXT, after.items)
    assert topped is not index and len(topped) == rows + 40 - 3
    assert len(index) == rows and np.array_equal(index.ids, ids)  # the earlier snapshot's index is as it was
    again, found_again = index.search(clustered_embeddings(3, seed=9), 10)
    np.testing.assert_array_equal(found_again, found)
    np.testing.assert_allclose(again, scores)
    assert {0, 1, 2}.isdisjoint(topped.ids) and 0 in index.ids


def test_rows_held_in_memory_answer_as_rows_read_from_disk(collection, tmp_path, monkeypatch):
    from xsearch.options import EngineSettings

    kinds = [{}, {"target": "all"}, {"where": "id >= 100"}, {"path": "/t/1*"}]
    on_disk = {(i, n): _answer(collection, i, **kind) for i in (3, 1200, 3100) for n, kind in enumerate(kinds)}
    with Collection.open(tmp_path / "db", settings=EngineSettings(hold_rows=True)) as holding:
        view = holding.engine.snapshot().items.view
        assert view.wait_held(30)
        assert view.held_bytes > 3500 * 20  # every row's uri, hash and modality, at least

        read = []
        original = view._dataset.take
        monkeypatch.setattr(view, "_dataset", _Spy(view._dataset, lambda *a, **k: read.append(k) or original(*a, **k)))
        held = {(i, n): _answer(holding, i, **kind) for i in (3, 1200, 3100) for n, kind in enumerate(kinds)}
        row = view.rows([3], ["id", "uri", "embedding", "thumbnail", "sha256"])[3]
    assert held == on_disk
    # From memory, but for the large columns: the query item's embedding, a thumbnail asked for.
    assert {tuple(k["columns"]) for k in read} == {("embedding",), ("embedding", "thumbnail")}
    assert row["uri"] == "/t/3" and len(row["embedding"]) == 1024 and row["sha256"] == f"t{3:062x}"


class _Spy:
    """A dataset whose ``take`` is observed; everything else is the dataset's own."""

    def __init__(self, dataset, take):
        self._dataset, self.take = dataset, take

    def __getattr__(self, name):
        return getattr(self._dataset, name)
