"""What a new user trips over, round 3 (the rest of points 7, 10 and 11): one test per point, each taking the
newcomer's step as they took it (the CLI through typer's runner or a subprocess, ``Collection`` in Python)."""

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
from xsearch.testing.media import gradient_image, write_wav

from scripts import xsearch_script

runner = CliRunner()


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("trial") / "trial.pt", "tiny_test", seed=0)


def _one_photo(tmp_path: Path) -> Path:
    """A media folder holding one picture, ``a.jpg``."""
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    return media


def _index(media: Path, db: Path, trial: Path, *more: str):
    return runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(trial), *more])


# 11. dot folders (.cache, .thumbnails) are not the collection -----------------------------------------------------


def test_dot_folders_are_left_out_and_said_unless_hidden_is_given(tmp_path, trial):
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg", seed=1)
    (media / ".thumbnails").mkdir()
    gradient_image(media / ".thumbnails" / "a.jpg", seed=2)
    gradient_image(media / "._b.jpg", seed=3)  # macOS's companion file of b.jpg
    first = _index(media, tmp_path / "db", trial)
    assert first.exit_code == 0, first.output
    assert "1 new" in first.output and "hidden: 2 files and folders named with a dot" in first.output
    again = _index(media, tmp_path / "db", trial, "--hidden")
    assert again.exit_code == 0 and "2 new" in again.output, again.output


# 7 and 11. counts and rates say what happened ---------------------------------------------------------------------


def test_json_says_new_as_the_summary_does_and_no_rate_when_nothing_was_embedded(tmp_path, trial):
    media = _one_photo(tmp_path)
    first = json.loads(_index(media, tmp_path / "db", trial, "--json").stdout)
    assert first["new"] == first["indexed"] == 1 and first["files_per_second"] > 0
    again = _index(media, tmp_path / "db", trial, "--json", "-q")
    assert json.loads(again.stdout)["files_per_second"] is None
    text = _index(media, tmp_path / "db", trial)
    assert "files/s" not in text.output and "0 new, 0 updated, 1 unchanged" in text.output


def test_files_that_only_gained_moments_are_counted_as_such(tmp_path, trial):
    from xsearch.testing.media import event_recording

    media = tmp_path / "media"
    media.mkdir()
    write_wav(media / "talk.wav", event_recording(12, 16000, 3.0), 16000)
    assert _index(media, tmp_path / "db", trial).exit_code == 0
    cut = _index(media, tmp_path / "db", trial, "--moments")
    assert cut.exit_code == 0 and "0 new, 0 updated, 1 given moments, 0 unchanged" in cut.output, cut.output


# 10. info --checkpoint checks the file's own model; info says why auto picks its precision ----------------------


def test_info_refuses_another_seeds_checkpoint_and_says_why_auto_picks_its_precision(tmp_path, trial):
    media = _one_photo(tmp_path)
    db = tmp_path / "db"
    assert _index(media, db, trial).exit_code == 0
    other = save_random_checkpoint(tmp_path / "other.pt", "tiny_test", seed=1)
    refused = runner.invoke(app, ["info", "--db", str(db), "--checkpoint", str(other)])
    assert refused.exit_code == 2 and "not 'tiny_test:random-1'" in refused.output, refused.output
    same = runner.invoke(app, ["info", "--db", str(db), "--checkpoint", str(trial), "--json"])
    assert same.exit_code == 0, same.output
    auto = json.loads(same.stdout)["auto_precision"]
    assert auto["precision"] in ("fp32", "bf16", "int8") and ("CPU" in auto["why"] or "GPU" in auto["why"])


def test_auto_precision_gives_its_reason_per_kind_of_cpu():
    from xsearch.precision import auto_precision

    cpu = False  # no CUDA GPU
    assert auto_precision(cpu, frozenset({"amx_bf16"}), onnxruntime=True)[0] == "bf16"
    assert auto_precision(cpu, frozenset({"avx512_bf16"}), onnxruntime=True) == (
        "int8",
        "a CPU without AMX, with ONNX Runtime (int8 measured fastest there)",
    )
    assert "pip install 'xsearch[cpu]'" in auto_precision(cpu, frozenset(), onnxruntime=False)[1]


# 11. info marks stale only the modality whose rows changed ----------------------------------------------------------


def test_adding_texts_leaves_the_image_index_fresh_and_untouched(tmp_path, trial):
    from xsearch import Collection
    from xsearch.index import IndexSet
    from xsearch.index.files import read_meta
    from xsearch.modalities import Modality

    media = _one_photo(tmp_path)
    db = tmp_path / "db"
    assert _index(media, db, trial).exit_code == 0
    image_meta = read_meta(db / "faiss" / "image")
    (media / "note.txt").write_text("a new note")
    assert _index(media / "note.txt", db, trial, "--no-update-index").exit_code == 0
    store = Collection.open(db).store
    assert IndexSet.latest(store).status(Modality.IMAGE)["fresh"]
    assert not IndexSet.latest(store).status(Modality.TEXT)["fresh"]
    info = runner.invoke(app, ["info", "--db", str(db)]).output
    assert "image" in info and "index: flat, fresh" in info.split("image", 1)[1].splitlines()[0]
    assert _index(media, db, trial).exit_code == 0  # the next run tops up text only
    assert read_meta(db / "faiss" / "image")["segments"] == image_meta["segments"]  # no empty top-up segment


