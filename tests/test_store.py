"""The LanceDB store: schema, model-id guard, upserts, crash safety under SIGKILL, concurrent readers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from xsearch.errors import ModelMismatchError, StoreError
from xsearch.modalities import Modality
from xsearch.store import Database, ItemFilter, ItemRecord, embeddings_to_numpy


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 1024)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(n: int, prefix: str = "f", seed: int = 0, modality: str = "image") -> list[ItemRecord]:
    vectors = unit(n, seed)
    return [
        ItemRecord(f"{prefix}{i}.jpg", modality, vectors[i], sha256=f"{i:064x}", size=i, mtime=1.5 * i)
        for i in range(n)
    ]


def test_add_and_read_back(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    recs = records(5)
    recs[0].metadata = {"width": 640, "height": 480}
    store.add_items(recs)
    store.add_items(records(3, prefix="g", seed=1, modality="audio"))
    assert store.items().count() == 8 and store.items().count("audio") == 3
    ids, vectors = store.items().vectors([0, 4, 7])
    assert list(ids) == [0, 4, 7]
    np.testing.assert_array_equal(vectors[:2], unit(5)[[0, 4]])
    row = store.items().scan(["uri", "width", "height", "model_id"], ItemFilter(ids=[0])).to_pylist()[0]
    assert row == {"uri": "f0.jpg", "width": 640, "height": 480, "model_id": "tiny_test"}


def test_readable_without_xsearch(tmp_path):
    Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024).add_items(records(4))
    table = lancedb.connect(str(tmp_path / "db")).open_table("items").to_arrow()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 1024)
    assert embeddings_to_numpy(table["embedding"]).shape == (4, 1024)
    frame = lancedb.connect(str(tmp_path / "db")).open_table("items").to_pandas()
    assert sorted(frame["uri"]) == [f"f{i}.jpg" for i in range(4)]


def test_model_id_mismatch_is_refused(tmp_path):
    Database.open(tmp_path / "db", model_id="imagebind_huge", embed_dim=1024).add_items(records(1))
    with pytest.raises(ModelMismatchError, match="holds embeddings of model .imagebind_huge., not .tiny_test."):
        Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    assert Database.open(tmp_path / "db").model_id == "imagebind_huge"


def test_missing_database(tmp_path):
    with pytest.raises(StoreError, match="no xsearch database"):
        Database.open(tmp_path / "nothing", create=False)


def test_bad_vectors_are_refused_before_writing(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    bad = records(3)
    bad[1].embedding = np.full(1024, np.nan, np.float32)
    with pytest.raises(StoreError, match="f1.jpg: embedding contains NaN"):
        store.add_items(bad)
    assert store.items().count() == 0
    with pytest.raises(StoreError, match="512 values, expected 1024"):
        store.add_items([ItemRecord("x.jpg", "image", np.ones(512, np.float32))])


def test_upsert_keeps_ids_and_replaces_rows(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(records(3))
    changed = records(2, seed=9)  # f0, f1 with new vectors
    changed.append(ItemRecord("new.jpg", "image", unit(1, 5)[0]))
    store.upsert_items(changed)
    rows = {r["uri"]: r["id"] for r in store.items().scan(["uri", "id"]).to_pylist()}
    assert rows == {"f0.jpg": 0, "f1.jpg": 1, "f2.jpg": 2, "new.jpg": 3}
    np.testing.assert_array_equal(store.items().vectors([0])[1][0], unit(2, 9)[0])


def test_delete_by_uri_and_id(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(records(5))
    store.delete_items(uris=["f1.jpg"], ids=[3])
    assert sorted(store.items().ids()) == [0, 2, 4]


def test_errors_table(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.record_errors([("bad.jpg", "image", "decode", "bad.jpg: truncated"), ("x.wav", "audio", "decode", "m")])
    store.record_errors([("bad.jpg", "image", "decode", "bad.jpg: still truncated")])
    rows = {r["uri"]: r["message"] for r in store.error_rows().to_pylist()}
    assert rows == {"bad.jpg": "bad.jpg: still truncated", "x.wav": "m"}
    store.clear_errors(["x.wav"])
    assert store.error_rows().num_rows == 1


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from xsearch.store import ItemRecord, Database
    store = Database.open(sys.argv[1], model_id="tiny_test", embed_dim=1024)
    batch = int(sys.argv[2])
    rng = np.random.default_rng(batch)
    print("ready", flush=True)
    while True:
        vectors = rng.standard_normal((50, 1024)).astype(np.float32)
        store.add_items([ItemRecord(f"b{batch}/{i}", "image", vectors[i]) for i in range(50)])
        batch += 1
    """
)


