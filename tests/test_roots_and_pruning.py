"""Roots and pruning: an empty, missing or unmounted root is never pruned, one missing root does not stop the
others, and a root reached through a link gives its target's uris.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from xsearch import Collection
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.store import Database
from xsearch.testing.media import gradient_image

from trials import numbered_pictures, tiny_checkpoint

runner = CliRunner()


def test_an_empty_root_is_not_pruned(tmp_path, tiny_model):
    checkpoint = tiny_checkpoint(tmp_path, tiny_model)
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


def test_a_root_reached_through_a_link_gives_the_same_uris(tmp_path, tiny_model):
    from xsearch import Collection
    from xsearch.encoder import Encoder

    media = numbered_pictures(tmp_path / "media", 3)
    (tmp_path / "link").symlink_to(media)
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    assert collection.index([tmp_path / "link"], workers=0).indexed == 3
    assert collection.index([media], workers=0).indexed == 0  # the same files, not three more rows
    assert sorted(collection.store.items().scan(["uri"])["uri"].to_pylist()) == [
        str(media / f"{i}.png") for i in range(3)
    ]


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
