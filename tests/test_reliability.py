"""Writers and prune: one writer per database, ids never reused, an empty or missing root never pruned."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from cli.main import app
from xsearch import Modality
from xsearch.model import save_checkpoint
from xsearch.store import ItemRecord, Store, writer_lock

from media import gradient_image

runner = CliRunner()


def vector(i: int) -> np.ndarray:
    return np.eye(1024, dtype=np.float32)[i]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, tiny_model):
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})
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
    store = Store.open(tmp_path / "db", model_id="tiny_test")
    store.add_items([ItemRecord(f"/{i}.jpg", Modality.IMAGE, vector(i)) for i in range(3)])  # ids 0, 1, 2
    store.delete_items(ids=[2])  # the highest, as --prune would
    store.add_items([ItemRecord("/new.jpg", Modality.IMAGE, vector(5))])
    assert store.lookup("/new.jpg", ["id"])["id"] == 3
    reopened = Store.open(tmp_path / "db", model_id="tiny_test")
    reopened.delete_items(ids=[3])
    reopened.add_items([ItemRecord("/newer.jpg", Modality.IMAGE, vector(6))])
    assert reopened.lookup("/newer.jpg", ["id"])["id"] == 4


def test_an_empty_root_is_not_pruned(tmp_path, tiny_model):
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})
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
    assert Store.open(db, create=False).count() == 3
    gradient_image(drive / "0.jpg", seed=0)  # back with one file: the other two are really gone
    runner.invoke(app, argv)
    assert Store.open(db, create=False).count() == 1


def test_a_filter_cannot_escape_its_target(tmp_path):
    store = Store.open(tmp_path / "db", model_id="tiny_test")
    store.add_items([ItemRecord("/a.jpg", Modality.IMAGE, vector(0)), ItemRecord("/b.wav", Modality.AUDIO, vector(1))])
    argv = ["search", "--db", str(tmp_path / "db"), "--item", "/a.jpg", "--target", "image"]
    escaping = runner.invoke(app, [*argv, "--where", "1=1) OR (modality = 'audio'"])
    assert escaping.exit_code == 2 and "unbalanced parentheses" in escaping.output
    fine = runner.invoke(app, [*argv, "--where", "uri LIKE '%(a%' OR (width IS NULL)", "--json"])
    assert fine.exit_code == 0, fine.output
    assert [r["modality"] for r in json.loads(fine.stdout)["results"]] == ["image"]


def test_control_characters_in_names_never_reach_the_terminal(tmp_path):
    hostile = "/m/\x1b]0;pwned\x07evil\nname.jpg"
    store = Store.open(tmp_path / "db", model_id="tiny_test")
    store.add_items([ItemRecord(hostile, Modality.IMAGE, vector(0))])
    store.record_errors([("/m/bad\x1b[2J.jpg", "image", "decode", "broken\r\nreally")])
    table = runner.invoke(app, ["search", "--db", str(tmp_path / "db"), "--item", "0"]).stdout
    errors = runner.invoke(app, ["errors", "--db", str(tmp_path / "db")]).stdout
    for output in (table, errors):
        assert "\x1b" not in output and "\x07" not in output and "\r" not in output
    assert "\\x1b]0;pwned\\x07evil\\x0aname.jpg" in table and len(table.strip().splitlines()) == 2
    assert errors.strip() == "/m/bad\\x1b[2J.jpg: broken\\x0d\\x0areally [decode]"
