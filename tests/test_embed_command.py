"""``xsearch embed`` and ``Collection.embed``: files taken by the indexer's rules, rows that say which file
they are, unknown files as ``null``, ``--as`` assignments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from xsearch import Collection
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.testing.media import gradient_image

from trials import jpeg_folder

runner = CliRunner()


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


def test_embed_walks_folders_and_says_which_row_is_which_file(tmp_path, trial):
    folder = jpeg_folder(tmp_path / "photos", 2)
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


def test_embed_takes_as_modality_equals_path_and_as_blames_itself(tmp_path, trial):
    maps = jpeg_folder(tmp_path / "scans", 1)
    done = runner.invoke(app, ["embed", str(maps / "p0.jpg"), "--as", f"depth={maps}", "--checkpoint", str(trial)])
    assert done.exit_code == 0 and json.loads(done.stdout)["modality"] == "depth", done.output
    missing = tmp_path / "nope"
    argv = ["index", str(maps), "--db", str(tmp_path / "db"), "--as", f"depth={missing}", "--checkpoint", str(trial)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and result.output.startswith("error: --as: no such file or folder")
