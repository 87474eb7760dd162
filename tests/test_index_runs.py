"""What an index run takes, counts and says: files found and left out, new and updated ones, the model loaded
only for new work, a file that now fails losing its row, and indices left untouched by other modalities.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from xsearch import Collection, Modality
from xsearch.cli.main import app
from xsearch.testing.media import gradient_image, write_wav

from trials import index_cli, jpeg_folder, one_photo_folder, search_json

runner = CliRunner()


def test_a_known_file_that_now_fails_loses_its_row(collection, checkpoint):
    media, db = collection
    photo = media / "photos" / "p1.jpg"
    good = photo.read_bytes()
    photo.write_bytes(b"this used to be a photo")
    argv = ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "--workers", "0"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 3, result.output
    assert "removed: 1 indexed files that now fail" in result.stdout
    assert runner.invoke(app, ["search", "--db", str(db), "--item", str(photo)]).exit_code == 2  # not indexed
    facts = json.loads(runner.invoke(app, ["info", "--db", str(db), "--json"]).stdout)
    assert facts["by_modality"]["image"] == 3 and facts["errors"] == 1
    _, hits = search_json(db, "--item", str(media / "photos" / "p0.jpg"), "-k", "10")
    assert str(photo) not in [h["uri"] for h in hits["results"]]

    photo.write_bytes(good)  # repaired: indexed again, its error row cleared
    assert runner.invoke(app, argv).exit_code == 0
    assert json.loads(runner.invoke(app, ["info", "--db", str(db), "--json"]).stdout)["by_modality"]["image"] == 4


def test_missing_folder_creates_nothing(tmp_path, checkpoint):
    db = tmp_path / "db"
    argv = ["index", str(tmp_path / "nope"), "--db", str(db), "--checkpoint", str(checkpoint)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "PATHS: no such file or folder" in result.output
    assert not db.exists()


def test_index_says_it_is_loading_and_counts_the_whole_run(tmp_path, checkpoint, monkeypatch):
    """The load time is the model's load, said as it starts and counted in the run's time; a run with
    nothing new loads nothing and says so by saying nothing."""
    from xsearch.model.choice import ModelChoice

    load = ModelChoice.load

    def slow_load(choice):
        time.sleep(0.5)  # a load long enough to tell from the rest of a small run
        return load(choice)

    monkeypatch.setattr(ModelChoice, "load", slow_load)
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    argv = ["index", str(media), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint), "--workers", "0"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "loading model" in result.output
    said = re.search(r"\(loading the model: ([0-9.]+) s\)", result.stdout)
    assert said and float(said.group(1)) >= 0.5
    gradient_image(media / "b.jpg", seed=1)  # new work: the next run loads the model (a no-op run does not)
    report = json.loads(runner.invoke(app, [*argv, "--json"]).stdout)
    assert 0.5 <= report["load_seconds"] < report["seconds"] and report["new"] == 1
    idle = runner.invoke(app, [*argv, "--json"])
    assert json.loads(idle.stdout)["load_seconds"] == 0 and "loading model" not in idle.output


def test_utf16_text_is_text(tmp_path, checkpoint):
    media = tmp_path / "media"
    media.mkdir()
    (media / "notes.txt").write_text("waves breaking on the rocks", encoding="utf-16")
    argv = ["index", str(media), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint), "--json"]
    report = json.loads(runner.invoke(app, argv).stdout)
    assert report["by_modality"] == {"text": 1} and report["failed"] == 0


def test_exclude_takes_relative_path_globs_as_search_path_does(tmp_path, trial, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jpeg_folder(tmp_path / "media" / "good", 2)
    jpeg_folder(tmp_path / "media" / "broken", 2)
    argv = ["index", "media", "--db", "db", "--checkpoint", str(trial), "--workers", "0"]
    done = runner.invoke(app, [*argv, "--exclude", "media/broken/*", "--exclude", "nothing-like-this"])
    assert done.exit_code == 0, done.output
    assert "2 new" in done.stdout and "excluded: 2 files or folders" in done.stdout
    assert "--exclude 'nothing-like-this' matched nothing" in done.output
    report = json.loads(runner.invoke(app, [*argv, "--exclude", "broken", "--json"]).stdout)
    assert report["excluded"] == 1 and report["unmatched_excludes"] == []  # a name: the folder itself


def test_a_no_op_run_loads_no_model_and_a_second_writer_is_refused_first(trial_db, trial, tmp_path):
    from xsearch.store import writer_lock

    media, db = trial_db
    again = runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(trial), "--json"])
    report = json.loads(again.stdout)
    assert again.exit_code == 0 and report["unchanged"] == 4 and report["load_seconds"] == 0, again.output
    missing = tmp_path / "no-such-checkpoint.pt"  # loading it would fail: the lock must be refused first
    with writer_lock(db):
        second = runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(missing)])
    assert second.exit_code == 2 and "another xsearch is writing this database" in second.output
    assert "loading model" not in second.output


def test_reindexing_as_another_modality_counts_updates(tmp_path, trial):
    maps = jpeg_folder(tmp_path / "maps", 2)
    argv = ["index", str(maps), "--db", str(tmp_path / "db"), "--checkpoint", str(trial), "--json", "--workers", "0"]
    assert json.loads(runner.invoke(app, argv).stdout)["indexed"] == 2
    again = json.loads(runner.invoke(app, [*argv, "--as", "depth"]).stdout)
    assert (again["indexed"], again["updated"]) == (0, 2)


def test_dot_folders_are_left_out_and_said_unless_hidden_is_given(tmp_path, trial):
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg", seed=1)
    (media / ".thumbnails").mkdir()
    gradient_image(media / ".thumbnails" / "a.jpg", seed=2)
    gradient_image(media / "._b.jpg", seed=3)  # macOS's companion file of b.jpg
    first = index_cli(media, tmp_path / "db", trial)
    assert first.exit_code == 0, first.output
    assert "1 new" in first.output and "hidden: 2 files and folders named with a dot" in first.output
    again = index_cli(media, tmp_path / "db", trial, "--hidden")
    assert again.exit_code == 0 and "2 new" in again.output, again.output


def test_json_says_new_as_the_summary_does_and_no_rate_when_nothing_was_embedded(tmp_path, trial):
    media = one_photo_folder(tmp_path)
    first = json.loads(index_cli(media, tmp_path / "db", trial, "--json").stdout)
    assert first["new"] == first["indexed"] == 1 and first["files_per_second"] > 0
    again = index_cli(media, tmp_path / "db", trial, "--json", "-q")
    assert json.loads(again.stdout)["files_per_second"] is None
    text = index_cli(media, tmp_path / "db", trial)
    assert "files/s" not in text.output and "0 new, 0 updated, 1 unchanged" in text.output


def test_files_that_only_gained_moments_are_counted_as_such(tmp_path, trial):
    from xsearch.testing.media import event_recording

    media = tmp_path / "media"
    media.mkdir()
    write_wav(media / "talk.wav", event_recording(12, 16000, 3.0), 16000)
    assert index_cli(media, tmp_path / "db", trial).exit_code == 0
    cut = index_cli(media, tmp_path / "db", trial, "--moments")
    assert cut.exit_code == 0 and "0 new, 0 updated, 1 given moments, 0 unchanged" in cut.output, cut.output


def test_adding_texts_leaves_the_image_index_fresh_and_untouched(tmp_path, trial):
    from xsearch import Collection
    from xsearch.index import IndexSet
    from xsearch.index.files import read_meta
    from xsearch.modalities import Modality

    media = one_photo_folder(tmp_path)
    db = tmp_path / "db"
    assert index_cli(media, db, trial).exit_code == 0
    image_meta = read_meta(db / "faiss" / "image")
    (media / "note.txt").write_text("a new note")
    assert index_cli(media / "note.txt", db, trial, "--no-update-index").exit_code == 0
    store = Collection.open(db).store
    assert IndexSet.latest(store).status(Modality.IMAGE)["fresh"]
    assert not IndexSet.latest(store).status(Modality.TEXT)["fresh"]
    info = runner.invoke(app, ["info", "--db", str(db)]).output
    assert "image" in info and "index: flat, fresh" in info.split("image", 1)[1].splitlines()[0]
    assert index_cli(media, db, trial).exit_code == 0  # the next run tops up text only
    assert read_meta(db / "faiss" / "image")["segments"] == image_meta["segments"]  # no empty top-up segment


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
    outcome = work.prepare(work.Task(str(photo), Modality.IMAGE, 0, 0.0)).decoded
    assert len(calls) == 2 and outcome.error is None
    assert outcome.sha256 == hashlib.sha256(final).hexdigest()
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    got = encoder.encode(Modality.IMAGE, outcome.tensor[None]).numpy()[0]
    np.testing.assert_allclose(got, Collection(None, encoder=encoder).embed([photo])[0].embedding, atol=1e-6)
