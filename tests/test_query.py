"""The query layer: embedding arithmetic is exact, filters and targets behave, results serialise; the CLI's
search / classify / info; and the HTML contact sheet rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xsearch import Collection, Modality
from xsearch.capture import CAPTURE_COLUMNS
from xsearch.cli.main import app
from xsearch.cli.search import split_file_weight, split_text_weight
from xsearch.errors import ModelMismatchError, QueryError, UsageError
from xsearch.options import EngineSettings, SearchOptions
from xsearch.query import Engine, Query, combine
from xsearch.store import Database, ItemRecord, TableView
from xsearch.testing.media import gradient_image, tone, write_wav

runner = CliRunner()
DIM = 1024


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return {name: unit(rng.standard_normal(DIM)) for name in "abcdefghij"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, vectors):
    """A store of known vectors: images a-f (width 100 * i), audio g-j. No model anywhere."""
    store = Database.open(tmp_path_factory.mktemp("q") / "db", model_id="tiny_test", embed_dim=1024)
    records = []
    for i, (name, v) in enumerate(vectors.items()):
        modality = Modality.IMAGE if name <= "f" else Modality.AUDIO
        folder = "holiday" if name in "ab" else "work"
        records.append(ItemRecord(f"/media/{folder}/{name}.x", modality, v, metadata={"width": 100 * (i + 1)}))
    store.add_items(records)
    return Engine(store)


def ids_of(engine, names):
    table = engine.db.items().scan(["id", "uri"])
    by_uri = dict(zip(table["uri"].to_pylist(), table["id"].to_pylist()))
    return [by_uri[u] for n in names for u in by_uri if u.endswith(f"/{n}.x")]


def test_item_query_finds_itself_first(engine, vectors):
    results = engine.search(Query.item("/media/work/c.x"), target="image", k=3)
    assert results[0].uri == "/media/work/c.x" and results[0].score == pytest.approx(1.0, abs=1e-3)
    assert [r.rank for r in results] == [1, 2, 3] and results[0].score >= results[1].score >= results[2].score


def test_sum_of_two_items_ranks_both_above_the_rest(engine):
    a, b = ids_of(engine, "ab")
    results = engine.search(Query.item(a) + Query.item(b), target="all", k=10)
    assert {r.id for r in results[:2]} == {a, b}
    assert results[0].score == pytest.approx(results[1].score, abs=1e-3)  # equal weights: a tie
    assert results[2].score < results[1].score - 0.3


def test_weighted_combination_is_exact(engine, vectors):
    query = Query.item("/media/work/c.x") * 2 - Query.vector(vectors["d"]) + 0.5 * Query.vector(vectors["g"])
    expected = unit(2 * vectors["c"] - vectors["d"] + 0.5 * vectors["g"])
    np.testing.assert_allclose(engine.embed(query), expected, atol=1e-6)
    results = engine.search(query, target="image,audio", k=10)
    for r in results:
        assert r.score == pytest.approx(float(vectors[r.uri[-3]] @ expected), abs=2e-3)


def test_combine_rejects_zero_and_nan():
    v = unit(np.ones(DIM))
    with pytest.raises(QueryError, match="cancel out"):
        combine(np.stack([v, v]), [1.0, -1.0])
    with pytest.raises(QueryError, match="not finite"):
        combine(np.stack([v, np.full(DIM, np.nan)]), [1.0, 1.0])
    with pytest.raises(QueryError, match="finite number"):
        Query.item(1, weight=float("inf"))


def test_query_errors(engine, vectors):
    with pytest.raises(QueryError, match="cancel out"):
        engine.search(Query.item("/media/work/c.x") - Query.item("/media/work/c.x"))
    with pytest.raises(QueryError, match="no indexed item"):
        engine.search(Query.item("/nowhere.jpg"))
    with pytest.raises(QueryError, match="expected 1024"):
        engine.search(Query.vector(np.ones(10)))
    with pytest.raises(UsageError, match="unknown modality") as raised:
        engine.search(Query.vector(vectors["a"]), target="smell")
    assert raised.value.argument == "target"
    with pytest.raises(QueryError, match="empty"):
        Query.text("   ")


def test_targets_filters_and_glob(engine, vectors):
    query = Query.vector(vectors["a"])
    assert {r.modality for r in engine.search(query, target="audio", k=10)} == {"audio"}
    assert len(engine.search(query, k=100)) == 10  # all targets, fewer items than k
    wide = engine.search(query, target="image", k=10, where="width >= 300")
    assert {r.uri[-3] for r in wide} == {"c", "d", "e", "f"}
    holiday = engine.search(query, k=10, path="*/holiday/*")
    assert [r.uri for r in holiday] == ["/media/holiday/a.x", "/media/holiday/b.x"]
    assert engine.search(query, k=5, where="width > 100000") == []


def test_results_to_arrow_and_pandas(engine, vectors):
    results = engine.search(Query.vector(vectors["e"]), target="image", k=4)
    table = results.to_arrow()
    assert table.column_names == [
        "rank",
        "score",
        "calibrated",
        "id",
        "uri",
        "modality",
        "width",
        "height",
        "duration",
        "sample_rate",
        *CAPTURE_COLUMNS,  # when, where and with what: null where unknown
        "duplicates",
    ]
    assert table["uri"][0].as_py() == "/media/work/e.x" and table["width"][0].as_py() == 500
    frame = results.to_pandas()
    assert list(frame["rank"]) == [1, 2, 3, 4]


def test_model_mismatch_is_refused(engine, tiny_model):
    from xsearch.encoder import Encoder

    other = Encoder(tiny_model, device="cpu", precision="fp32")
    other.model_id = "imagebind_huge"
    with pytest.raises(ModelMismatchError, match="holds embeddings of model 'tiny_test', not 'imagebind_huge'"):
        Engine(engine.db, encoder=other)


def test_file_and_text_terms_use_the_encoder(tmp_path, tiny_model):
    from xsearch.encoder import Encoder

    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    photo = gradient_image(tmp_path / "p.jpg")
    engine = Engine(Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024), encoder=encoder)
    got = engine.embed(Query.image(photo) * 0.7 + Query.text("a dog") * 0.3)
    image_v = Collection(None, encoder=encoder).embed([photo])[0].embedding
    text_v = encoder.encode_text(["a dog"]).numpy()[0]
    np.testing.assert_allclose(got, unit(0.7 * image_v + 0.3 * text_v), atol=1e-5)
    with pytest.raises(QueryError, match="missing.wav: file not found"):
        engine.embed(Query.audio(tmp_path / "missing.wav"))


def test_filtered_search_above_the_exact_limit_uses_the_index(tmp_path):
    """Past ``exact_filter_limit`` matches, the index is over-fetched and filtered: same hits as exact."""
    rng = np.random.default_rng(3)
    vectors = np.stack([unit(v) for v in rng.standard_normal((400, DIM))])
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    records = [ItemRecord(f"/m/{i}.jpg", Modality.IMAGE, v, metadata={"width": i}) for i, v in enumerate(vectors)]
    store.add_items(records)
    query = Query.vector(vectors[7] + 0.5 * vectors[300])
    exact_engine = Engine(store)
    exact = exact_engine.search(query, target="image", k=5, where="width >= 200")
    indexed = Engine(store, settings=EngineSettings(exact_filter_limit=10))
    via_index = indexed.search(query, target="image", k=5, where="width >= 200")
    assert [r.id for r in via_index] == [r.id for r in exact] and via_index[0].uri == "/m/300.jpg"
    assert all(r.metadata["width"] >= 200 for r in via_index)
    assert Modality.IMAGE in indexed.snapshot().items.loaded  # the index path was taken (the exact one loads no index)
    assert Modality.IMAGE not in exact_engine.snapshot().items.loaded


def test_path_globs_are_resolved_where_the_user_is():
    """The CLI and Python take a relative glob from the current folder; a server refuses one (its folder is
    not the client's); a glob that means the same anywhere passes both unchanged."""
    import os

    from xsearch.options import served_glob

    assert SearchOptions(path="photos/*").path == os.path.join(os.getcwd(), "photos/*")
    for anchored in ("/data/*", "*/2024/*", "s3://bucket/photos/*"):
        assert SearchOptions(path=anchored).path == anchored == served_glob(anchored)
    for relative in ("photos/*", "~/photos/*"):
        with pytest.raises(UsageError, match="relative one would be read from the server's own folder"):
            served_glob(relative)


def test_a_large_filter_over_an_ivf_index_is_scored_from_its_rows(tmp_path, monkeypatch):
    """More matches than are read one by one, over an IVF index: scored exactly against the float16 rows
    the index keeps for its re-rank (what an unfiltered search of it scores), not read from the table."""
    from xsearch.index import IndexCfg

    rng = np.random.default_rng(5)
    vectors = np.stack([unit(v) for v in rng.standard_normal((6000, DIM))])
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    records = [ItemRecord(f"/m/{i}.jpg", Modality.IMAGE, v, metadata={"width": i}) for i, v in enumerate(vectors)]
    store.add_items(records)
    engine = Engine(store, index_cfg=IndexCfg(flat_threshold=1000, nlist=32, use_gpu=False))
    assert engine.index(Modality.IMAGE).kind != "flat"
    read = []
    table_vectors = TableView.vectors
    monkeypatch.setattr(TableView, "vectors", lambda view, ids: read.append(len(ids)) or table_vectors(view, ids))
    query = unit(vectors[4321] + 0.3 * vectors[17])
    found = engine.search(Query.vector(query), target="image", k=5, where="width >= 100")
    kept = np.arange(100, 6000)
    scores = vectors[kept].astype(np.float16).astype(np.float32) @ query
    best = np.argsort(-scores)[:5]
    assert [int(r.uri[3:-4]) for r in found] == list(kept[best])
    np.testing.assert_allclose([r.score for r in found], scores[best], rtol=1e-5)
    assert max(read, default=0) < len(kept)  # no read of the matches' vectors (a calibration sample is smaller)


def test_path_globs_mean_what_fnmatch_says():
    """Globs run in Arrow (a regular expression per pattern), with fnmatch's meaning: ``*`` and ``?`` cross
    ``/``, every other character is itself; a ``[...]`` class is fnmatch's own."""
    import fnmatch
    import re

    import pyarrow as pa

    from xsearch.paths import glob_mask

    uris = ["/t/1.txt", "/t/10.txt", "/a/b c/d.jpg", "/a/b+c/(1).jpg", "/x/y\nz", "/é/ü.png", "/a/b$c^d.{x}", "/t/1"]
    uris += ["s3://b/k/1.jpg", "/a\\b.jpg", "/t/2.txt"]
    patterns = ["/t/1*", "*", "*.jpg", "/a/b c/*", "/a/b+c/(?).jpg", "/x/*", "/é/*", "/a/b$c^d.{x}", "s3://b/*/1.*"]
    patterns += ["*\\b.jpg", "/t/1?txt", "??", "/t/[0-9]*", "/t/[!1]*", "*b?c*", "/t/1.txt"]
    column = pa.chunked_array([uris[:4], uris[4:]])
    for pattern in patterns:
        expected = [re.match(fnmatch.translate(pattern), uri) is not None for uri in uris]
        assert list(glob_mask(column, pattern)) == expected, pattern


def test_classify_assigns_the_known_labels(tmp_path, tiny_model):
    """Items stored at (almost) a label's own text vector get that label, with the softmax's probability."""
    from xsearch.encoder import Encoder

    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    labels = ["dog", "cat", "rain", "waves"]
    label_vectors = encoder.encode_text(labels).numpy()
    rng = np.random.default_rng(0)
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    truth = {}
    for i in range(12):
        label = i % 4
        vector = unit(label_vectors[label] + 1e-3 * rng.standard_normal(DIM))
        modality = Modality.IMAGE if i < 6 else Modality.AUDIO
        store.add_items([ItemRecord(f"/m/{i}.x", modality, vector)])
        truth[f"/m/{i}.x"] = (labels[label], vector)
    labelled = Collection.open(tmp_path / "db", encoder=encoder).classify(labels)
    assert len(labelled) == 12
    for row in labelled.as_json():
        label, vector = truth[row["uri"]]
        assert row["label"] == label
        logits = label_vectors @ vector * 100.0
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert row["score"] == pytest.approx(expected.max(), rel=1e-4)
    audio = Collection.open(tmp_path / "db", encoder=encoder).classify(labels, target="audio")
    assert {label.modality for label in audio} == {Modality.AUDIO} and len(audio) == 6


# ---- CLI --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("meeting at 10:30", ("meeting at 10:30", 1.0)),
        ("ratio 3:2", ("ratio 3:2", 1.0)),
        ("a dog: at noon", ("a dog: at noon", 1.0)),
        ("0.5::at night", ("at night", 0.5)),
        ("-0.3::people", ("people", -0.3)),
        ("std::vector", ("std::vector", 1.0)),
        ("2::10:30", ("10:30", 2.0)),
    ],
)
def test_text_is_whole_unless_it_starts_with_a_weight(value, expected):
    assert split_text_weight(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("rain.wav", ("rain.wav", 1.0)),
        ("rain.wav:0.4", ("rain.wav", 0.4)),
        ("bird.jpg:-1.5", ("bird.jpg", -1.5)),
        (":5", (":5", 1.0)),
    ],
)
def test_split_file_weight(value, expected):
    assert split_file_weight(value, "--x") == expected


