"""What a new user trips over, round 2 (scripts, folders, colons, outputs, the API page, trial warnings): one
test per point, each reproducing the newcomer's step as they took it (a script run with ``python``, the
CLI in a subprocess or typer's runner, the HTTP API through FastAPI's client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xsearch.cli.main import app
from xsearch.model import save_random_checkpoint
from xsearch.testing.media import gradient_image, tone, write_video, write_wav

from scripts import xsearch_script

runner = CliRunner()


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    """A trial checkpoint, as ``xsearch random-checkpoint trial.pt`` writes it."""
    return save_random_checkpoint(tmp_path_factory.mktemp("trial") / "trial.pt", "tiny_test", seed=0)


def _photos(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gradient_image(folder / f"p{i}.jpg", seed=i)
    return folder


# 1 and 2. a script without a main guard, run from a folder that holds a folder named xsearch ---------------------

README_SCRIPT = """\
from xsearch import Collection, Query

media = Collection.open("media.db")
report = media.index(["photos"], workers=2)
print("indexed", report.indexed, "failed", report.failed, [f.message for f in report.failures])
hits = media.search(Query.item("photos/p0.jpg"), target="image", k=3)
print("top", Path(hits[0].uri).name)
"""


def test_a_script_without_a_main_guard_indexes_beside_a_folder_named_xsearch(tmp_path, trial):
    """Decode workers re-ran an unguarded script (and then failed on the writer lock); from a folder holding
    an ``xsearch`` folder, they imported that folder instead of the package. (The script sits in a folder of
    its own: a script beside an ``xsearch`` folder shadows an editable install in its own process, before
    xsearch runs; a regular install is found first.)"""
    work = tmp_path / "work"
    (work / "xsearch").mkdir(parents=True)  # the parent of a clone, say
    _photos(work / "photos")
    script = tmp_path / "scripts" / "index_my_photos.py"
    script.parent.mkdir()
    script.write_text("from pathlib import Path\n" + README_SCRIPT)
    env = {**os.environ, "XSEARCH_CHECKPOINT": str(trial), "XSEARCH_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "indexed 3 failed 0 []" in done.stdout and "top p0.jpg" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("indexed") == 1  # the script ran once, not once more per worker


def test_the_readme_python_example_runs_as_written(tmp_path, trial):
    """README's Python block, saved as a script (no main guard) and run from a folder that holds a folder
    named ``xsearch``, with its ``/data/...`` folders moved under this test's folder and the trial checkpoint
    in ``XSEARCH_CHECKPOINT``; every file it names exists."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    work = tmp_path / "work"
    (work / "xsearch").mkdir(parents=True)
    data = tmp_path / "data"
    _photos(data / "media", 2)
    gradient_image(data / "media" / "beach.jpg", seed=7)
    write_wav(data / "media" / "rain.wav", tone(2.0, 16000), 16000)
    _photos(data / "scans", 1)
    for name in ("bird.jpg", "a.jpg", "b.jpg"):
        gradient_image(work / name, seed=len(name))
    for name in ("rain.wav", "waves.wav"):
        write_wav(work / name, tone(2.0, 16000, freq=300), 16000)
    write_video(work / "clip.mp4", seconds=2.0)
    (work / "notes.txt").write_text("a note")
    for label in ("rain", "dry"):
        write_wav(_photos(work / "examples" / label, 1) / "x.wav", tone(2.0, 16000), 16000)
    script = tmp_path / "scripts" / "example.py"
    script.parent.mkdir()
    script.write_text(block.replace("/data/", f"{data}/") + "\nprint('the example ran')\n")
    env = {**os.environ, "XSEARCH_CHECKPOINT": str(trial), "XSEARCH_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0].startswith("5 0 []") and "the example ran" in done.stdout, done.stdout


def test_index_from_a_folder_holding_a_folder_named_xsearch(tmp_path, trial):
    work = tmp_path / "work"
    (work / "xsearch").mkdir(parents=True)
    _photos(work / "photos")
    argv = [xsearch_script(), "index", "photos", "--db", "media.db", "--checkpoint", str(trial), "--workers", "2"]
    done = subprocess.run([*argv, "--json"], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["indexed"], report["failed"]) == (3, 0), report["failures"]


# 3. a file whose name holds a colon is a file, not a URL ---------------------------------------------------------


def test_audio_and_video_named_with_colons_given_relatively(tmp_path, monkeypatch, trial):
    monkeypatch.chdir(tmp_path)
    write_wav(Path("take:2.wav"), tone(2.0, 16000), 16000)
    write_video(Path("clip:1.mp4"), seconds=2.0)
    result = runner.invoke(app, ["embed", "take:2.wav", "clip:1.mp4", "--checkpoint", str(trial)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["path"], line["modality"], "embedding" in line) for line in lines] == [
        ("take:2.wav", "audio", True),
        ("clip:1.mp4", "video", True),
    ]


# 4. an output file in a missing folder -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trial_db(tmp_path_factory, trial) -> tuple[Path, Path]:
    """Three photos and a tone indexed with the trial checkpoint."""
    root = tmp_path_factory.mktemp("trialdb")
    media = _photos(root / "media" / "photos")
    write_wav(media.parent / "tone.wav", tone(2.0, 16000), 16000)
    db = root / "db"
    done = runner.invoke(app, ["index", str(media.parent), "--db", str(db), "--checkpoint", str(trial), "-q"])
    assert done.exit_code == 0, done.output
    return media.parent, db


def test_outputs_in_missing_folders_are_made(tmp_path, trial, trial_db):
    media, db = trial_db
    sheet = tmp_path / "new" / "sheet.html"
    found = runner.invoke(app, ["search", "--db", str(db), "--item", "0", "--html", str(sheet)])
    assert found.exit_code == 0 and sheet.is_file(), found.output
    labels = tmp_path / "new2" / "labels.csv"
    labelled = runner.invoke(
        app, ["classify", "--db", str(db), "--labels", "a,b", "--output", str(labels), "--checkpoint", str(trial)]
    )
    assert labelled.exit_code == 0 and labels.is_file(), labelled.output
    vectors = tmp_path / "new3" / "v.parquet"
    embedded = runner.invoke(
        app, ["embed", str(media / "tone.wav"), "--output", str(vectors), "--checkpoint", str(trial)]
    )
    assert embedded.exit_code == 0 and vectors.is_file(), embedded.output


def test_an_output_that_cannot_be_written_is_a_usage_error_before_any_work(tmp_path, trial, trial_db):
    media, db = trial_db
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["search", "--db", str(db), "--item", "0", "--html", str(tmp_path / "file" / "s.html")])
    assert result.exit_code == 2 and "--html" in result.output and "cannot create its folder" in result.output
    assert "rank" not in result.stdout  # no search ran


