"""Writers and prune: one writer per database, ids never reused, an empty or missing root never pruned."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xsearch import Collection, Modality
from xsearch.cli.main import app
from xsearch.errors import DecodeError
from xsearch.model import save_checkpoint
from xsearch.store import Database, ItemRecord, writer_lock
from xsearch.testing.media import gradient_image

from measure import peak_rss_growth_mb
from scripts import xsearch_script

runner = CliRunner()


def _checkpoint(tmp_path: Path, model) -> Path:
    return save_checkpoint(model, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})


def _photos(folder: Path, count: int, suffix: str = ".png", size=(320, 240)) -> Path:
    """``count`` distinct gradient images ``0<suffix>``, ``1<suffix>``... in a new ``folder``."""
    folder.mkdir()
    for i in range(count):
        gradient_image(folder / f"{i}{suffix}", size=size, seed=i)
    return folder


def vector(i: int) -> np.ndarray:
    return np.eye(1024, dtype=np.float32)[i]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, tiny_model):
    checkpoint = _checkpoint(tmp_path, tiny_model)
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
    store.add_items([ItemRecord(f"/{i}.jpg", Modality.IMAGE, vector(i)) for i in range(3)])  # ids 0, 1, 2
    store.delete_items(ids=[2])  # the highest, as --prune would
    store.add_items([ItemRecord("/new.jpg", Modality.IMAGE, vector(5))])
    assert store.items().lookup("/new.jpg", ["id"])["id"] == 3
    reopened = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    reopened.delete_items(ids=[3])
    reopened.add_items([ItemRecord("/newer.jpg", Modality.IMAGE, vector(6))])
    assert reopened.items().lookup("/newer.jpg", ["id"])["id"] == 4


def test_an_empty_root_is_not_pruned(tmp_path, tiny_model):
    checkpoint = _checkpoint(tmp_path, tiny_model)
    drive = tmp_path / "drive"
    drive.mkdir()
    photos = [gradient_image(drive / f"{i}.jpg", seed=i) for i in range(3)]
    db = tmp_path / "db"
    argv = ["index", str(drive), "--db", str(db), "--checkpoint", str(checkpoint), "--prune"]
    assert runner.invoke(app, argv).exit_code == 0
    for photo in photos:  # the drive is unmounted: its mount point is an empty folder
        photo.unlink()
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert f"not pruned: {drive} is empty" in result.stdout
    assert Database.open(db, create=False).items().count() == 3
    gradient_image(drive / "0.jpg", seed=0)  # back with one file: the other two are really gone
    runner.invoke(app, argv)
    assert Database.open(db, create=False).items().count() == 1


def test_a_filter_cannot_escape_its_target(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord("/a.jpg", Modality.IMAGE, vector(0)), ItemRecord("/b.wav", Modality.AUDIO, vector(1))])
    argv = ["search", "--db", str(tmp_path / "db"), "--item", "/a.jpg", "--target", "image"]
    escaping = runner.invoke(app, [*argv, "--where", "1=1) OR (modality = 'audio'"])
    assert escaping.exit_code == 2 and "unbalanced parentheses" in escaping.output
    fine = runner.invoke(app, [*argv, "--where", "uri LIKE '%(a%' OR (width IS NULL)", "--json"])
    assert fine.exit_code == 0, fine.output
    assert [r["modality"] for r in json.loads(fine.stdout)["results"]] == ["image"]


def test_control_characters_in_names_never_reach_the_terminal(tmp_path):
    hostile = "/m/\x1b]0;pwned\x07evil\nname.jpg"
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord(hostile, Modality.IMAGE, vector(0))])
    store.record_errors([("/m/bad\x1b[2J.jpg", "image", "decode", "broken\r\nreally")])
    table = runner.invoke(app, ["search", "--db", str(tmp_path / "db"), "--item", "0"]).stdout
    errors = runner.invoke(app, ["errors", "--db", str(tmp_path / "db")]).stdout
    for output in (table, errors):
        assert "\x1b" not in output and "\x07" not in output and "\r" not in output
    assert "\\x1b]0;pwned\\x07evil\\x0aname.jpg" in table and len(table.strip().splitlines()) == 2
    assert errors.strip() == "/m/bad\\x1b[2J.jpg: broken\\x0d\\x0areally [decode]"


def _group(pgid: int) -> list[str]:
    """Live processes of a process group (from /proc), as "pid command"."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(f"{stat.parent.name} {fields[0]}")
    return found


