"""What a new user trips over (issue: CLI and Python API consistency, a no-weights trial, the contact sheet):
one test per point, through the CLI (typer's runner, or a subprocess where a real pipe or process matters)
and the Python API."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xsearch import Collection, Modality, Query
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.model import save_checkpoint
from xsearch.store import Database, ItemRecord
from xsearch.testing.media import gradient_image, tone, write_imu, write_wav

from scripts import xsearch_script

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    """A checkpoint that names its architecture, as xsearch's own (``random-checkpoint``) do: no --model."""
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.pt", notes={"architecture": "tiny_test"})


@pytest.fixture
def collection(tmp_path, tiny_model):
    """A small indexed collection: photos under photos/, a sound; made with the tiny model."""
    media = tmp_path / "media"
    (media / "photos").mkdir(parents=True)
    for i in range(3):
        gradient_image(media / "photos" / f"p{i}.jpg", seed=i)
    gradient_image(media / "cover.png", seed=9)
    write_wav(media / "tone.wav", tone(2.0, 16000), 16000)
    db = tmp_path / "db"
    Collection.open(db, encoder=Encoder(tiny_model, device="cpu", precision="fp32")).index([media], workers=0)
    return media, db


def search_json(db, *args, checkpoint=None):
    argv = ["search", "--db", str(db), *map(str, args), "--json"]
    if checkpoint:
        argv += ["--checkpoint", str(checkpoint)]
    result = runner.invoke(app, argv)
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


# 1. a weight is never taken out of a text by accident ----------------------------------------------------------


def test_text_keeps_its_colons_and_takes_an_explicit_weight(collection, checkpoint):
    _, db = collection
    result, out = search_json(
        db, "--text", "meeting at 10:30", "--text", "ratio 3:2", "--text", "-0.5::at night", checkpoint=checkpoint
    )
    assert result.exit_code == 0, result.output
    assert [(t["value"], t["weight"]) for t in out["query"]] == [
        ("meeting at 10:30", 1.0),
        ("ratio 3:2", 1.0),
        ("at night", -0.5),
    ]
    assert "WEIGHT::TEXT" in runner.invoke(app, ["search", "--help"]).output


# 2. a bad weight on a file that exists is about the weight ------------------------------------------------------


def test_a_bad_weight_is_named_as_such(collection, checkpoint):
    media, db = collection
    result = runner.invoke(app, ["search", "--db", str(db), "--image", f"{media / 'cover.png'}:abc"])
    assert result.exit_code == 2
    assert "weight 'abc' is not a number" in result.output and "not found" not in result.output


# 3. a file corrupted after it was indexed stops answering -------------------------------------------------------


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


# 4. every command on an existing database uses its model ----------------------------------------------------------


def test_index_without_model_uses_the_databases(collection, checkpoint):
    media, db = collection
    gradient_image(media / "new.jpg", seed=12)
    result = runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 1