def _batches(store: Database) -> dict[str, int]:
    uris = store.items().scan(["uri"])["uri"].to_pylist()
    counts: dict[str, int] = {}
    for uri in uris:
        counts[uri.split("/")[0]] = counts.get(uri.split("/")[0], 0) + 1
    return counts


def test_sigkill_mid_write_never_half_writes(tmp_path):
    """Kill a writer with SIGKILL at random moments, 6 times; check every batch is whole, nothing committed
    is lost, and a reader in this process sees only whole batches while the writer runs."""
    db = tmp_path / "db"
    Database.open(db, model_id="tiny_test", embed_dim=1024)
    rng = np.random.default_rng(0)
    committed = 0
    next_batch = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(next_batch * 1000)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + rng.uniform(0.3, 1.5)
        reader = Database.open(db)
        while time.monotonic() < deadline:  # concurrent reads while the writer appends
            assert all(n == 50 for n in _batches(reader).values())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        next_batch += 1
        store = Database.open(db)
        counts = _batches(store)
        assert all(n == 50 for n in counts.values()), counts
        assert sum(counts.values()) >= committed
        committed = sum(counts.values())
    assert committed > 0


def test_views_read_one_version_and_have_no_write_method(tmp_path):
    """A view (the latest, a snapshot's, the moments') reads the version it was made at, whatever is
    committed after, and cannot write: writes go through the ``Database``."""
    from xsearch.moments import MomentCfg

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(records(3))
    store.keep_moments(MomentCfg())
    latest, snapshot = store.items(), store.snapshot()
    store.add_items(records(2, prefix="g", seed=1))
    assert latest.count() == snapshot.items.count() == 3 and store.items().count() == 5
    assert snapshot.items.key == latest.key != store.items().key
    writes = ["add_items", "upsert_items", "update_columns", "delete_items", "record_errors", "clear_errors",
              "replace_moments", "sweep_moments", "keep_moments", "compact"]  # fmt: skip
    assert all(callable(getattr(store, name)) for name in writes)
    for view in (latest, store.moments(), snapshot.items, snapshot.moments, store.errors()):
        for name in writes:
            with pytest.raises(AttributeError):
                getattr(view, name)([])


def test_a_lease_note_dated_ahead_of_this_clock_pins_nothing(tmp_path):
    """A note from a host whose clock is a day ahead (or one that says 1e20) does not keep old versions; a
    note a few seconds ahead (ordinary skew) still does."""
    import json
    import time

    from xsearch.store import READERS, held_since

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=8)
    store.add_items([ItemRecord("/a.txt", Modality.TEXT, np.ones(8, np.float32))])
    store.add_items([ItemRecord("/b.txt", Modality.TEXT, np.ones(8, np.float32))])
    versions = store.items().versions()
    (tmp_path / "db" / READERS).mkdir()
    notes = {"ahead": time.time() + 86_400, "huge": 1e20, "skewed": time.time() + 30}
    for name, at in notes.items():
        note = {"version": versions[0]["version"], "at": at, "pid": os.getpid(), "host": socket.gethostname()}
        (tmp_path / "db" / READERS / f"{name}.json").write_text(json.dumps(note))
    assert held_since(store.files, versions) is not None  # the skewed one holds
    assert sorted(p.name for p in (tmp_path / "db" / READERS).iterdir()) == ["huge.json", "skewed.json"]
    (tmp_path / "db" / READERS / "skewed.json").unlink()
    assert held_since(store.files, versions) is None


def test_a_readers_folder_the_writer_cannot_list_keeps_every_version(tmp_path, monkeypatch, caplog):
    """A read-only or unlistable ``readers/`` folder (another user's, say) made every index run fail with a line
    blaming the whole database; which versions readers hold is then unknown, so every one is kept."""
    import errno
    import logging

    from xsearch.store import READERS
    from xsearch.store.side_files import SideFiles

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=8)
    for i in range(3):
        store.upsert_items([ItemRecord("/a.txt", Modality.TEXT, np.full(8, i + 1, np.float32))])
    before = len(store.items().versions())
    real = SideFiles.names

    def refused(self, folder, suffix=""):
        if folder == READERS:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(self, folder, suffix)

    monkeypatch.setattr(type(store.files), "names", refused)
    (tmp_path / "db" / READERS).mkdir(exist_ok=True)
    with caplog.at_level(logging.WARNING):
        store.compact()
    assert "cannot list readers' notes (Permission denied); every version is kept" in caplog.text
    assert len(store.items().versions()) >= before  # nothing removed (the merge may add one)
    monkeypatch.undo()
    store.compact()
    assert len(store.items().versions()) == 1