def _gone(pgid: int, seconds: float = 10) -> list[str]:
    """What is left of a process group after waiting up to ``seconds`` for it to empty."""
    deadline = time.monotonic() + seconds
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _group(pgid)


def test_a_killed_run_leaves_no_worker_or_fork_server_behind(tmp_path, tiny_model):
    """kill -9 of `xsearch index` while its decode worker runs: the fork server and the worker follow."""
    checkpoint = _checkpoint(tmp_path, tiny_model)
    media = _photos(tmp_path / "media", 40, ".jpg", size=(1600, 1200))
    xsearch = xsearch_script()
    argv = [xsearch, "index", str(media), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint)]
    process = subprocess.Popen([*argv, "--workers", "1", "-q"], start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_group(process.pid)) < 3 and time.monotonic() < deadline:  # main, fork server, worker
        time.sleep(0.05)
    assert len(_group(process.pid)) >= 3, _group(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _gone(process.pid) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, tiny_model, sig):
    """SIGTERM (or SIGHUP: its terminal closed) mid-run: what was embedded is committed, exit 130, and
    nothing is left running."""
    checkpoint = _checkpoint(tmp_path, tiny_model)
    media = _photos(tmp_path / "media", 60, ".jpg", size=(1600, 1200))
    xsearch = xsearch_script()
    db = tmp_path / "db"
    argv = [xsearch, "index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "--workers", "1"]
    process = subprocess.Popen([*argv, "--commit-every", "4", "-q"], start_new_session=True)
    deadline = time.monotonic() + 120
    versions = db / "items.lance" / "_versions"
    while time.monotonic() < deadline and len(list(versions.glob("*.manifest")) if versions.exists() else []) < 3:
        time.sleep(0.05)  # wait until a few commits landed: the run is mid-way
    process.send_signal(sig)
    assert process.wait(timeout=60) == 130
    kept = Database.open(db, create=False).items().count()
    assert 0 < kept < 60
    assert _gone(process.pid) == []


def test_hash_and_embedding_come_from_the_same_bytes(tmp_path, monkeypatch, tiny_model):
    """A file rewritten while it is decoded is read again: its row's sha256 and vector are of the final bytes."""
    import hashlib

    import xsearch.decode.files
    import xsearch.decode.work as work
    from xsearch.encoder import Encoder
    from xsearch.preprocess import preprocess_with_metadata

    photo = gradient_image(tmp_path / "a.jpg", seed=1)
    final = gradient_image(tmp_path / "final.jpg", seed=2).read_bytes()
    calls = []

    def decode_while_it_changes(path, modality, cfg, thumbnail=True):
        prepared = preprocess_with_metadata(path, modality, cfg, thumbnail)
        if not calls:
            Path(path).write_bytes(final)  # replaced after it was hashed and decoded once
        calls.append(path)
        return prepared

    monkeypatch.setattr(xsearch.decode.files, "preprocess_with_metadata", decode_while_it_changes)
    outcome = work.prepare(work.Task(str(photo), Modality.IMAGE, 0, 0.0))
    assert len(calls) == 2 and outcome.error is None
    assert outcome.sha256 == hashlib.sha256(final).hexdigest()
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    got = encoder.encode(Modality.IMAGE, outcome.tensor[None]).numpy()[0]
    np.testing.assert_allclose(got, Collection(None, encoder=encoder).embed([photo])[0].embedding, atol=1e-6)


def test_a_huge_k_allocates_for_the_items_there_are(tmp_path):
    import tracemalloc

    from xsearch import Collection, Query

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord(f"/{i}.jpg", Modality.IMAGE, vector(i)) for i in range(20)])
    tracemalloc.start()
    hits = Collection.open(tmp_path / "db").search(Query.item(0), k=10**9)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(hits) == 20 and peak < 200 * 2**20