def test_a_file_that_exists_as_written_is_never_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "take:2").write_bytes(b"x")
    (tmp_path / "chelsea.png").write_bytes(b"x")
    assert split_file_weight("take:2", "--audio") == ("take:2", 1.0)
    assert split_file_weight("chelsea.png:0.5", "--image") == ("chelsea.png", 0.5)
    with pytest.raises(UsageError, match="'chelsea.png:abc': weight 'abc' is not a number"):
        split_file_weight("chelsea.png:abc", "--image")
    with pytest.raises(UsageError, match="not a finite number"):
        split_text_weight("inf::rain")


def _solid(path, colour, size=(256, 192)):
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture(scope="module")
def indexed_db(tmp_path_factory, tiny_model):
    """A small indexed collection (tiny model): strongly coloured photos, a sound, a caption."""
    from xsearch.encoder import Encoder
    from xsearch.model import save_checkpoint

    root = tmp_path_factory.mktemp("media")
    _solid(root / "red.jpg", (230, 20, 20))
    _solid(root / "blue.png", (20, 40, 230))
    gradient_image(root / "gradient.jpg")
    write_wav(root / "tone.wav", tone(2.0, 16000), 16000)
    (root / "caption.txt").write_text("waves breaking on rocks")
    db = root.parent / "media.db"
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    report = Collection.open(db, encoder=encoder).index([root], workers=0)
    assert report.indexed == 5
    checkpoint = save_checkpoint(tiny_model, root.parent / "tiny.pt")
    return root, db, checkpoint