def test_a_run_leaves_each_table_at_its_live_size(tmp_path, tiny_model, monkeypatch):
    """Compaction kept a minute of versions for readers without a lease, so a table sat at about twice its
    live size between runs (and 11 runs in a minute at 14x). Every reader of xsearch takes a lease, so only
    leased versions are kept: after a run that re-embedded every file, one version is left."""
    from xsearch import Collection
    from xsearch.encoder import Encoder
    from xsearch.testing.media import gradient_image

    monkeypatch.delenv("XSEARCH_KEEP_SECONDS", raising=False)
    media = tmp_path / "media"
    media.mkdir()
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    for run in range(3):
        for i in range(8):
            gradient_image(media / f"p{i}.jpg", seed=10 * run + i)  # new bytes: every row rewritten
        collection.index([media], workers=0)
        assert len(collection.store.items().versions()) == 1
    info = collection.info()  # a leased reader: it holds what it reads, and releases it
    assert info["items"] == 8 and not list((tmp_path / "db" / "readers").glob("*.json"))
    monkeypatch.setenv("XSEARCH_KEEP_SECONDS", "60")  # other tools reading the tables: a minute kept
    gradient_image(media / "p0.jpg", seed=99)
    collection.index([media], workers=0)
    assert len(collection.store.items().versions()) > 1


def test_a_full_disk_skips_compaction_after_removing_what_no_reader_holds(tmp_path, monkeypatch, caplog):
    """Compaction writes its merged copy before old versions go; on a full disk that write fails. Removing
    old versions writes nothing, so it comes first, and a merge that finds no room is skipped with a
    warning: the run does not fail, and the room it could free is freed."""
    import datetime as dt
    import errno
    import logging

    import lancedb.table

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=8)
    for i in range(6):  # six versions, five of them superseded
        store.upsert_items([ItemRecord("/a.txt", Modality.TEXT, np.full(8, i + 1, np.float32))])
    before = len(store.items().versions())

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lancedb.table.LanceTable, "compact_files", disk_full)
    with caplog.at_level(logging.WARNING):
        store.compact(min_keep=dt.timedelta(0))
    assert "not compacted (disk full)" in caplog.text
    assert len(store.items().versions()) < before  # removed, though nothing could be merged
    assert store.items().count() == 1


@pytest.fixture
def small_volume(tmp_path):
    """A 48 MB filesystem of its own (tmpfs; needs root, else the test is skipped, visibly)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(volume)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()[:80]}): needs root")
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def test_a_database_that_filled_its_disk_recovers_by_itself(small_volume):
    """Superseded versions, small fragments to merge and a disk with no room left: compaction frees what no
    reader holds instead of failing for want of room for its merged copy."""
    import datetime as dt

    store = Database.open(small_volume / "db", model_id="tiny_test", embed_dim=1024)
    vectors = np.random.default_rng(0).random((2000, 1024), np.float32)
    rows = [ItemRecord(f"/{i}.txt", Modality.TEXT, v) for i, v in enumerate(vectors)]
    for _ in range(3):  # superseded versions: room that no reader holds
        store.upsert_items(rows[:1000])
    for start in range(1000, 2000, 200):  # small fragments: a merge to write
        store.add_items(rows[start : start + 200])
    filler = small_volume / "filler"
    with open(filler, "wb") as handle:  # the rest of the volume
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError:
            pass
    free_before = os.statvfs(small_volume).f_bavail
    store.compact(min_keep=dt.timedelta(0))
    assert os.statvfs(small_volume).f_bavail > free_before + 1000  # blocks of 4 KB: over 4 MB freed
    assert store.items().count() == 2000
    filler.unlink()
    store.compact(min_keep=dt.timedelta(0))  # with room again, the merge is made
    assert store.items().count() == 2000


def test_a_media_folder_given_as_the_database_is_refused(tmp_path):
    """Swapped arguments (``--db`` at a folder of photos) must not turn that folder into a database."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(StoreError, match=r"photos: a folder holding other files \(a.jpg\), not an xsearch database"):
        Database.open(photos, model_id="tiny_test", embed_dim=8)
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg"]
    Database.open(tmp_path / "empty", model_id="tiny_test", embed_dim=8)  # new or empty folders are fine
    (tmp_path / "empty2").mkdir()
    Database.open(tmp_path / "empty2", model_id="tiny_test", embed_dim=8)
