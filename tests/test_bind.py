"""``xsearch bind``: a new modality learned from pairs, then indexed, searched, classified and served like the
built-in ones; bad input refused in one line with nothing written; a killed or repeated bind never leaves two
adapters for one name. Real data: sktime's BasicMotions (smartwatch recordings, four activities)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xsearch import Collection, Query
from xsearch.bind import bindings, register_bindings
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.modalities import REGISTRY, Modality, unregister
from xsearch.model.checkpoint import save_checkpoint
from xsearch.testing import basic_motions
from xsearch.testing.media import gradient_image
from xsearch.testing.synthetic import sensor_pairs

runner = CliRunner()
ACTIVITIES = [label.lower() for label in basic_motions.LABELS]


@pytest.fixture(scope="module", autouse=True)
def forget_bound_modalities():
    """Bound modalities are registered process-wide: the other test modules see the built-in table."""
    yield
    for name in ("sonar", "motion"):
        if name in Modality:
            unregister(Modality(name))


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder(tiny_model, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    return str(save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


def write_pairs(path: Path, rows: list[tuple[str, ...]], header: str) -> Path:
    path.write_text(header + "\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def bind_cli(db, pairs, anchor, checkpoint, *extra):
    args = ["bind", *extra, "--db", str(db), "--pairs", str(pairs), "--anchor", anchor, "--checkpoint", checkpoint]
    return runner.invoke(app, args)


# ---- a synthetic sensor, bound to photos ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sonar(tmp_path_factory, encoder, checkpoint):
    """500 photos indexed; the first 450 readings bound to their photos; the last 50 never seen."""
    root = tmp_path_factory.mktemp("sonar")
    pairs = sensor_pairs(root, n=500)
    Collection.open(root / "db", encoder=encoder).index([root / "photos"], workers=0, progress=False)
    csv = write_pairs(
        root / "pairs.csv", [(Path(r).relative_to(root).as_posix(), p) for r, p in pairs[:450]], "reading,photo"
    )
    result = bind_cli(root / "db", csv, "image", checkpoint, "sonar", "--json")
    assert result.exit_code == 0, result.output
    return root, pairs, json.loads(result.output[result.output.index("{") :])


def test_held_out_readings_find_their_own_photo(sonar, encoder):
    root, pairs, report = sonar
    assert (report["pairs"], report["trained"], report["held_out"]) == (450, 405, 45)
    assert report["recall_at_1"] > 0.8 and report["chance_at_1"] == pytest.approx(1 / 450)
    collection = Collection.open(root / "db", encoder=encoder, query_limits=None)  # reopened: registers sonar
    found = [
        collection.search(Query.input("sonar", reading), target="image", k=1)[0].uri == photo
        for reading, photo in pairs[450:]
    ]
    assert np.mean(found) >= 0.85  # among 500 photos (chance: 0.002); 0.92-0.98 measured over three sets


def test_a_new_process_searches_with_the_bound_modality(sonar, checkpoint):
    """Nothing but the database tells a fresh ``xsearch search`` what ``sonar`` is."""
    root, pairs, _ = sonar
    reading, photo = pairs[460]
    command = [str(Path(sys.executable).parent / "xsearch"), "search", "--db", str(root / "db"), "--query"]
    command += [f"sonar={reading}", "--target", "image", "-k", "3", "--json", "--checkpoint", checkpoint]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert photo in [hit["uri"] for hit in json.loads(done.stdout)["results"]]


def test_the_binding_is_recorded_with_its_model_and_checksum(sonar):
    root, _, report = sonar
    (binding,) = bindings(Collection.open(root / "db").store.files)
    assert (binding.name, binding.anchor, binding.features, binding.model_id) == ("sonar", "image", "raw", "tiny_test")
    assert binding.report["recall_at_1"] == report["recall_at_1"]
    weights = root / "db" / binding.weights_name
    assert weights.is_file() and binding.sha256.startswith(weights.stem.split("-")[-1])
    assert sorted(p.name for p in (root / "db" / "modalities").iterdir()) == sorted(["sonar.json", weights.name])


# ---- BasicMotions, bound to its activities' names -------------------------------------------------------------


@pytest.fixture(scope="module")
def motions(tmp_path_factory, encoder, checkpoint):
    if basic_motions.ts_file("TRAIN") is None:
        pytest.fail("sktime is not installed: the test extra ships BasicMotions through it (see README)")
    root = tmp_path_factory.mktemp("motions")
    train = basic_motions.write_split("TRAIN", root / "train")
    test = basic_motions.write_split("TEST", root / "test")
    gradient_image(root / "photo.jpg")
    Collection.open(root / "db", encoder=encoder).index([root / "photo.jpg"], workers=0, progress=False)
    rows = [(f"train/{path.name}", label.lower(), label.lower()) for path, label in train]
    csv = write_pairs(root / "pairs.csv", rows, "recording,activity,label")
    result = bind_cli(root / "db", csv, "text", checkpoint, "motion", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    args = ["index", str(root / "test"), "--db", str(root / "db"), "--as", "motion", "--checkpoint", checkpoint]
    indexed = runner.invoke(app, args)
    assert indexed.exit_code == 0, indexed.output  # decode workers learn "motion" from the pickled modality
    return root, {str(path): label.lower() for path, label in test}, report, csv


def test_basic_motions_are_labelled_by_their_activities_names(motions, checkpoint):
    root, truth, report, _ = motions
    assert report["labels"] == 4 and report["zero_shot_chance"] == 0.25 and report["pairs"] == 40
    args = ["classify", "--db", str(root / "db"), "--labels", ",".join(ACTIVITIES), "--target", "motion", "--json"]
    result = runner.invoke(app, [*args, "--checkpoint", checkpoint])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 40 and {row["modality"] for row in rows} == {"motion"}
    accuracy = np.mean([row["label"] == truth[row["uri"]] for row in rows])
    assert accuracy >= 0.6  # the 40 test recordings, never seen in training (chance: 0.25; 0.78 measured)


def test_the_server_takes_a_recording_and_counts_the_modality(motions, encoder):
    from fastapi.testclient import TestClient

    from xsearch.server.app import create_app

    root, truth, _, _ = motions
    recording = sorted(truth)[0]
    client = TestClient(create_app(Collection.open(root / "db", encoder=encoder, query_limits=None)))
    info = client.get("/api/info").json()
    assert info["by_modality"] == {"image": 1, "motion": 40} and "motion" in info["modalities"]  # the page's list
    with open(recording, "rb") as handle:
        answer = client.post(
            "/api/search",
            data={"target": "motion", "k": "1", "file_modality": "motion"},
            files={"files": ("query.npy", handle)},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["uri"] == recording


def test_a_killed_bind_leaves_the_binding_it_would_replace(motions, encoder, monkeypatch):
    from xsearch.bind.train import bind
    from xsearch.options import BindOptions
    from xsearch.store.side_files import SideFiles

    root, _, _, csv = motions
    collection = Collection.open(root / "db", encoder=encoder)
    (before,) = bindings(collection.store.files)
    real_write = SideFiles.write_text

    def killed_at_the_record(files, name, text):
        if name.startswith("modalities/"):
            raise KeyboardInterrupt  # after the new weights, before the record that names them
        real_write(files, name, text)

    monkeypatch.setattr(SideFiles, "write_text", killed_at_the_record)
    with pytest.raises(KeyboardInterrupt):
        bind(collection, BindOptions("motion", str(csv), "text", replace=True, epochs=3, progress=False))
    monkeypatch.undo()
    (after,) = bindings(collection.store.files)
    assert after == before and after.state_dict()  # the record and the weights it names agree


def test_binding_again_is_refused_or_replaces_and_reindexes(motions, checkpoint):
    root, truth, _, csv = motions
    refused = bind_cli(root / "db", csv, "text", checkpoint, "motion")
    assert refused.exit_code == 2 and "bound already (40 items): --replace" in refused.output
    (old,) = bindings(Collection.open(root / "db").store.files)
    again = bind_cli(root / "db", csv, "text", checkpoint, "motion", "--replace", "--seed", "1", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output[again.output.index("{") :])["reindexed"] == 40
    collection = Collection.open(root / "db")
    (new,) = bindings(collection.store.files)
    assert new.sha256 != old.sha256 and not (root / "db" / old.weights_name).exists()
    assert collection.info(check=False)["by_modality"]["motion"] == 40


def test_an_adapter_trained_against_another_model_is_left_out(motions, caplog):
    root = motions[0]
    files = Collection.open(root / "db").store.files
    (binding,) = bindings(files)
    record = json.loads(files.read_text(binding.record_name))
    files.write_text(binding.record_name, json.dumps({**record, "model_id": "imagebind_huge"}))
    try:
        unregister(Modality("motion"))
        assert register_bindings(files, "tiny_test") == []
        assert "motion" not in Modality and "bound against model 'imagebind_huge'" in caplog.text
    finally:
        files.write_text(binding.record_name, json.dumps(record))
        register_bindings(files, "tiny_test")


# ---- bad input: one line, nothing written ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("small")
    gradient_image(root / "photo.jpg")
    Collection.open(root / "db", encoder=encoder).index([root / "photo.jpg"], workers=0, progress=False)
    for i in range(20):
        np.save(root / f"{i}.npy", np.full(30, float(i), np.float32))
    return root


@pytest.mark.parametrize(
    "name, anchor, header, rows, extra, words",
    [
        (
            "sensor",
            "image",
            "a,b",
            [(f"{i}.npy", "photo.jpg") for i in range(18)] + [("gone.npy", "photo.jpg")] * 2,
            (),
            "2 listed files are missing: {root}/gone.npy (line 20), {root}/gone.npy (line 21)",
        ),
        (
            "sensor",
            "text",
            "a,b,c",
            [(f"{i}.npy", "x", "y") for i in range(20)],
            (),
            "expected a header of two columns",
        ),
        ("sensor", "text", "a,b", [(f"{i}.npy", "x") for i in range(5)], (), "5 pairs; binding needs at least 16"),
        (
            "sensor",
            "sensor",
            "a,b",
            [(f"{i}.npy", "x") for i in range(20)],
            (),
            "the anchor cannot be the new modality",
        ),
        ("audio", "text", "a,b", [(f"{i}.npy", "x") for i in range(20)], (), "'audio' is a built-in modality"),
        (
            "sensor",
            "text",
            "a,b",
            [(f"{i}.npy", "x") for i in range(20)],
            ("--features", "smell"),
            "--features 'smell'",
        ),
        ("sensor", "text", "a,b", [("photo.jpg", "x")] * 20, ("--features", "raw"), "not a NumPy .npy file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(small, checkpoint, name, anchor, header, rows, extra, words):
    csv = write_pairs(small / "pairs.csv", rows, header)
    result = bind_cli(small / "db", csv, anchor, checkpoint, name, *extra)
    assert result.exit_code == 2, result.output
    assert words.format(root=small) in result.output and "Traceback" not in result.output
    assert not (small / "db" / "modalities").exists() and name not in (m.value for m in REGISTRY if m.spec.binding)


def test_pictures_of_a_new_kind_are_read_by_the_frozen_image_tower_and_a_projector(tmp_path, encoder, checkpoint):
    """Without ``--features``, pictures go through the frozen image tower, then a trained projector."""
    from PIL import Image, ImageFilter

    pairs = sensor_pairs(tmp_path, n=24)
    photos = [Path(photo) for _, photo in pairs]
    (tmp_path / "sketches").mkdir()
    for photo in photos:  # a blurred copy: another "camera" of the same scenes
        Image.open(photo).filter(ImageFilter.GaussianBlur(2)).save(tmp_path / "sketches" / photo.name)
    Collection.open(tmp_path / "db", encoder=encoder).index([tmp_path / "photos"], workers=0, progress=False)
    rows = [(f"sketches/{photo.name}", str(photo)) for photo in photos]
    result = bind_cli(
        tmp_path / "db",
        write_pairs(tmp_path / "pairs.csv", rows, "sketch,photo"),
        "image",
        checkpoint,
        "sketch",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["features"] == "image" and report["pairs"] == 24
    (binding,) = bindings(Collection.open(tmp_path / "db").store.files)
    assert binding.adapter["kind"] == "projector" and binding.spec().tower is Modality.IMAGE.tower
    collection = Collection.open(tmp_path / "db", encoder=encoder, query_limits=None)
    hits = collection.search(Query.input("sketch", tmp_path / "sketches" / photos[3].name), target="image", k=3)
    assert str(photos[3]) in [hit.uri for hit in hits]
    unregister(Modality("sketch"))