def test_misleading_reasons_and_odd_ids(tmp_path):
    from PIL import Image

    from xsearch.errors import DecodeError
    from xsearch.preprocess import preprocess_file

    big = tmp_path / "big.png"
    Image.new("L", (11_000, 11_000)).save(big)  # 121 MP: under the 178 MP cap, over PIL's 89.5 MP warning
    assert preprocess_file(big, "image").shape == (3, 224, 224)
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="holds Python objects, not numbers"):
        preprocess_file(objects, "imu")
    Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024).add_items(
        [ItemRecord("/a.jpg", Modality.IMAGE, vector(0))]
    )
    result = runner.invoke(app, ["search", "--db", str(tmp_path / "db"), "--item", "²"])
    assert result.exit_code == 2 and "no indexed item '²'" in result.output


def test_a_database_path_that_is_a_file_is_one_line(tmp_path, tiny_model):
    checkpoint = _checkpoint(tmp_path, tiny_model)
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    (tmp_path / "notes.txt").write_text("not a database")
    argv = ["index", str(media), "--db", str(tmp_path / "notes.txt"), "--checkpoint", str(checkpoint)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "notes.txt: exists and is not a directory" in result.output
    assert (tmp_path / "notes.txt").read_text() == "not a database"


def test_a_crashing_hanging_or_greedy_decoder_costs_one_file(tmp_path):
    from xsearch.decode.pool import GIB, DecodePool
    from xsearch.decode.work import Task
    from xsearch.options import DecodeLimits

    from faulty import misbehave

    names = ["ok0", "crash1", "ok2", "hang3", "ok4", "greedy5", "ok6", "ok7"]
    tasks = [Task(str(tmp_path / n), Modality.IMAGE, 1, 0.0) for n in names]
    pool = DecodePool(misbehave, workers=2, limits=DecodeLimits(seconds=3, memory_bytes=GIB))
    started = time.monotonic()
    outcomes = {Path(o.task.path).name: o for o in pool.imap_unordered(tasks)}
    assert sorted(outcomes) == sorted(names)  # every file answered once, the run went on
    assert all(outcomes[n].error is None and outcomes[n].sha256 == n for n in names if n.startswith("ok"))
    assert outcomes["crash1"].error == "the decoder crashed (SIGSEGV)"
    assert outcomes["hang3"].error == "timed out after 3 s"
    assert outcomes["greedy5"].error.startswith("needs more than 1 GB of memory")
    assert time.monotonic() - started < 60


def _without_duration(flac: Path) -> Path:
    """The FLAC as a pipe writes it: STREAMINFO's total-samples field is 0 (unknown)."""
    data = bytearray(flac.read_bytes())
    assert data[:4] == b"fLaC"
    data[8 + 13] &= 0xF0  # the low 36 bits of STREAMINFO bytes 13..17 count the samples
    data[8 + 14 : 8 + 18] = bytes(4)
    out = flac.with_name("piped_" + flac.name)
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("suffix", ["wav", "flac", "mp3"])
def test_a_long_audio_file_is_decoded_around_its_clips_with_the_same_result(tmp_path, suffix):
    from xsearch.preprocess import audio
    from xsearch.testing.media import tone, write_audio, write_wav

    path, samples = tmp_path / f"long.{suffix}", tone(37.3, 44100, channels=2, noise=0.3)
    write_wav(path, samples, 44100) if suffix == "wav" else write_audio(path, samples, 44100, suffix)
    cfg = audio.AudioCfg(whole_file_seconds=10)  # 37 s counts as long here
    whole = audio.waveform_to_clips(*audio.decode_audio(path, cfg), cfg)
    assert torch.equal(audio.prepare(path, cfg, thumbnail=False).tensor, whole)
    if suffix == "flac":  # no duration in the header: counted, then read around the clips in one pass
        piped = _without_duration(path)
        assert torch.equal(audio.prepare(piped, cfg, thumbnail=False).tensor, whole)
        with pytest.raises(DecodeError, match="above the 0.00833333 h limit"):  # 30 s: counted, not trusted
            audio.prepare(piped, audio.AudioCfg(whole_file_seconds=10, max_seconds=30), thumbnail=False)


@pytest.mark.slow
def test_long_audio_and_large_video_decode_in_bounded_memory(tmp_path):
    import soundfile

    from xsearch.testing.media import write_video

    flac = tmp_path / "twenty_minutes.flac"
    with soundfile.SoundFile(flac, "w", 48000, 2, subtype="PCM_16") as handle:
        block = 0.3 * np.sin(np.arange(480000) / 48000 * 2 * np.pi * 440, dtype=np.float32)
        for _ in range(120):
            handle.write(np.stack([block, block], 1))
    for path in (flac, _without_duration(flac)):  # decoding it whole held 1.9 GB (4 h: 22 GB)
        assert peak_rss_growth_mb(f"audio.prepare({str(path)!r}, audio.AudioCfg())") < 250
    clip = write_video(tmp_path / "sixty_fps.mp4", seconds=2.5, fps=60, size=(1024, 1024))
    # Every frame of each 2 s clip was held (120 x 1.5 MB); the model sees two of them.
    assert peak_rss_growth_mb(f"video.decode_video({str(clip)!r})") < 120


def test_a_npy_header_is_checked_before_its_data_is_read(tmp_path):
    from xsearch.preprocess.single_channel import load_single_channel

    sparse = tmp_path / "sparse_depth.npy"  # a 2 GB array in a 4 KB (sparse) file
    np.lib.format.open_memmap(sparse, mode="w+", dtype=np.float64, shape=(16384, 16384)).flush()
    with pytest.raises(DecodeError, match=r"shape \(16384, 16384\) has 268,435,456 values, above the"):
        load_single_channel(sparse)
    truncated = tmp_path / "truncated_depth.npy"
    np.save(truncated, np.zeros((100, 100)))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(DecodeError, match="truncated .npy file: its header promises 80,128 bytes, the file has"):
        load_single_channel(truncated)


def test_re_runs_keep_the_database_size_stable(tmp_path, tiny_model, monkeypatch):
    import os

    from xsearch import Collection
    from xsearch.encoder import Encoder

    monkeypatch.delenv("XSEARCH_KEEP_SECONDS", raising=False)  # the default: nothing kept without a lease
    media = _photos(tmp_path / "media", 6)
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


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_reported_as_damage_in_one_line(tmp_path, tiny_model, damage):
    checkpoint = _checkpoint(tmp_path, tiny_model)
    media = _photos(tmp_path / "media", 3)
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


def test_a_damaged_mp4_says_so_not_no_audio_stream(tmp_path):
    from xsearch.decode.work import Task, prepare
    from xsearch.testing.media import write_video

    path = write_video(tmp_path / "clip.mp4", seconds=2)
    data = bytearray(path.read_bytes())
    moov = data.find(b"moov")
    data[moov + 8 : moov + 200] = bytes(192)  # the box that lists the streams
    path.write_bytes(data)
    outcome = prepare(Task(str(path), Modality.VIDEO, len(data), 0.0))
    assert outcome.error == "no audio or video stream found (damaged or truncated file?)"


def test_a_root_reached_through_a_link_gives_the_same_uris(tmp_path, tiny_model):
    from xsearch import Collection
    from xsearch.encoder import Encoder

    media = _photos(tmp_path / "media", 3)
    (tmp_path / "link").symlink_to(media)
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    assert collection.index([tmp_path / "link"], workers=0).indexed == 3
    assert collection.index([media], workers=0).indexed == 0  # the same files, not three more rows
    assert sorted(collection.store.items().scan(["uri"])["uri"].to_pylist()) == [
        str(media / f"{i}.png") for i in range(3)
    ]


def test_a_result_file_replaced_by_a_pipe_does_not_block_the_sheet(tmp_path):
    import os
    import threading

    from xsearch.contact_sheet import _preview

    fifo = tmp_path / "note.txt"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    done = []
    worker = threading.Thread(target=lambda: done.append(_preview(Modality.TEXT, str(fifo), None)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert done and "no preview" in done[0]