# 11. duplicates: the original stands for its copies, and a modality is never folded into another ----------------


def test_the_original_stands_for_its_copies_and_modalities_stay_apart(tmp_path, trial):
    media = tmp_path / "media"
    (media / "thermal").mkdir(parents=True)
    gradient_image(media / "beach.jpg", seed=4)
    data = (media / "beach.jpg").read_bytes()
    (media / "beach copy.jpg").write_bytes(data)  # scanned first: the lower id
    (media / "thermal" / "beach.jpg").write_bytes(data)  # the same bytes, read as a thermal scan
    db = tmp_path / "db"
    assert _index(media, db, trial).exit_code == 0
    found = runner.invoke(
        app, ["search", "--db", str(db), "--checkpoint", str(trial), "--text", "x", "--json", "--target", "all"]
    )
    hits = {(hit["modality"], Path(hit["uri"]).name): hit for hit in json.loads(found.stdout)["results"]}
    assert set(hits) == {("image", "beach.jpg"), ("thermal", "beach.jpg")}
    assert [Path(uri).name for uri in hits["image", "beach.jpg"]["duplicates"]] == ["beach copy.jpg"]
    assert hits["thermal", "beach.jpg"]["duplicates"] == []


def test_names_of_copies_are_told_from_originals():
    from xsearch.query.ranking import _named_as_copy

    assert all(map(_named_as_copy, ["/a/beach copy.jpg", "/a/beach copy 2.jpg", "/a/beach (1).jpg", "/a/b-copy.png"]))
    assert not any(map(_named_as_copy, ["/a/beach.jpg", "/a/copy.jpg", "/a/photocopy.jpg", "/a/copy/beach.jpg"]))


# 11. search's first guesses get the option meant ------------------------------------------------------------------


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
    media = _one_photo(tmp_path)
    db = tmp_path / "db"
    assert _index(media, db, trial).exit_code == 0
    wrong = runner.invoke(app, ["search", "--db", str(db), "--checkpoint", str(trial), "--audio", str(media / "a.jpg")])
    assert wrong.exit_code == 2 and "its content is a JPEG image, not audio" in wrong.output, wrong.output
    assert "named as" not in wrong.output


def test_sub_second_moments_show_tenths():
    from xsearch.moments import clock_span, parse_clock

    assert clock_span(0.25, 0.75) == "0:00.2-0:00.7" and clock_span(63.0, 69.0) == "1:03-1:09"
    assert parse_clock("17:30:0.5") is None and parse_clock("1:05.5") == 65.5


def test_moment_settings_alone_ask_for_moments(tmp_path, trial):
    result = _index(tmp_path, tmp_path / "db", trial, "--moment-seconds", "4")
    assert result.exit_code == 2 and "ask for moments too (--moments)" in result.output, result.output


# 11. help and messages --------------------------------------------------------------------------------------------


def test_help_lists_whole_descriptions_and_every_command_words_the_model_flags_alike():
    listing = runner.invoke(app, ["--help"], terminal_width=200).output
    assert "Serve a database: a browser page at / and a JSON API (documented at /docs), the model kept warm." in listing
    assert "..." not in listing.split("Commands:")[1]
    model = "Architecture of --checkpoint (default: the database's, else what the checkpoint names, else "
    model += "imagebind_huge)."
    for command in ("index", "search", "classify", "embed", "bind", "serve", "mcp"):
        shown = " ".join(runner.invoke(app, [command, "--help"], terminal_width=240).output.split())
        assert model in shown and "--verify" in shown, command  # one declaration of the five flags (cli.app)


def test_a_truncated_checkpoint_is_one_short_line(tmp_path, trial):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(trial.read_bytes()[:300_000])
    result = runner.invoke(app, ["embed", str(trial), "--checkpoint", str(cut)])
    assert result.exit_code == 2 and "truncated or corrupt" in result.output
    assert "miniz" not in result.output and "high likelihood" not in result.output


def test_the_first_int8_use_prints_no_exporter_or_quantiser_notes(tmp_path, trial):
    pytest.importorskip("onnxruntime", reason="int8 needs ONNX Runtime (the test extra installs it)")
    note = tmp_path / "note.txt"
    note.write_text("a note")
    env = {**os.environ, "XSEARCH_HOME": str(tmp_path / "home")}
    argv = [xsearch_script(), "embed", str(note), "--checkpoint", str(trial), "--precision", "int8", "-v"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "exporting the text tower to int8 once" in done.stderr  # our own line stays
    assert "Warning" not in done.stderr and "Quantization parameters" not in done.stderr, done.stderr


# 5. a script beside a clone named xsearch imports the package, editable install or not --------------------------


def test_a_script_beside_a_clone_named_xsearch_imports_it(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "xsearch").symlink_to(root, target_is_directory=True)  # the clone, as `git clone` names it
    script = tmp_path / "find.py"
    script.write_text(
        "from xsearch import Collection, Query\n"
        "import xsearch.cli.main, xsearch.indexer.pipeline\n"
        "print(Collection.__module__, xsearch.indexer.pipeline.__name__)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["xsearch.collection", "xsearch.indexer.pipeline"]
