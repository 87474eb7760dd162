"""The command line as a person types it: query words and weights, flags before and after a command, outputs
and their folders, help that says kinds of values, guesses answered with the option meant, and every problem
one line that names what to change.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xsearch import Modality
from xsearch.cli.main import app
from xsearch.errors import StoreError
from xsearch.store import Database, ItemRecord
from xsearch.testing.media import gradient_image, tone, write_video, write_wav

from scripts import xsearch_script
from trials import basis_vector, index_cli, one_photo_folder, search_json

runner = CliRunner()


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


def test_a_bad_weight_is_named_as_such(collection, checkpoint):
    media, db = collection
    result = runner.invoke(app, ["search", "--db", str(db), "--image", f"{media / 'cover.png'}:abc"])
    assert result.exit_code == 2
    assert "weight 'abc' is not a number" in result.output and "not found" not in result.output


def test_relative_path_glob_matches(collection, monkeypatch):
    media, db = collection
    monkeypatch.chdir(media)
    _, out = search_json(db, "--item", str(media / "cover.png"), "--path", "photos/*", "-k", "10")
    assert sorted(Path(h["uri"]).name for h in out["results"]) == ["p0.jpg", "p1.jpg", "p2.jpg"]


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


def test_where_error_is_one_line_about_the_users_filter(collection):
    media, db = collection
    result = runner.invoke(app, ["search", "--db", str(db), "--item", str(media / "cover.png"), "--where", "widht > 3"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --where: bad filter 'widht > 3': no column named widht")
    assert "width, height" in lines[0]
    assert all(word not in lines[0] for word in ("_rowid", "embedding", ".rs:", "SELECT"))


def test_output_into_a_closed_pipe_ends_quietly(tmp_path, checkpoint):
    files = [str(gradient_image(tmp_path / f"{i}.jpg", seed=i)) for i in range(12)]  # ~250 KB of JSON lines
    argv = [xsearch_script(), "embed", *files, "--checkpoint", str(checkpoint), "--device", "cpu"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()  # what `| head -1` does
    code = process.wait(timeout=300)
    assert json.loads(first)["path"] == files[0]
    assert code == 0 and process.stderr.read() == b""


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


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["a", "dog"], "to search with a text, give --text 'a dog'"),
        (["--modality", "image", "--text", "x"], "--target chooses what is searched"),
        (["--item", "338@17:30:0.5"], "a moment's weight goes first: 0.5::338@17:30"),
        (["--item", "338@abc"], "'abc' is not a time (SECONDS, M:SS or H:MM:SS)"),
    ],
)
def test_search_answers_first_guesses_with_the_option_meant(tmp_path, argv, said):
    result = runner.invoke(app, ["search", "--db", str(tmp_path / "db"), *argv])
    assert result.exit_code == 2 and said in result.output, result.output


def test_a_query_file_of_another_modality_is_named_by_its_content(tmp_path, trial):
    media = one_photo_folder(tmp_path)
    db = tmp_path / "db"
    assert index_cli(media, db, trial).exit_code == 0
    wrong = runner.invoke(app, ["search", "--db", str(db), "--checkpoint", str(trial), "--audio", str(media / "a.jpg")])
    assert wrong.exit_code == 2 and "its content is a JPEG image, not audio" in wrong.output, wrong.output
    assert "named as" not in wrong.output


def test_sub_second_moments_show_tenths():
    from xsearch.moments import clock_span, parse_clock

    assert clock_span(0.25, 0.75) == "0:00.2-0:00.7" and clock_span(63.0, 69.0) == "1:03-1:09"
    assert parse_clock("17:30:0.5") is None and parse_clock("1:05.5") == 65.5


def test_moment_settings_alone_ask_for_moments(tmp_path, trial):
    result = index_cli(tmp_path, tmp_path / "db", trial, "--moment-seconds", "4")
    assert result.exit_code == 2 and "ask for moments too (--moments)" in result.output, result.output


def test_help_lists_whole_descriptions_and_every_command_words_the_model_flags_alike():
    listing = runner.invoke(app, ["--help"], terminal_width=200).output
    assert "Serve a database: a browser page at / and a JSON API (documented at /docs), the model kept warm." in listing
    assert "..." not in listing.split("Commands:")[1]
    model = "Architecture of --checkpoint (default: the database's, else what the checkpoint names, else "
    model += "imagebind_huge)."
    for command in ("index", "search", "classify", "embed", "bind", "serve", "mcp"):
        shown = " ".join(runner.invoke(app, [command, "--help"], terminal_width=240).output.split())
        assert model in shown and "--verify" in shown, command  # one declaration of the five flags (cli.app)


def test_control_characters_in_names_never_reach_the_terminal(tmp_path):
    hostile = "/m/\x1b]0;pwned\x07evil\nname.jpg"
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord(hostile, Modality.IMAGE, basis_vector(0))])
    store.record_errors([("/m/bad\x1b[2J.jpg", "image", "decode", "broken\r\nreally")])
    table = runner.invoke(app, ["search", "--db", str(tmp_path / "db"), "--item", "0"]).stdout
    errors = runner.invoke(app, ["errors", "--db", str(tmp_path / "db")]).stdout
    for output in (table, errors):
        assert "\x1b" not in output and "\x07" not in output and "\r" not in output
    assert "\\x1b]0;pwned\\x07evil\\x0aname.jpg" in table and len(table.strip().splitlines()) == 2
    assert errors.strip() == "/m/bad\\x1b[2J.jpg: broken\\x0d\\x0areally [decode]"


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
        [ItemRecord("/a.jpg", Modality.IMAGE, basis_vector(0))]
    )
    result = runner.invoke(app, ["search", "--db", str(tmp_path / "db"), "--item", "²"])
    assert result.exit_code == 2 and "no indexed item '²'" in result.output


def test_debug_lasts_one_command_line(tmp_path):
    """``--debug`` (before or after the command) raises the traceback of that command line only: the next
    one, in the same process, is back to one line."""
    argv = ["search", "--db", str(tmp_path / "none"), "--text", "a"]
    for debugged in (["--debug", *argv], [*argv, "--debug"]):
        assert isinstance(runner.invoke(app, debugged).exception, StoreError)  # raised whole, for its traceback
        plain = runner.invoke(app, argv)
        assert plain.exit_code == 2 and plain.output.startswith("error: ") and len(plain.output.splitlines()) == 1
