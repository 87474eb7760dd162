"""Reliability, round 3: the server as an attack surface, query inputs bounded like indexed files. Each test
reproduces the probe's case (generated hostile inputs, slow clients on 127.0.0.1 only, bounded in count and
time) and checks the bound."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from xsearch import Collection, Modality
from xsearch.cli.main import app as cli
from xsearch.encoder import Encoder
from xsearch.errors import DecodeError
from xsearch.preprocess import preprocess_file
from xsearch.server import create_app
from xsearch.testing.media import gradient_image, tone, write_wav

from measure import peak_rss_growth_mb

runner = CliRunner()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("hostile")
    for i in range(3):
        gradient_image(root / f"p{i}.jpg", seed=i)
    write_wav(root / "tone.wav", tone(2.0, 16000), 16000)
    collection = Collection.open(
        root.parent / "hostile.db", encoder=Encoder(tiny_model, device="cpu", precision="fp32")
    )
    collection.index([root], workers=0)
    return root, collection


# 1 and 9. a filter cannot crash the process, nor escape the target through a comment ----------------------------


def test_a_filter_of_40000_terms_is_refused_in_one_line(served):
    _, collection = served
    client = TestClient(create_app(collection))
    huge = " OR ".join(f"width = {i}" for i in range(40_000))  # 520 KB: it segfaulted Lance
    answer = client.post("/api/search", data={"item": ["0"], "where": huge})
    assert answer.status_code == 400 and "characters, more than" in answer.json()["detail"]
    many = " OR ".join(f"width = {i}" for i in range(300))
    assert "AND/OR/NOT, more than" in client.post("/api/search", data={"item": ["0"], "where": many}).json()["detail"]
    assert client.post("/api/search", data={"item": ["0"], "k": "2"}).status_code == 200  # still serving


@pytest.mark.parametrize(
    "payload", ["1=1) OR (modality = 'audio' --", "1=1 /* ) OR (modality = 'audio' */", "width > 0; DROP"]
)
def test_a_filter_cannot_escape_its_target(served, payload):
    _, collection = served
    answer = TestClient(create_app(collection)).post(
        "/api/search", data={"item": ["0"], "target": "image", "where": payload}
    )
    assert (
        answer.status_code == 400
        and "not allowed in a filter" in answer.json()["detail"]
        or ("unbalanced" in answer.json()["detail"])
    )


def test_rows_a_filter_selects_are_rechecked_against_the_target(served):
    from xsearch.store import ItemFilter

    _, collection = served
    rows = collection.store.items().scan(["id"], ItemFilter(modality=Modality.IMAGE, where="id >= 0"))
    assert rows.num_rows == 3 and rows.column_names == ["id"]


# 2. query inputs are bounded like indexed files -----------------------------------------------------------------


def test_a_picture_many_times_longer_than_wide_is_refused_before_it_is_scaled(tmp_path):
    path = tmp_path / "line.png"
    Image.new("RGB", (20_000, 1)).save(path)  # 99 bytes; scaled, 4.5M x 224 pixels (5.1 GB)
    with pytest.raises(DecodeError, match="longer than 50 times its width"):
        preprocess_file(path, "image")
    with pytest.raises(DecodeError, match="longer than 50 times its width"):
        preprocess_file(path, "depth")
    panorama = tmp_path / "panorama.png"
    gradient_image(panorama, size=(2400, 300))  # 8:1 is a picture
    assert preprocess_file(panorama, "image").shape == (3, 224, 224)


@pytest.mark.parametrize("rate", [22_051, 44_101])
def test_an_odd_sample_rate_is_resampled_in_bounded_memory(tmp_path, rate):
    """torchaudio's kernel for 22,051 Hz -> 16 kHz needed 6.9 GB; libswresample takes these rates."""
    path = write_wav(tmp_path / "odd.wav", tone(1.0, rate, noise=0.0), rate)
    reference = write_wav(tmp_path / "even.wav", tone(1.0, 22_050, noise=0.0), 22_050)
    growth = peak_rss_growth_mb(f"x = preprocess_file({str(path)!r}, 'audio')")
    assert growth < 300, f"{growth:.0f} MB"
    odd, even = preprocess_file(path, "audio"), preprocess_file(reference, "audio")
    assert float((odd - even).abs().mean()) < 0.1  # the same tone, heard the same