def test_cli_search_json_schema(indexed_db):
    root, db, checkpoint = indexed_db
    args = ["search", "--db", str(db), "--image", f"{root / 'red.jpg'}:0.6", "--audio", f"{root / 'tone.wav'}:0.4"]
    result = runner.invoke(app, [*args, "--target", "image", "-k", "3", "--checkpoint", str(checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"model_id", "query", "targets", "results"} and out["targets"] == ["image"]
    assert out["model_id"] == "tiny_test"
    assert [t["weight"] for t in out["query"]] == [0.6, 0.4]
    assert [t["modality"] for t in out["query"]] == ["image", "audio"]
    assert len(out["results"]) == 3
    for rank, r in enumerate(out["results"], start=1):
        assert set(r) == {"rank", "score", "calibrated", "id", "uri", "modality", "metadata", "duplicates"}
        assert r["rank"] == rank and r["modality"] == "image" and -1.0 <= r["score"] <= 1.0


def test_cli_item_search_needs_no_checkpoint(indexed_db):
    root, db, _ = indexed_db
    result = runner.invoke(app, ["search", "--db", str(db), "--item", str(root / "blue.png"), "-k", "1"])
    assert result.exit_code == 0, result.output
    assert str(root / "blue.png") in result.stdout and "1.0000" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "x.jpg:inf"], "not a finite number"),
        ([], "give at least one input"),
        (["--item", "/not/indexed.jpg"], "no indexed item"),
        (["--item", "1", "--target", "smell"], "unknown modality"),
        (["--item", "1", "--where", "no_such_column > 3"], "bad filter"),
        (["--item", "1", "-k", "0"], "greater than or equal to 1"),
    ],
)
def test_cli_search_errors(indexed_db, args, message):
    _, db, _ = indexed_db
    result = runner.invoke(app, ["search", "--db", str(db), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_cli_missing_database(tmp_path):
    result = runner.invoke(app, ["search", "--db", str(tmp_path / "nope"), "--item", "1"])
    assert result.exit_code == 2 and "no xsearch database" in result.output


def test_cli_classify(indexed_db, tmp_path):
    _, db, checkpoint = indexed_db
    labels = "dog,cat,rain,waves"
    args = ["classify", "--db", str(db), "--labels", labels, "--checkpoint", str(checkpoint), "--json"]
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "labels.csv")])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # one JSON document, as every --json
    assert len(rows) == 5 and all(r["label"] in labels.split(",") for r in rows)
    assert (tmp_path / "labels.csv").read_text().count("\n") == 6
    audio = runner.invoke(app, [*args, "--target", "audio"])
    assert [row["modality"] for row in json.loads(audio.stdout)] == ["audio"]
    assert runner.invoke(app, [*args[:4], "--labels", "dog"]).exit_code == 2