# 5. --exclude with a relative path glob, counted; a pattern that matched nothing is named ------------------------


def test_exclude_takes_relative_path_globs_as_search_path_does(tmp_path, trial, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _photos(tmp_path / "media" / "good", 2)
    _photos(tmp_path / "media" / "broken", 2)
    argv = ["index", "media", "--db", "db", "--checkpoint", str(trial), "--workers", "0"]
    done = runner.invoke(app, [*argv, "--exclude", "media/broken/*", "--exclude", "nothing-like-this"])
    assert done.exit_code == 0, done.output
    assert "2 new" in done.stdout and "excluded: 2 files or folders" in done.stdout
    assert "--exclude 'nothing-like-this' matched nothing" in done.output
    report = json.loads(runner.invoke(app, [*argv, "--exclude", "broken", "--json"]).stdout)
    assert report["excluded"] == 1 and report["unmatched_excludes"] == []  # a name: the folder itself


# 6. embed: folders, .npy rows named, JSON lines to a file --------------------------------------------------------


def test_embed_walks_folders_and_says_which_row_is_which_file(tmp_path, trial):
    folder = _photos(tmp_path / "photos", 2)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.bin").write_bytes(b"\0\1")  # not media: skipped, as index skips it
    out = tmp_path / "v.npy"
    done = runner.invoke(app, ["embed", str(folder), "--output", str(out), "--checkpoint", str(trial)])
    assert done.exit_code == 3, done.output  # one file failed
    rows = json.loads(out.with_suffix(".paths.json").read_text())
    assert rows["model_id"] == "tiny_test:random-0"
    assert [Path(p).name for p in rows["paths"]] == ["p0.jpg", "p1.jpg"] and len(__import__("numpy").load(out)) == 2
    assert "broken.jpg" in done.output and "random-weights model" in done.output
    lines = tmp_path / "v.jsonl"
    runner.invoke(app, ["embed", str(folder), "--output", str(lines), "--checkpoint", str(trial)])
    parsed = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [(Path(p["path"]).name, p["modality"], "embedding" in p) for p in parsed] == [
        ("broken.jpg", "image", False),
        ("p0.jpg", "image", True),
        ("p1.jpg", "image", True),
    ]


def test_embed_of_an_unknown_file_says_null_not_none(tmp_path, trial):
    (tmp_path / "what.xyz").write_text("?")
    done = runner.invoke(app, ["embed", str(tmp_path / "what.xyz"), "--checkpoint", str(trial)])
    line = json.loads(done.stdout)
    assert done.exit_code == 3 and line["modality"] is None and "unknown file type" in line["error"]


# 10. a string is a text query; a misspelt constructor is named ---------------------------------------------------


def test_a_string_searches_as_text_and_a_misspelt_constructor_is_named(trial_db, trial):
    from xsearch import Collection, Query

    _, db = trial_db
    with Collection.open(db, checkpoint=trial) as media:
        as_text = media.search("a dog barking", k=3)
        assert [r.id for r in as_text] == [r.id for r in media.search(Query.text("a dog barking"), k=3)]
    with pytest.raises(AttributeError, match=r"did you mean Query\.image\?"):
        Query.imgae("bird.jpg")


# 12. a run with nothing new loads no model; a second writer is refused before loading ----------------------------


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


# 13, 14, 15. serve: a taken port, a short token, a trial database without its checkpoint ---------------------------


def test_serve_on_a_taken_port_is_one_usage_line(trial_db, trial):
    import socket

    _, db = trial_db
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--db", str(db), "--checkpoint", str(trial), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"--port {port}: address already in use" in result.output and "serving" not in result.output


def test_serve_refuses_a_short_token_and_a_trial_database_without_its_checkpoint(trial_db):
    _, db = trial_db
    short = runner.invoke(app, ["serve", "--db", str(db), "--token", "abc"])
    assert short.exit_code == 2 and "--token" in short.output and "easy to guess" in short.output
    bare = runner.invoke(app, ["serve", "--db", str(db)], env={"XSEARCH_CHECKPOINT": ""})
    assert bare.exit_code == 2 and "give the checkpoint file it was made with" in bare.output
    assert "serving" not in bare.output


# 9. trial weights are said on the contact sheet, in JSON and on the page's data ----------------------------------


def test_trial_weights_are_marked_on_every_export(trial_db, trial, tmp_path):
    _, db = trial_db
    sheet = tmp_path / "sheet.html"
    found = runner.invoke(app, ["search", "--db", str(db), "--item", "0", "--html", str(sheet), "--json"])
    assert found.exit_code == 0
    body = json.loads(found.stdout)
    assert body["model_id"] == "tiny_test:random-0" and "meaningless" in body["note"]
    assert "random-weights trial model" in sheet.read_text()


# 16. help in command-line words; every command takes the model flags; classify --path; embed --as M=PATH --------


def test_help_shows_kinds_of_values_not_python_types(tmp_path):
    done = subprocess.run([xsearch_script(), "index", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage: xsearch index [OPTIONS] [PATHS]..." in done.stdout
    assert "<bool>" not in done.stdout and "<str>" not in done.stdout and "<list[str]>" not in done.stdout
    assert "--batch-size INTEGER" in done.stdout and "--db TEXT" in done.stdout
    served = subprocess.run([xsearch_script(), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert "--no-auth" in served.stdout and "--no-no-auth" not in served.stdout


def test_info_takes_the_checkpoint_and_classify_a_path_glob(trial_db, trial, monkeypatch):
    media, db = trial_db
    info = runner.invoke(app, ["info", "--db", str(db), "--checkpoint", str(trial), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["items"] == 4
    monkeypatch.chdir(media)
    args = ["classify", "--db", str(db), "--labels", "a,b", "--checkpoint", str(trial), "--json"]
    photos = json.loads(runner.invoke(app, [*args, "--path", "photos/*"]).stdout)
    assert sorted(Path(row["uri"]).name for row in photos) == ["p0.jpg", "p1.jpg", "p2.jpg"]


def test_embed_takes_as_modality_equals_path_and_as_blames_itself(tmp_path, trial):
    maps = _photos(tmp_path / "scans", 1)
    done = runner.invoke(app, ["embed", str(maps / "p0.jpg"), "--as", f"depth={maps}", "--checkpoint", str(trial)])
    assert done.exit_code == 0 and json.loads(done.stdout)["modality"] == "depth", done.output
    missing = tmp_path / "nope"
    argv = ["index", str(maps), "--db", str(tmp_path / "db"), "--as", f"depth={missing}", "--checkpoint", str(trial)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and result.output.startswith("error: --as: no such file or folder")


# 17. the README's names exist; errors says when there are none -------------------------------------------------


def test_labels_rows_and_an_empty_errors_list(trial_db, trial):
    from xsearch import Collection

    _, db = trial_db
    with Collection.open(db, checkpoint=trial) as media:
        labels = media.classify(["a", "b"])
        assert [row.id for row in labels.rows] == [row["id"] for row in labels.as_json()] and len(labels.rows) == 4
        frame = media.search("x", k=2).to_pandas()
    assert list(frame.columns)[:6] == ["rank", "score", "calibrated", "id", "uri", "modality"]
    said = runner.invoke(app, ["errors", "--db", str(db)])
    assert said.exit_code == 0 and said.stdout.startswith("no errors")


# 18 and 19. duplicates: a stable representative, the query's own item first; an item query leads ---------------


@pytest.fixture
def copies(tmp_path, trial):
    media = tmp_path / "media"
    _photos(media / "b", 1)
    (media / "a").mkdir()
    (media / "a" / "copy.jpg").write_bytes((media / "b" / "p0.jpg").read_bytes())
    write_wav(media / "tone.wav", tone(2.0, 16000), 16000)
    db = tmp_path / "db"
    runner.invoke(app, ["index", str(media / "b"), "--db", str(db), "--checkpoint", str(trial), "-q"])  # first
    runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(trial), "-q"])
    return media, db


def test_the_representative_of_duplicates_is_stable_and_the_query_item_leads(copies, trial):
    media, db = copies
    first, second = str(media / "b" / "p0.jpg"), str(media / "a" / "copy.jpg")

    def top(*args):
        found = runner.invoke(app, ["search", "--db", str(db), "--checkpoint", str(trial), "--json", *args])
        return json.loads(found.stdout)["results"][0]

    by_text = top("--text", "x", "--target", "image")
    assert by_text["uri"] == first and by_text["duplicates"] == [second]  # the first indexed copy stands
    assert top("--item", second, "--target", "image")["uri"] == second  # the query's own file stands
    assert top("--text", "x", "--target", "image", "--path", "*/a/*")["uri"] == second


def test_an_item_query_over_all_targets_leads_with_the_item_unless_excluded(copies, trial):
    media, db = copies
    tone_path = str(media / "tone.wav")
    args = ["search", "--db", str(db), "--checkpoint", str(trial), "--json", "--item", tone_path, "--target", "all"]
    led = json.loads(runner.invoke(app, [*args, "--autocut", "1", "--min-calibrated", "1000"]).stdout)["results"]
    assert led[0]["uri"] == tone_path and led[0]["score"] > 0.999  # exempt from the cut-offs
    others = json.loads(runner.invoke(app, [*args, "--exclude-query-items"]).stdout)["results"]
    assert tone_path not in [hit["uri"] for hit in others] and others


# 21. replaced rows count as updates; a non-checkpoint file's message; "loading model" names the file ----------


def test_reindexing_as_another_modality_counts_updates(tmp_path, trial):
    maps = _photos(tmp_path / "maps", 2)
    argv = ["index", str(maps), "--db", str(tmp_path / "db"), "--checkpoint", str(trial), "--json", "--workers", "0"]
    assert json.loads(runner.invoke(app, argv).stdout)["indexed"] == 2
    again = json.loads(runner.invoke(app, [*argv, "--as", "depth"]).stdout)
    assert (again["indexed"], again["updated"]) == (0, 2)


def test_a_file_that_is_no_checkpoint_is_named_plainly(tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("hello")
    result = runner.invoke(app, ["embed", str(bogus), "--checkpoint", str(bogus)])
    assert result.exit_code == 2 and "not a PyTorch zip archive" in result.output and "mmap" not in result.output
