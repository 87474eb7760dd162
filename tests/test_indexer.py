"""The batch indexer end to end through the CLI, with the tiny random model on CPU: a mixed corpus, incremental
re-runs, kill-and-resume, and a corpus of bad and odd files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xsearch.cli.app import EXIT_SOME_FAILED
from xsearch.cli.main import app
from xsearch.decode.work import prepare
from xsearch.index import IndexSet
from xsearch.indexer.scan import Rejected, Scanner, ScanOptions, Task
from xsearch.modalities import Modality
from xsearch.paths import content_mismatch
from xsearch.sniff import sniff
from xsearch.store import Database, ItemFilter

from corpus import bad_corpus, good_corpus
from scripts import xsearch_script

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    from xsearch.model import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def index(db, *args, checkpoint, workers=1):
    argv = ["index", *map(str, args), "--db", str(db), "--checkpoint", str(checkpoint), "--model", "tiny_test"]
    result = runner.invoke(app, [*argv, "--workers", str(workers), "--json"])
    assert "Traceback" not in result.output, result.output
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, report


def rows(db) -> dict[str, dict]:
    table = (
        Database.open(db, create=False)
        .items()
        .scan(["id", "uri", "modality", "sha256", "width", "duration", "thumbnail"])
    )
    out = {}
    for row in table.to_pylist():
        assert row["uri"] not in out, f"two rows for {row['uri']}"
        out[row["uri"]] = row
    return out


def error_rows(db) -> dict[str, dict]:
    return {r["uri"]: r for r in Database.open(db, create=False).error_rows().to_pylist()}


# ---- the whole pipeline -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("collection")
    files = good_corpus(root)
    db = root.parent / (root.name + ".db")
    result, report = index(db, root, checkpoint=checkpoint)
    return root, files, db, result, report


def test_mixed_corpus_is_indexed_by_modality(indexed):
    root, files, db, result, report = indexed
    assert result.exit_code == 0, result.output
    stored = rows(db)
    assert {Path(u): r["modality"] for u, r in stored.items()} == {p.resolve(): m for p, m in files.items()}
    assert report["indexed"] == len(files) and report["failed"] == 0
    assert report["ignored"] == 1 and report["hidden"] == 1  # README.md; .DS_Store (a dotfile)
    counts = {m: sum(1 for v in files.values() if v == m) for m in set(files.values())}
    assert report["by_modality"] == counts
    assert {m: i["count"] for m, i in report["indexes"].items()} == counts
    assert error_rows(db) == {}


def test_rows_carry_hash_metadata_and_thumbnails(indexed):
    root, files, db, _, _ = indexed
    stored = rows(db)
    import hashlib

    photo = str(root / "photos" / "img1.jpg")
    assert stored[photo]["sha256"] == hashlib.sha256(Path(photo).read_bytes()).hexdigest()
    assert stored[photo]["width"] == 220 and stored[photo]["thumbnail"][:3] == b"\xff\xd8\xff"
    assert stored[str(root / "clips" / "pan.mp4")]["thumbnail"][:3] == b"\xff\xd8\xff"
    assert stored[str(root / "scans" / "depth" / "room1.png")]["thumbnail"] is not None
    assert stored[str(root / "sounds" / "a440.wav")]["duration"] == pytest.approx(2.5, abs=0.01)


def test_the_index_ranks_every_stored_item_as_the_stored_vectors_do(indexed):
    """The index the run built holds each stored picture once, and ranks all of them for each one as the
    exact cosines of the stored vectors do (each finds itself first, at 1)."""
    _, _, db, _, _ = indexed
    store = Database.open(db, create=False)
    index = IndexSet.latest(store).current("image")[0]
    ids, vectors = store.items().vectors(store.items().ids("image"))
    assert len(index) == len(ids) > 2
    scores, found = index.search(vectors, len(ids))
    exact = vectors @ vectors.T
    for row in range(len(ids)):
        assert found[row, 0] == ids[row] and scores[row, 0] == pytest.approx(1, abs=1e-5)
        assert sorted(found[row]) == sorted(ids)
        np.testing.assert_allclose(scores[row], np.sort(exact[row])[::-1], atol=1e-5)


def test_rerun_is_incremental(tmp_path, checkpoint):
    root = tmp_path / "c"
    root.mkdir()
    files = good_corpus(root)
    db = tmp_path / "db"
    first, report = index(db, root, checkpoint=checkpoint)
    assert first.exit_code == 0 and report["indexed"] == len(files)
    before = rows(db)

    again, report = index(db, root, checkpoint=checkpoint)
    assert again.exit_code == 0 and report["indexed"] == report["updated"] == 0
    assert report["unchanged"] == len(files)
    assert Database.open(db, create=False).errors().count() == 0

    touched = root / "photos" / "img0.jpg"
    os.utime(touched, (time.time() + 5, time.time() + 5))  # new mtime, same bytes: hashed, not re-embedded
    changed = root / "photos" / "img1.jpg"
    from xsearch.testing.media import gradient_image

    gradient_image(changed, seed=42)  # new bytes: re-embedded in place
    deleted = root / "sounds" / "beep.mp3"
    deleted.unlink()
    _, report = index(db, root, "--prune", checkpoint=checkpoint)
    assert (report["indexed"], report["updated"], report["pruned"]) == (0, 1, 1)
    assert report["unchanged"] == len(files) - 2
    after = rows(db)
    assert str(deleted) not in after and len(after) == len(files) - 1
    assert after[str(changed)]["id"] == before[str(changed)]["id"]
    assert after[str(changed)]["sha256"] != before[str(changed)]["sha256"]
    store = Database.open(db, create=False)
    mtime = store.items().scan(["mtime"], ItemFilter(uris=[str(touched)]))["mtime"][0].as_py()
    assert mtime == pytest.approx(touched.stat().st_mtime)
    assert report["indexes"]["audio"]["count"] == 3


def test_earlier_failures_are_retried(tmp_path, checkpoint):
    root = tmp_path / "c"
    root.mkdir()
    broken = root / "later.jpg"
    broken.write_bytes(b"")
    db = tmp_path / "db"
    result, report = index(db, root, checkpoint=checkpoint)
    assert result.exit_code == EXIT_SOME_FAILED and str(broken) in error_rows(db)
    from xsearch.testing.media import gradient_image

    gradient_image(broken)
    result, report = index(db, root, checkpoint=checkpoint)
    assert result.exit_code == 0 and report["indexed"] == 1
    assert error_rows(db) == {} and str(broken) in rows(db)


def test_unchanged_file_with_a_stale_error_row_is_cleared(tmp_path, checkpoint):
    """A run killed between committing a file's row and clearing its old error leaves both; the next run
    must clear the error row."""
    root = tmp_path / "c"
    root.mkdir()
    from xsearch.testing.media import gradient_image

    photo = gradient_image(root / "a.jpg")
    db = tmp_path / "db"
    index(db, root, checkpoint=checkpoint)
    Database.open(db, create=False).record_errors([(str(photo), "image", "decode", "stale")])
    result, _ = index(db, root, checkpoint=checkpoint)
    assert result.exit_code == 0 and error_rows(db) == {}


# ---- kill and resume ------------------------------------------------------------------------------------------


def _commits(db: Path) -> int:
    """Versions of the ``items`` table on disk: one more after every commit."""
    versions = db / "items.lance" / "_versions"
    return len(list(versions.glob("*.manifest"))) if versions.exists() else 0


def test_killed_runs_resume_to_exactly_one_row_per_file(tmp_path, checkpoint):
    """Each run is killed with SIGKILL right after it was seen to commit 1 or 2 batches, mid-run."""
    root = tmp_path / "c"
    root.mkdir()
    files = good_corpus(root)
    db = tmp_path / "db"
    xsearch = xsearch_script()
    argv = [xsearch, "index", str(root), "--db", str(db), "--checkpoint", str(checkpoint)]
    argv += ["--model", "tiny_test", "--workers", "0", "--commit-every", "2", "--batch-size", "2", "--quiet"]
    rng = random.Random(0)
    kills_after_commits = 0
    for _ in range(4):
        start, wanted = max(_commits(db), 1), rng.randint(1, 2)  # version 1: the new, empty table
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and _commits(db) - start < wanted and time.monotonic() < deadline:
            time.sleep(0.02)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills_after_commits += _commits(db) - start >= wanted
        process.wait()
    assert kills_after_commits >= 3  # the runs were interrupted between commits, not before the first
    assert 0 < Database.open(db, create=False).items().count() < len(files)  # ... and left partial work behind
    final = subprocess.run(argv[:-1] + ["--json"], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    stored = rows(db)  # asserts no uri twice
    assert {Path(u) for u in stored} == {p.resolve() for p in files}
    store = Database.open(db, create=False)
    assert store.items().count() == len(files) and store.errors().count() == 0
    for modality in {m for m in files.values()}:
        status = IndexSet.latest(store).status(modality)
        assert status["fresh"] and status["count"] == sum(1 for m in files.values() if m == modality)


# ---- bad and odd input -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("bad")
    bad, odd = bad_corpus(root)
    db = root.parent / (root.name + ".db")
    argv = ["index", str(root), "--db", str(db), "--checkpoint", str(checkpoint), "--model", "tiny_test"]
    result = runner.invoke(app, [*argv, "--workers", "2", "--follow-symlinks"])
    return root, bad, odd, db, result


def test_each_bad_file_is_one_readable_error_row(bad_run):
    root, bad, _, db, result = bad_run
    errors = error_rows(db)
    for path, words in bad.items():
        uri = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        assert uri in errors, f"no error row for {path.name!r}"
        assert words.lower() in errors[uri]["message"].lower(), (path.name, errors[uri]["message"])
    assert len(errors) == len(bad), sorted(set(errors) - {str(p) for p in bad})


def test_every_good_and_odd_file_is_indexed(bad_run):
    _, _, odd, db, _ = bad_run
    stored = rows(db)
    assert {u: r["modality"] for u, r in stored.items()} == {str(p): m for p, m in odd.items()}


def test_bad_run_finishes_with_summary_and_distinct_exit_code(bad_run):
    _, bad, odd, _, result = bad_run
    assert result.exit_code == EXIT_SOME_FAILED
    assert "Traceback" not in result.output
    assert f"{len(odd)} new" in result.stdout and f"{len(bad)} failed" in result.stdout
    assert result.stdout.count("failed: ") == 10 and f"and {len(bad) - 10} more" in result.stdout


def test_errors_command_lists_failures(bad_run):
    _, bad, _, db, _ = bad_run
    result = runner.invoke(app, ["errors", "--db", str(db), "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.stdout)  # one JSON document, as every --json
    assert len(listed) == len(bad) and all({"uri", "stage", "message"} <= set(row) for row in listed)


def test_file_deleted_between_scan_and_decode(tmp_path, tiny_model, monkeypatch):
    from xsearch.encoder import Encoder
    from xsearch.indexer.pipeline import Indexer
    from xsearch.options import IndexOptions
    from xsearch.testing.media import gradient_image

    for i in range(3):
        gradient_image(tmp_path / f"{i}.jpg", seed=i)
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    indexer = Indexer(
        Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024), encoder, IndexOptions(workers=0)
    )
    plan = Indexer._plan

    def plan_then_delete(self, candidates, report):
        planned = plan(self, candidates, report)
        os.remove(tmp_path / "1.jpg")
        return planned

    monkeypatch.setattr(Indexer, "_plan", plan_then_delete)
    report = indexer.run([str(tmp_path)])
    assert (report.indexed, report.failed) == (2, 1)
    assert "deleted or moved after the scan" in report.failures[0].message


def test_unreadable_file_message(tmp_path, monkeypatch):
    """Root (as in CI) reads files whatever their mode, so the permission case is checked by raising it."""
    photo = tmp_path / "locked.jpg"
    photo.write_bytes(b"\xff\xd8\xff")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", denied)
    outcome = prepare(Task(str(photo), Modality.IMAGE, 3, 0.0)).decoded
    assert (outcome.stage, outcome.error) == ("read", "permission denied")


# ---- scan rules and sniffing --------------------------------------------------------------------------------------


def test_modality_rules(tmp_path):
    from xsearch.testing.media import gradient_image, write_imu

    (tmp_path / "Depth").mkdir()
    (tmp_path / "mixed").mkdir()
    gradient_image(tmp_path / "Depth" / "a.png")
    gradient_image(tmp_path / "mixed" / "b_thermal.png")
    gradient_image(tmp_path / "mixed" / "c.png")
    write_imu(tmp_path / "mixed" / "d.npy")
    write_imu(tmp_path / "mixed" / "e_imu.npy")
    options = ScanOptions(assigned={str(tmp_path / "mixed" / "c.png"): Modality.DEPTH})
    found = {Path(c.path).name: c.modality.value for c in Scanner(options).scan([str(tmp_path)])}
    assert found == {"a.png": "depth", "b_thermal.png": "thermal", "c.png": "depth", "e_imu.npy": "imu"}

    only_images = ScanOptions(modalities=frozenset({Modality.IMAGE}), exclude=("b_*",))
    scanner = Scanner(only_images)
    found = [c for c in scanner.scan([str(tmp_path)]) if isinstance(c, Task)]
    assert [Path(c.path).name for c in found] == ["c.png"]  # not assigned to depth in this scan
    assert scanner.stats.excluded == 3 and scanner.stats.ignored == 1  # d.npy: an array with no convention


def test_a_folder_name_claims_only_files_of_its_modality(tmp_path):
    """A ``depth/`` folder's README stays text and an ``imu/`` folder's JSON is ignored, instead of failing
    every run as "named as depth but its content is text"."""
    from xsearch.testing.media import write_imu, write_map

    (tmp_path / "depth").mkdir()
    (tmp_path / "imu").mkdir()
    write_map(tmp_path / "depth" / "scan.png")
    (tmp_path / "depth" / "README.txt").write_text("how the scans were made")
    write_imu(tmp_path / "imu" / "walk.npy")
    (tmp_path / "imu" / "calibration.json").write_text("{}")
    found = {Path(c.path).name: c.modality.value for c in Scanner(ScanOptions()).scan([str(tmp_path)])}
    assert found == {"scan.png": "depth", "README.txt": "text", "walk.npy": "imu"}


def test_missing_root_is_an_error_row(tmp_path):
    found = list(Scanner(ScanOptions()).scan([str(tmp_path / "nope")]))
    assert isinstance(found[0], Rejected) and "no such file" in found[0].message


@pytest.mark.parametrize(
    "head, family",
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00", "video"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00", "audio"),
        (b"ID3\x04\x00", "audio"),
        (b"\xff\xfb\x90\x64", "audio"),
        (b"\x1aE\xdf\xa3\x9fB\x86", "video"),
        (b"hello world", "text"),
        ("caf\u00e9".encode()[:4], "text"),  # a multi-byte character cut by the sample end
    ],
)
def test_sniff(head, family):
    assert sniff(head).family == family


def test_content_mismatch_messages():
    assert content_mismatch("image", b"\x89PNG\r\n\x1a\n") is None  # a .jpg that is a PNG is fine
    assert "content is text" in content_mismatch("image", b"plain words")
    assert content_mismatch("audio", b"\x00\x00\x00\x20ftypisom") is None  # sound in an MP4 container
    assert "a PNG image" in content_mismatch("text", b"\x89PNG\r\n\x1a\n")
    assert content_mismatch("text", b"caf\xe9") is None  # not UTF-8: left to the decoder's clearer message


def test_cli_argument_errors(tmp_path):
    result = runner.invoke(app, ["index", str(tmp_path), "--db", str(tmp_path / "db"), "--as", "smell=x"])
    assert result.exit_code == 2 and "--as: unknown modality 'smell'" in result.output
    assert not (tmp_path / "db").exists()
    result = runner.invoke(app, ["index", "--db", str(tmp_path / "db")])
    assert result.exit_code == 2 and "nothing to index" in result.output
    result = runner.invoke(app, ["index", str(tmp_path), "--db", str(tmp_path / "db"), "--checkpoint", "/nope.pt"])
    assert result.exit_code == 2 and "/nope.pt" in result.output and "Traceback" not in result.output


def test_a_file_indexed_as_its_fallback_is_unchanged_on_rerun(tmp_path, checkpoint):
    """A video file with only sound is indexed as audio (the table's fallback), and a re-run knows it."""
    from xsearch.testing.media import tone, write_audio

    root = tmp_path / "c"
    root.mkdir()
    write_audio(root / "_a.m4a", tone(2.0, 44100), 44100, "aac").rename(root / "only_sound.mp4")
    db = tmp_path / "db"
    result, first = index(db, root, checkpoint=checkpoint)
    assert result.exit_code == 0 and first["by_modality"] == {"audio": 1}
    _, again = index(db, root, checkpoint=checkpoint)
    assert (again["indexed"], again["updated"], again["unchanged"]) == (0, 0, 1)


def test_a_run_says_where_its_time_went(tmp_path, checkpoint, caplog):
    """``--json`` carries the seconds of each phase and ``-v`` logs them, so that a slow run explains itself
    (a run that took minutes on a loaded machine said only its total)."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("a note")
    result, report = index(tmp_path / "db", tmp_path / "notes", checkpoint=checkpoint, workers=1)
    assert result.exit_code == 0, result.output
    phases = report["phases"]
    expected = {
        "writer lock",
        "open database",
        "scan",
        "plan",
        "decode, embed and commit",
        "gone files",
        "compaction",
        "indices",
    }
    assert set(phases) == expected
    assert 0 < sum(phases.values()) <= report["seconds"] + 0.01
    argv = ["index", str(tmp_path / "notes"), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint),
            "--model", "tiny_test", "-v"]  # fmt: skip
    with caplog.at_level("INFO"):
        verbose = runner.invoke(app, argv)
    assert verbose.exit_code == 0
    assert all(f"{name}: " in caplog.text for name in ("scan", "plan", "compaction", "indices", "writer lock"))


def test_a_database_inside_the_folder_it_indexes_is_not_indexed(tmp_path, checkpoint):
    """``cd media && xsearch index . --db media.db``: the database's own files (index segments, manifests)
    are never media; rows an older version made of them are forgotten."""
    from xsearch.testing.media import gradient_image, write_map

    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    (media / "note.txt").write_text("a note")
    (media / "depth").mkdir()  # the database gets a faiss/depth/ folder: a name that claims every file in it
    write_map(media / "depth" / "scan.png")
    db = media / "media.db"
    first, report = index(db, media, checkpoint=checkpoint)
    assert first.exit_code == 0 and report["indexed"] == 3, first.output
    second, report = index(db, media, checkpoint=checkpoint)
    assert second.exit_code == 0 and (report["failed"], report["unchanged"]) == (0, 3), second.output
    assert all(str(db) not in uri for uri in rows(db))

    store = Database.open(db, create=False)  # as an older version left it: its own files as error rows
    store.record_errors([(str(db / "faiss" / "image" / "meta.json"), "image", "decode", "not a readable image")])
    third, report = index(db, media, checkpoint=checkpoint)
    assert third.exit_code == 0 and report["failed"] == 0 and error_rows(db) == {}, third.output


def test_swapped_arguments_leave_the_media_folder_alone(tmp_path, checkpoint):
    """``xsearch index media.db --db photos``: one line, exit 2, and not one file added to the photos."""
    from xsearch.testing.media import gradient_image

    photos = tmp_path / "photos"
    photos.mkdir()
    gradient_image(photos / "a.jpg")
    (tmp_path / "media.db").mkdir()
    result, _ = index(photos, tmp_path / "media.db", checkpoint=checkpoint)
    assert result.exit_code == 2 and "not an xsearch database" in result.output, result.output
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg"]


def test_an_assignment_is_remembered_by_later_runs(tmp_path, checkpoint, caplog):
    """``index . --as depth=scans/`` then a plain ``index .``: the scan stays depth (it was re-embedded as an
    image, its depth row gone); a new ``--as`` for the same folder replaces the old one, and says so."""
    from xsearch.testing.media import gradient_image, write_map

    media = tmp_path / "media"
    (media / "scans").mkdir(parents=True)
    write_map(media / "scans" / "scan1.png")
    gradient_image(media / "photo.jpg")
    db = tmp_path / "db"
    first, report = index(db, media, "--as", f"depth={media / 'scans'}", checkpoint=checkpoint)
    assert first.exit_code == 0 and report["by_modality"] == {"depth": 1, "image": 1}, first.output
    plain, report = index(db, media, checkpoint=checkpoint)
    assert plain.exit_code == 0 and (report["indexed"], report["updated"]) == (0, 0), plain.output
    assert rows(db)[str(media / "scans" / "scan1.png")]["modality"] == "depth"
    with caplog.at_level("WARNING"):
        changed, report = index(db, media, "--as", f"thermal={media / 'scans'}", checkpoint=checkpoint)
    assert changed.exit_code == 0 and report["updated"] == 1
    assert "scan1.png was depth, now thermal" in caplog.text
    again, report = index(db, media, checkpoint=checkpoint)
    assert report["updated"] == 0 and rows(db)[str(media / "scans" / "scan1.png")]["modality"] == "thermal"


def test_the_summary_counts_files_it_ignored(tmp_path, checkpoint):
    """A .heic or .pdf beside the photos is not indexed: the summary says so instead of saying nothing."""
    from xsearch.testing.media import gradient_image

    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    (media / "b.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (media / "c.pdf").write_bytes(b"%PDF-1.4")
    argv = ["index", str(media), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint), "--model", "tiny_test"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0 and "ignored: 2 files of no media type" in result.output, result.output