def test_cli_info(indexed_db):
    _, db, _ = indexed_db
    result = runner.invoke(app, ["info", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["by_modality"] == {"image": 3, "text": 1, "audio": 1} and facts["model_id"] == "tiny_test"
    assert facts["indices"]["image"]["fresh"] and facts["indices"]["image"]["kind"] == "flat"
    assert facts["bytes"] > 0


# ---- contact sheet ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sheet(indexed_db, tmp_path_factory):
    root, db, checkpoint = indexed_db
    out = tmp_path_factory.mktemp("html") / "results.html"
    args = ["search", "--db", str(db), "--item", str(root / "red.jpg"), "--audio", f"{root / 'tone.wav'}:0.2"]
    result = runner.invoke(app, [*args, "--checkpoint", str(checkpoint), "-k", "5", "--html", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_contact_sheet_is_self_contained(sheet, indexed_db):
    root, _, _ = indexed_db
    page = sheet.read_text()
    assert page.count("data:image/jpeg;base64,") == 6  # query item + 3 image results + 2 waveforms
    assert page.count('alt="waveform"') == 2  # the query sound's and the audio result's pictures
    assert page.count("data:audio/wav;base64,") == 2  # query sound + the audio result
    assert "waves breaking on rocks" in page  # the caption result
    assert f'src="{root}' not in page and "file://" not in page  # nothing links to the originals
    assert sheet.stat().st_size < 1_000_000


def test_contact_sheet_renders_in_chromium(sheet, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (README: apt-get install chromium) - cannot render")
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1000"]
    subprocess.run([*command, f"--screenshot={shot}", sheet.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 70) & (pixels[..., 2] < 70)
    blue = (pixels[..., 2] > 180) & (pixels[..., 0] < 70) & (pixels[..., 1] < 90)
    # The red photo shows twice (query card and first result), each thumbnail 192 x 144 pixels.
    assert red.sum() > 2 * 0.8 * 192 * 144
    assert blue.sum() > 0.8 * 192 * 144


def test_contact_sheet_decodes_query_files_once_and_runs_no_query(indexed_db, tiny_model, tmp_path, monkeypatch):
    import xsearch.preprocess.image as image_module
    from xsearch.contact_sheet import render
    from xsearch.encoder import Encoder

    root, db, _ = indexed_db
    calls = []
    original = image_module.prepare
    monkeypatch.setattr(image_module, "prepare", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    collection = Collection.open(db, encoder=encoder, query_limits=None)  # decoded here, where the spy is
    results = collection.search(Query.image(root / "red.jpg"), target="image", k=3)
    results.thumbnails()  # what the page needs from the store, read through the results
    monkeypatch.setattr(TableView, "scan", lambda *a, **k: pytest.fail("the contact sheet ran a query"))
    page = render(results, str(db))
    assert calls == [str(root / "red.jpg")]  # decoded for the model; its preview came with it
    assert page.count("data:image/jpeg;base64,") == 4  # the query input + 3 results
