"""Files with the same bytes: one stands for its copies (the query's item, else the first indexed), stably,
and never across modalities; copies' names are told from originals'.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xsearch.cli.main import app
from xsearch.testing.media import gradient_image, tone, write_wav

from trials import index_cli, jpeg_folder

runner = CliRunner()


@pytest.fixture
def copies(tmp_path, trial):
    media = tmp_path / "media"
    jpeg_folder(media / "b", 1)
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


def test_the_original_stands_for_its_copies_and_modalities_stay_apart(tmp_path, trial):
    media = tmp_path / "media"
    (media / "thermal").mkdir(parents=True)
    gradient_image(media / "beach.jpg", seed=4)
    data = (media / "beach.jpg").read_bytes()
    (media / "beach copy.jpg").write_bytes(data)  # scanned first: the lower id
    (media / "thermal" / "beach.jpg").write_bytes(data)  # the same bytes, read as a thermal scan
    db = tmp_path / "db"
    assert index_cli(media, db, trial).exit_code == 0
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