# 3. slow and large requests ---------------------------------------------------------------------------------------


def test_a_declared_oversized_body_is_refused_before_it_is_read(served):
    _, collection = served
    client = TestClient(create_app(collection, max_upload_bytes=1 << 20))
    fields = {"text": ["x" * 600_000] * 16}  # 9.6 MB of text fields: past 1 MB of uploads + 8 MB of fields
    answer = client.post("/api/search", data=fields)
    assert answer.status_code == 413 and "larger than" in answer.json()["detail"]
    assert "1 MB of uploads and 8 MB of fields" in answer.json()["detail"]  # not "larger than 9 MB"


@pytest.fixture
def live(served):
    """The app on a real socket (127.0.0.1, an ephemeral port), with a 1 s body deadline."""
    import uvicorn

    _, collection = served
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    from xsearch.server.protocol import TimelyH11Protocol

    class Hasty(TimelyH11Protocol):
        HEAD_SECONDS = 1.0

    app = create_app(collection, body_seconds=1.0, allowed_hosts=["127.0.0.1", "localhost"])
    server = uvicorn.Server(uvicorn.Config(app, http=Hasty, log_level="warning", limit_concurrency=32))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _raw(port: int, request: bytes, wait: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        time.sleep(wait)
        return conn.recv(65536)


def test_a_client_that_says_nothing_is_disconnected(live):
    silent = [socket.create_connection(("127.0.0.1", live), timeout=10) for _ in range(20)]
    time.sleep(2.0)  # past the 1 s head deadline
    assert all(conn.recv(1) == b"" for conn in silent)  # closed by the server
    for conn in silent:
        conn.close()
    assert _raw(live, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_a_slow_body_is_cut_and_a_foreign_host_or_origin_refused(live):
    head = (
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 100\r\n\r\nitem=0"
    )
    slow = _raw(live, head, wait=2.0)  # 6 of 100 bytes, then nothing
    assert slow.startswith(b"HTTP/1.1 408"), slow[:200]
    rebound = _raw(live, b"GET /api/info HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert rebound.startswith(b"HTTP/1.1 400"), rebound[:200]  # DNS rebinding: a foreign name
    body = b"item=0"
    forged = _raw(
        live,
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\n\r\n" + body,
    )
    assert forged.startswith(b"HTTP/1.1 403"), forged[:200]
    fine = _raw(
        live,
        f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{live}\r\nOrigin: http://127.0.0.1:{live}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"
        + body,
    )
    assert fine.startswith(b"HTTP/1.1 200"), fine[:200]


# 4. text: long words and long texts are bounded --------------------------------------------------------------------


def test_long_words_and_texts_are_bounded():
    from xsearch.preprocess.text import MAX_WORD_BYTES, Tokenizer

    tokenizer = Tokenizer()
    ids = tokenizer(["a" * 100_000, "word " * 500_000])  # 100 k letters took 222 s; 2.5 MB of text too
    assert ids.shape == (2, 77) and int((ids[1] > 0).sum()) == 77
    assert max(len(word) for word in tokenizer._cache) <= MAX_WORD_BYTES + 1  # the cache holds no huge words
    short = tokenizer(["a dog barking in the rain"])
    assert short[0, :8].tolist() == [49406, 320, 1929, 32676, 530, 518, 2443, 49407]  # ordinary text unchanged


# 6. the media route serves only the file that was indexed -------------------------------------------------------


def test_a_file_swapped_for_a_link_is_not_served(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    photo = gradient_image(media / "a.jpg")
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    collection.index([media], workers=0)
    client = TestClient(create_app(collection))
    assert client.get("/api/items/0/media").content == photo.read_bytes()
    photo.unlink()
    photo.symlink_to(secret)
    swapped = client.get("/api/items/0/media")
    assert swapped.status_code == 404 and "changed since it was indexed" in swapped.json()["detail"]


# 10. a hit whose row is gone is dropped, not a failed search ----------------------------------------------------


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


def test_the_cli_says_a_filter_is_too_large_in_one_line(served):
    root, collection = served
    huge = " OR ".join(f"width = {i}" for i in range(40_000))
    result = runner.invoke(cli, ["search", "--db", str(collection.path), "--item", "0", "--where", huge])
    assert result.exit_code == 2 and result.output.startswith("error: --where: bad filter")
    assert len(result.output) < 500 and Path(root).exists()


# 5. prune keeps the rows of folders where nothing was found; a missing root among several ----------------------


@pytest.mark.parametrize("leftover", ["lost+found/", ".DS_Store", "usb/"])
def test_prune_keeps_rows_where_a_drive_looks_unmounted(tmp_path, tiny_model, leftover):
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    drive = tmp_path / "drive"
    target = drive / "usb" if leftover == "usb/" else drive
    target.mkdir(parents=True)
    photos = [gradient_image(target / f"{i}.jpg", seed=i) for i in range(3)]
    if leftover == "usb/":
        gradient_image(drive / "top.jpg")  # the root itself holds a file: only the nested mount point is empty
    collection = Collection.open(tmp_path / "db", encoder=encoder)
    collection.index([drive], workers=0, prune=True)
    for photo in photos:
        photo.unlink()
    if leftover == "lost+found/":
        (drive / "lost+found").mkdir()
    elif leftover == ".DS_Store":
        (drive / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    report = collection.index([drive], workers=0, prune=True)
    assert report.pruned == 0 and report.prune_skipped, report
    assert collection.store.items().count() == (4 if leftover == "usb/" else 3)


def test_a_missing_root_among_several_does_not_stop_the_others(tmp_path, tiny_model):
    present = tmp_path / "present"
    present.mkdir()
    gradient_image(present / "a.jpg")
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    report = collection.index([present, tmp_path / "unmounted"], workers=0)
    assert report.indexed == 1 and report.failed == 1
    assert "no such file or folder" in report.failures[0].message


# 8. a lost meta table never lets another model's embeddings in ----------------------------------------------------


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


# 12. workers that die as they start stop the run; --workers 0 with worker limits; the lock as a folder ----------


def test_workers_dying_at_start_stop_the_run_without_blaming_files():
    from xsearch.decode.pool import DecodePool, DecodePoolBroken
    from xsearch.decode.work import Task

    from faulty import DiesOnArrival

    tasks = [Task(f"/nowhere/{i}.jpg", Modality.IMAGE, 1, 0.0) for i in range(6)]
    outcomes = []
    with pytest.raises(DecodePoolBroken, match="die as they start"):
        outcomes.extend(DecodePool(DiesOnArrival(), workers=2).imap_unordered(tasks))
    assert outcomes == []  # no file was reported as bad


def test_a_worker_that_died_before_its_files_were_sent_is_a_death_not_a_crash_of_the_run():
    """Files handed to a worker that is already dead (its pipe broken) stay held, so the pool's sentinel
    check puts them back in the queue: the race that once ended a run with BrokenPipeError."""
    from xsearch.decode.pool import DecodePool
    from xsearch.decode.work import Task

    from faulty import DiesOnArrival

    worker = DecodePool(DiesOnArrival(), workers=1)._start()
    try:
        worker.process.join(timeout=30)
        assert worker.process.exitcode == 3
        tasks = [Task(f"/nowhere/{i}.jpg", Modality.IMAGE, 1, 0.0) for i in range(2)]
        for task in tasks:
            worker.send(task)
        assert list(worker.held) == tasks
        assert worker.receive() is None  # what the pool reads as a death
    finally:
        worker.close()


def test_worker_limits_without_workers_and_a_lock_that_is_a_folder_are_one_line(tmp_path, tiny_model):
    from xsearch import IndexOptions, UsageError
    from xsearch.options import DecodeLimits

    with pytest.raises(UsageError, match="with workers=0 files are decoded in this process"):
        IndexOptions(workers=0, limits=DecodeLimits(seconds=5))
    from xsearch.model import save_random_checkpoint

    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    trial = save_random_checkpoint(tmp_path / "trial.pt")
    argv = ["index", str(media), "--db", str(tmp_path / "db"), "--workers", "0", "--checkpoint", str(trial)]
    assert runner.invoke(cli, argv).exit_code == 0
    (tmp_path / "db" / "writer.lock").unlink()
    (tmp_path / "db" / "writer.lock").mkdir()
    result = runner.invoke(cli, argv)
    assert result.exit_code == 2 and "cannot take the writer lock" in result.output, result.output


# 2. query files are decoded in a supervised worker, under the indexer's limits ------------------------------------


def test_query_files_are_decoded_under_the_indexers_limits(served, tmp_path):
    from xsearch import Query, QueryError
    from xsearch.options import DecodeLimits

    root, collection = served
    big = gradient_image(tmp_path / "big.png", size=(4000, 3000))  # about 150 MB to decode and scale
    tight = Collection.open(
        collection.path, encoder=collection.encoder, query_limits=DecodeLimits(memory_bytes=20 << 20)
    )
    with pytest.raises(QueryError, match=r"big.png: needs more than 0.0195 GB of memory to decode"):
        tight.search(Query.image(big), k=1)
    roomy = Collection.open(collection.path, encoder=collection.encoder)  # the default: the indexer's limits
    assert roomy.search(Query.image(root / "p0.jpg"), k=1)[0].uri == str(root / "p0.jpg")


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
    result = runner.invoke(cli, ["info", "--db", str(tmp_path / "db")])
    assert result.exit_code == 2 and "database damaged" in result.output and "(missing)" in result.output


# 11. compaction keeps what a live reader holds, and only that ----------------------------------------------------


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


# Done when: the server's memory under the probe's hostile uploads -------------------------------------------------


def test_hostile_uploads_leave_the_server_within_a_bounded_memory(served, tmp_path, tiny_model):
    """The probe's query files (an 85-byte 5000 x 1 PNG: 2.1 GB; a 99-byte 20000 x 1 PNG: 5.1 GB; a 1 s WAV
    at 22,051 Hz: 6.9 GB; at 44,101 Hz; an 8192 x 2 video), posted to the app in a fresh process: its peak
    RSS grows by far less than 1 GB, and it answers after each."""
    import av

    from xsearch.model import save_checkpoint
    from xsearch.preprocess.containers import local_file_url

    root, collection = served
    weights = save_checkpoint(tiny_model, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})
    Image.new("RGB", (5000, 1)).save(tmp_path / "line5000.png")
    Image.new("RGB", (20000, 1)).save(tmp_path / "line20000.png")
    write_wav(tmp_path / "odd.wav", tone(1.0, 22_051), 22_051)
    write_wav(tmp_path / "odder.wav", tone(1.0, 44_101), 44_101)
    with av.open(local_file_url(tmp_path / "wide.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 8192, 2, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((2, 8192, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    script = f"""
import resource, sys
from pathlib import Path
from fastapi.testclient import TestClient
from xsearch import Collection
from xsearch.server import create_app
client = TestClient(create_app(Collection.open({str(collection.path)!r}, checkpoint={str(weights)!r})))
with open({str(root / "p0.jpg")!r}, "rb") as photo:  # warm: imports, model, index, store, decode workers
    assert client.post("/api/search", files=[("files", ("p0.jpg", photo.read()))]).status_code == 200
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
statuses = []
for name in ["line5000.png", "line20000.png", "odd.wav", "odder.wav", "wide.mp4"]:
    with open(Path({str(tmp_path)!r}) / name, "rb") as handle:
        statuses.append(client.post("/api/search", files=[("files", (name, handle.read()))]).status_code)
    statuses.append(client.post("/api/search", data={{"item": ["0"]}}).status_code)
print(statuses, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    statuses, growth = done.stdout.strip().splitlines()[-1].rsplit("] ", 1)
    assert "500" not in statuses and statuses.count("200") >= 5, statuses  # refused or answered; never down
    print(f"hostile uploads: statuses {statuses}], peak RSS growth {float(growth):.0f} MB")
    assert float(growth) < 1024, f"{float(growth):.0f} MB"
