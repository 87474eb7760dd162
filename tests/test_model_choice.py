"""Which model a command runs: the database's architecture, trial (random) weights marked as such, downloads
refused or failed with the ways to give a checkpoint, files that are no checkpoint, and how ``auto`` picks a
precision.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from xsearch import Modality
from xsearch.cli.main import app
from xsearch.model import save_random_checkpoint
from xsearch.store import Database, ItemRecord
from xsearch.testing.media import gradient_image

from scripts import xsearch_script
from trials import index_cli, one_photo_folder

runner = CliRunner()


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


def test_trial_weights_are_marked_on_every_export(trial_db, trial, tmp_path):
    _, db = trial_db
    sheet = tmp_path / "sheet.html"
    found = runner.invoke(app, ["search", "--db", str(db), "--item", "0", "--html", str(sheet), "--json"])
    assert found.exit_code == 0
    body = json.loads(found.stdout)
    assert body["model_id"] == "tiny_test:random-0" and "meaningless" in body["note"]
    assert "random-weights trial model" in sheet.read_text()


def test_a_file_that_is_no_checkpoint_is_named_plainly(tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("hello")
    result = runner.invoke(app, ["embed", str(bogus), "--checkpoint", str(bogus)])
    assert result.exit_code == 2 and "not a PyTorch zip archive" in result.output and "mmap" not in result.output


def test_info_refuses_another_seeds_checkpoint_and_says_why_auto_picks_its_precision(tmp_path, trial):
    media = one_photo_folder(tmp_path)
    db = tmp_path / "db"
    assert index_cli(media, db, trial).exit_code == 0
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
