"""The store keeps what it has: one writer, ids never reused or guessed, versions readers hold kept through
compaction, damage and full disks said in one line, a lost meta table rebuilt, the size stable over re-runs.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xsearch import Collection, Modality
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.store import Database, ItemRecord, writer_lock
from xsearch.testing.media import gradient_image

from trials import basis_vector, numbered_pictures, tiny_checkpoint

runner = CliRunner()


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100:3000] = bytes(2900)
    path.write_bytes(data)


DAMAGE = {
    "garbled data file": lambda db: _garble(sorted((db / "items.lance" / "data").glob("*.lance"))[0]),
    "items table deleted": lambda db: __import__("shutil").rmtree(db / "items.lance"),
    "errors table deleted": lambda db: __import__("shutil").rmtree(db / "errors.lance"),
    "manifest truncated": lambda db: (
        min((db / "items.lance" / "_versions").glob("*.manifest"), key=lambda p: int(p.stem)).open("r+b").truncate(20)
    ),
}


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, tiny_model):
    checkpoint = tiny_checkpoint(tmp_path, tiny_model)
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    db = tmp_path / "db"
    with writer_lock(db):  # as a running `xsearch index` holds it
        result = runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint)])
        assert result.exit_code == 2
        line = result.output.strip().splitlines()[-1]
        assert "another xsearch is writing this database" in line and "pid " in line
    result = runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["indexed"] == 1  # free again once released


def test_ids_are_never_reused(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord(f"/{i}.jpg", Modality.IMAGE, basis_vector(i)) for i in range(3)])  # ids 0, 1, 2
    store.delete_items(ids=[2])  # the highest, as --prune would
    store.add_items([ItemRecord("/new.jpg", Modality.IMAGE, basis_vector(5))])
    assert store.items().lookup("/new.jpg", ["id"])["id"] == 3
    reopened = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    reopened.delete_items(ids=[3])
    reopened.add_items([ItemRecord("/newer.jpg", Modality.IMAGE, basis_vector(6))])
    assert reopened.items().lookup("/newer.jpg", ["id"])["id"] == 4


def test_a_database_path_that_is_a_file_is_one_line(tmp_path, tiny_model):
    checkpoint = tiny_checkpoint(tmp_path, tiny_model)
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    (tmp_path / "notes.txt").write_text("not a database")
    argv = ["index", str(media), "--db", str(tmp_path / "notes.txt"), "--checkpoint", str(checkpoint)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "notes.txt: exists and is not a directory" in result.output
    assert (tmp_path / "notes.txt").read_text() == "not a database"


def test_re_runs_keep_the_database_size_stable(tmp_path, tiny_model, monkeypatch):
    import os

    from xsearch import Collection
    from xsearch.encoder import Encoder

    monkeypatch.delenv("XSEARCH_KEEP_SECONDS", raising=False)  # the default: nothing kept without a lease
    media = numbered_pictures(tmp_path / "media", 6)
    (media / "broken.jpg").write_bytes(b"not a jpeg")
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))

    def size() -> int:
        return sum(p.stat().st_size for p in (tmp_path / "db").rglob("*") if p.is_file())

    collection.index([media], workers=0)
    first = size()
    for run in range(12):  # no change, then touched files: stats rewritten, nothing re-embedded
        if run % 2:
            for path in media.iterdir():
                os.utime(path, (time.time() + run, time.time() + run))
        report = collection.index([media], workers=0)
        assert report.indexed == report.updated == 0
    assert size() < first * 1.3  # without compaction and cleanup: ~3x after 12 runs


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_reported_as_damage_in_one_line(tmp_path, tiny_model, damage):
    checkpoint = tiny_checkpoint(tmp_path, tiny_model)
    media = numbered_pictures(tmp_path / "media", 3)
    db = tmp_path / "db"
    index = ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "--workers", "0", "-q"]
    assert runner.invoke(app, index).exit_code == 0
    DAMAGE[damage](db)
    table = "errors.lance" if "errors" in damage else "items.lance"
    for argv in (["search", "--db", str(db), "--item", "1"], ["info", "--db", str(db)], index):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (argv[0], result.output)
        assert result.output.strip().splitlines()[-1].startswith(f"error: database damaged: {db / table} (")


def test_disk_full_and_read_only_are_one_line():
    import errno

    from xsearch.errors import DatabaseDamaged
    from xsearch.store.lance_errors import storage_problem

    db = Path("/data/db")
    assert "disk full" in str(storage_problem(db, OSError(errno.ENOSPC, "No space left on device")))
    lance_full = RuntimeError("LanceError(IO): Generic LocalFileSystem error: No space left on device (os error 28)")
    assert "disk full" in str(storage_problem(db, lance_full))
    assert "read-only file system" in str(storage_problem(db, OSError(errno.EROFS, "Read-only file system")))
    damaged = storage_problem(db, RuntimeError("lance error: LanceError(IO): file size is too small, /x/y.rs:1:2"))
    assert (
        isinstance(damaged, DatabaseDamaged) and str(damaged) == "database damaged: /data/db (file size is too small)"
    )
    assert storage_problem(db, KeyError("a bug")) is None  # not a storage problem: surfaces as a bug


def test_results_drop_hits_whose_rows_are_gone(served, monkeypatch):
    """An index damaged in a way its checks missed may name a row that is not there: the search answers
    with the rows that are, ranked 1, 2, ... (here the view hides one row the index holds)."""
    from xsearch import Query
    from xsearch.store import TableView

    _, collection = served
    whole = collection.search(Query.item(0), target="image", k=3, dedup=False)
    assert len(whole) == 3
    gone = whole[1].id
    real_rows = TableView.rows

    def rows_without_one(self, ids, columns):
        return {i: row for i, row in real_rows(self, ids, columns).items() if i != gone}

    monkeypatch.setattr(TableView, "rows", rows_without_one)
    results = collection.search(Query.item(0), target="image", k=3, dedup=False)
    assert [r.id for r in results] == [whole[0].id, whole[2].id] and [r.rank for r in results] == [1, 2]


def test_a_lost_meta_table_is_rebuilt_from_the_rows_and_another_model_refused(tmp_path):
    import shutil

    from xsearch.errors import ModelMismatchError
    from xsearch.store import Database, ItemRecord

    vector = np.ones(1024, np.float32) / 32
    Database.open(tmp_path / "db", model_id="tiny_test:random-0", embed_dim=1024).add_items(
        [ItemRecord("/a.jpg", Modality.IMAGE, vector)]
    )
    shutil.rmtree(tmp_path / "db" / "meta.lance")
    with pytest.raises(ModelMismatchError, match="random-0', not 'tiny_test:random-1'"):
        Database.open(tmp_path / "db", model_id="tiny_test:random-1", embed_dim=1024)
    shutil.rmtree(tmp_path / "db" / "meta.lance", ignore_errors=True)
    reopened = Database.open(tmp_path / "db", model_id="tiny_test:random-0", embed_dim=1024)
    assert reopened.model_id == "tiny_test:random-0" and reopened.items().count() == 1


def test_the_id_high_water_mark_is_never_guessed(tmp_path):
    from xsearch.errors import DatabaseDamaged, StoreError
    from xsearch.store import Database, ItemRecord

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    record = ItemRecord("/a.jpg", Modality.IMAGE, np.ones(1024, np.float32) / 32)
    store.add_items([record])
    (tmp_path / "db" / "next_id").write_text("garbage")
    with pytest.raises(DatabaseDamaged, match="next_id .*not an id"):
        store.add_items([ItemRecord("/b.jpg", Modality.IMAGE, record.embedding)])
    (tmp_path / "db" / "next_id").write_text(str(2**63 - 1))
    with pytest.raises(StoreError, match="item ids are exhausted"):
        store.add_items([ItemRecord("/b.jpg", Modality.IMAGE, record.embedding)])


def test_a_missing_data_file_is_damage_not_a_bug(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    collection.index([media], workers=0)
    for data in (tmp_path / "db" / "items.lance" / "data").glob("*.lance"):
        data.unlink()
    result = runner.invoke(app, ["info", "--db", str(tmp_path / "db")])
    assert result.exit_code == 2 and "database damaged" in result.output and "(missing)" in result.output


def test_compaction_keeps_the_versions_readers_hold_and_only_those(tmp_path):
    import datetime as dt

    from xsearch.errors import StoreError
    from xsearch.store import Database, ItemRecord, ReaderLease

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    vector = np.ones(1024, np.float32) / 32
    store.add_items([ItemRecord("/a.jpg", Modality.IMAGE, vector)])
    lease = ReaderLease(store.path)
    held = store.snapshot(lease)  # a search (or serve) reading this version
    for i in range(3):
        store.upsert_items([ItemRecord("/a.jpg", Modality.IMAGE, vector * (1 + i))])  # rewrites the row
    store.compact(min_keep=dt.timedelta(0))
    assert held.items.count() == 1 and held.items.scan(["uri"]).num_rows == 1  # its files are still there
    versions = len(store.items().versions())
    lease.release()
    store.compact(min_keep=dt.timedelta(0))
    assert len(store.items().versions()) < versions  # released: reclaimed
    with pytest.raises(StoreError, match="database damaged"):  # what a reader without a lease would meet
        held.items.scan(["uri", "embedding"]).to_pylist()


def test_a_dead_readers_lease_expires(tmp_path):
    import json as json_module

    from xsearch.store import READERS, Database, held_since

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    (store.path / READERS).mkdir()
    note = {"version": 1, "at": time.time(), "pid": 2**22 + 12345, "host": socket.gethostname()}  # no such pid
    (store.path / READERS / "dead.json").write_text(json_module.dumps(note))
    assert held_since(store.files, store.items().versions()) is None
    assert not (store.path / READERS / "dead.json").exists()