def test_no_download_for_a_model_without_published_weights(collection, tmp_path, monkeypatch):
    _, db = collection
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XSEARCH_CHECKPOINT", raising=False)
    result = runner.invoke(app, ["search", "--db", str(db), "--text", "a dog"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("error: --checkpoint: ") and "'tiny_test', which has no downloadable weights" in line
    assert "XSEARCH_CHECKPOINT" in line and not (tmp_path / "home").exists()


# 5. a missing folder is a usage error: nothing created, nothing recorded -----------------------------------------


def test_missing_folder_creates_nothing(tmp_path, checkpoint):
    db = tmp_path / "db"
    argv = ["index", str(tmp_path / "nope"), "--db", str(db), "--checkpoint", str(checkpoint)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "PATHS: no such file or folder" in result.output
    assert not db.exists()


# 6. relative --path globs ---------------------------------------------------------------------------------------


def test_relative_path_glob_matches(collection, monkeypatch):
    media, db = collection
    monkeypatch.chdir(media)
    _, out = search_json(db, "--item", str(media / "cover.png"), "--path", "photos/*", "-k", "10")
    assert sorted(Path(h["uri"]).name for h in out["results"]) == ["p0.jpg", "p1.jpg", "p2.jpg"]


# 7. a documented no-weights trial ----------------------------------------------------------------------------------


def test_random_checkpoint_trial_says_its_results_are_meaningless(tmp_path):
    trial = tmp_path / "trial.pt"
    made = runner.invoke(app, ["random-checkpoint", str(trial), "--seed", "3"])
    assert made.exit_code == 0 and "meaningless" in made.stdout and trial.exists()
    media = tmp_path / "media"
    media.mkdir()
    photo = gradient_image(media / "a.jpg")
    db = tmp_path / "trial.db"
    indexed = runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(trial), "-q"])
    assert indexed.exit_code == 0, indexed.output
    assert "random-weights model (tiny_test:random-3)" in indexed.output
    assert Database.open(db, create=False).model_id == "tiny_test:random-3"
    searched = runner.invoke(app, ["search", "--db", str(db), "--image", str(photo), "--checkpoint", str(trial)])
    assert searched.exit_code == 0 and "meaningless" in searched.output and str(photo) in searched.stdout
    assert "meaningless" in runner.invoke(app, ["info", "--db", str(db)]).output
    other = tmp_path / "other.pt"
    runner.invoke(app, ["random-checkpoint", str(other), "--seed", "4"])
    mixed = runner.invoke(app, ["search", "--db", str(db), "--text", "x", "--checkpoint", str(other)])
    assert mixed.exit_code == 2 and "different spaces" in mixed.output  # seeds are different spaces


def test_download_failure_names_the_ways_to_give_a_checkpoint(tmp_path, monkeypatch):
    from dataclasses import replace

    from xsearch.model import pretrained

    entry = pretrained.PRETRAINED["imagebind_huge"]
    monkeypatch.setitem(pretrained.PRETRAINED, "imagebind_huge", replace(entry, url="http://127.0.0.1:9/w.pth"))
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XSEARCH_CHECKPOINT", raising=False)
    Database.open(tmp_path / "db", model_id="imagebind_huge", embed_dim=1024).add_items(
        [ItemRecord("/a.jpg", Modality.IMAGE, np.eye(1024, dtype=np.float32)[0])]
    )
    result = runner.invoke(app, ["search", "--db", str(tmp_path / "db"), "--text", "a dog"])
    assert result.exit_code == 2
    assert "download failed" in result.output and "--checkpoint" in result.output
    assert "XSEARCH_CHECKPOINT" in result.output


# 8. --verbose and --debug after the command; no FAISS loader noise -------------------------------------------------


def test_verbose_and_debug_work_after_the_command(collection):
    media, db = collection
    vector = np.eye(1024, dtype=np.float32)[0]
    Database.open(db, create=False).add_items([ItemRecord("/new.jpg", Modality.IMAGE, vector)])  # index now stale
    argv = [xsearch_script(), "search", "--db", str(db), "--item", str(media / "cover.png"), "--target", "image", "-v"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "INFO image index: topped up (1 rows added" in done.stderr  # -v took effect
    assert "faiss" not in done.stderr.lower()  # no "Loading faiss with AVX512 support"
    failing = subprocess.run([*argv[:-1], "--where", "nope > 1", "--debug"], capture_output=True, text=True)
    assert failing.returncode != 0 and "Traceback" in failing.stderr  # --debug shows it


# 9. --where errors in one line, about the user's filter -------------------------------------------------------------


def test_where_error_is_one_line_about_the_users_filter(collection):
    media, db = collection
    result = runner.invoke(app, ["search", "--db", str(db), "--item", str(media / "cover.png"), "--where", "widht > 3"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --where: bad filter 'widht > 3': no column named widht")
    assert "width, height" in lines[0]
    assert all(word not in lines[0] for word in ("_rowid", "embedding", ".rs:", "SELECT"))


# 10. xsearch embed: the index's folder rules, exit 3 on failures, --output -------------------------------------------


def test_embed_follows_folder_rules_and_writes_files(tmp_path, checkpoint, tiny_model):
    import pyarrow.parquet

    (tmp_path / "depth").mkdir()
    depth_map = gradient_image(tmp_path / "depth" / "room.png")
    photo = gradient_image(tmp_path / "photo.jpg", seed=2)
    argv = ["embed", str(depth_map), str(photo), "--checkpoint", str(checkpoint), "--precision", "fp32"]
    lines = [json.loads(line) for line in runner.invoke(app, argv).stdout.splitlines()]
    assert [line["modality"] for line in lines] == ["depth", "image"]

    out = tmp_path / "vectors.parquet"
    result = runner.invoke(app, [*argv, "--output", str(out)])
    assert result.exit_code == 0, result.output
    table = pyarrow.parquet.read_table(out)
    assert table.column_names == ["path", "modality", "embedding", "error"] and table["modality"].to_pylist() == [
        "depth",
        "image",
    ]
    expected = Collection(None, encoder=Encoder(tiny_model, device="cpu", precision="fp32")).embed([photo])[0].embedding
    np.testing.assert_allclose(np.asarray(table["embedding"][1].as_py()), expected, atol=1e-6)
    npy = tmp_path / "vectors.npy"
    assert runner.invoke(app, [*argv, "--output", str(npy)]).exit_code == 0
    assert np.load(npy).shape == (2, 1024)


# 11. the loading line and the whole run's time ---------------------------------------------------------------------


def test_index_says_it_is_loading_and_counts_the_whole_run(tmp_path, checkpoint):
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    argv = ["index", str(media), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint), "--workers", "0"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "loading model" in result.output and "(loading the model:" in result.stdout
    gradient_image(media / "b.jpg", seed=1)  # new work: the next run loads the model (a no-op run does not)
    report = json.loads(runner.invoke(app, [*argv, "--json"]).stdout)
    assert report["load_seconds"] > 0 and report["seconds"] >= report["load_seconds"]


# 12. the Python API ------------------------------------------------------------------------------------------------


def test_python_api_conveniences(collection, tiny_model):
    media, db = collection
    queries = [Query.image("a.jpg"), Query.audio("b.wav") * 2]
    total = sum(queries)
    assert [t.weight for t in total.terms] == [1.0, 2.0]
    assert repr(total / 2) == "Query.image('a.jpg') * 0.5 + Query.audio('b.wav')"
    assert repr(Query.depth("d.png") - Query.text("night") * 0.2) == "Query.depth('d.png') + Query.text('night') * -0.2"
    with Collection.open(db, encoder=Encoder(tiny_model, device="cpu", precision="fp32")) as opened:
        assert repr(opened) == f"Collection({str(db)!r}, model='tiny_test')"
        hits = opened.search(Query.item(str(media / "cover.png")), k=1)
        labels = opened.classify(["a", "b"], target="audio")
        assert [label.uri for label in labels] == [str(media / "tone.wav")] and labels.to_pandas().shape == (1, 5)
        assert opened.engine is not None
    assert opened._engine is None and hits[0].uri == str(media / "cover.png")  # closed on leaving the block


# 13. a closed pipe, and UTF-16 text -----------------------------------------------------------------------------------


def test_output_into_a_closed_pipe_ends_quietly(tmp_path, checkpoint):
    files = [str(gradient_image(tmp_path / f"{i}.jpg", seed=i)) for i in range(12)]  # ~250 KB of JSON lines
    argv = [xsearch_script(), "embed", *files, "--checkpoint", str(checkpoint), "--device", "cpu"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()  # what `| head -1` does
    code = process.wait(timeout=300)
    assert json.loads(first)["path"] == files[0]
    assert code == 0 and process.stderr.read() == b""


def test_utf16_text_is_text(tmp_path, checkpoint):
    media = tmp_path / "media"
    media.mkdir()
    (media / "notes.txt").write_text("waves breaking on the rocks", encoding="utf-16")
    argv = ["index", str(media), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint), "--json"]
    report = json.loads(runner.invoke(app, argv).stdout)
    assert report["by_modality"] == {"text": 1} and report["failed"] == 0


# the contact sheet: IMU plots and audio pictures, negatives marked, links opt-in, paths that wrap -------------------


@pytest.fixture
def sheet(tmp_path, checkpoint):
    media = tmp_path / "media"
    (media / "imu").mkdir(parents=True)
    write_imu(media / "imu" / "walk.npy")
    write_imu(media / "imu" / "run.npy", seed=2)
    write_wav(media / "tone.wav", tone(2.0, 16000, noise=0.3), 16000)
    db = tmp_path / "db"
    runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "-q"])
    page = tmp_path / "sheet.html"
    args = ["search", "--db", str(db), "--item", str(media / "imu" / "walk.npy")]
    args += ["--item", f"{media / 'tone.wav'}:-0.2", "--html", str(page), "--checkpoint", str(checkpoint)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return media, page


def test_contact_sheet_marks_negatives_and_links_only_when_asked(sheet):
    media, page = sheet
    html = page.read_text()
    assert 'class="card subtracted"' in html and "weight -0.2 (subtracted)" in html
    assert "file://" not in html and "/<wbr>" in html
    assert html.count('alt="imu"') == 3 and html.count('alt="waveform"') == 2  # 2 IMU results + input, sounds
    linked = page.with_name("linked.html")
    args = ["search", "--db", str(page.parent / "db"), "--item", str(media / "tone.wav"), "--html", str(linked)]
    runner.invoke(app, [*args, "--link-originals"])
    assert f'href="{(media / "tone.wav").as_uri()}"' in linked.read_text()


def test_contact_sheet_shows_imu_plots_and_audio_pictures_in_chromium(sheet, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (README: apt-get install chromium) - cannot render")
    _, page = sheet
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1000"]
    subprocess.run([*command, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def near(colour, tolerance=60):
        return (np.abs(pixels - np.array(colour)).sum(axis=-1) < tolerance).sum()

    # Three IMU plots (the input, two results): colours only their lines use (green, purple, teal).
    assert near((40, 150, 40)) > 300 and near((150, 40, 170)) > 300 and near((20, 160, 170)) > 1000
    assert near((30, 90, 170), 40) > 10_000  # two waveform pictures of 192 x 96, mostly envelope
    assert near((204, 51, 51), 40) > 500  # the red dashed border and weight of the subtracted input


def test_random_checkpoint_keeps_an_existing_file_and_makes_a_missing_folder(tmp_path):
    """A trial checkpoint never replaces a file silently (it could be the real weights), and a missing folder
    is made, as ``--db``'s is (it was an internal error)."""
    weights = tmp_path / "imagebind_huge.pth"
    weights.write_bytes(b"the real weights, say")
    refused = runner.invoke(app, ["random-checkpoint", str(weights)])
    assert refused.exit_code == 2 and "exists; give --force" in refused.output
    assert weights.read_bytes() == b"the real weights, say"
    assert runner.invoke(app, ["random-checkpoint", str(weights), "--force"]).exit_code == 0
    nested = tmp_path / "new" / "folder" / "trial.pt"
    made = runner.invoke(app, ["random-checkpoint", str(nested)])
    assert made.exit_code == 0 and nested.is_file(), made.output
