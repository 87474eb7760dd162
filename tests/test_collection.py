"""The library's seams: the ``Collection`` façade, the modality table (a toy modality registered and indexed),
shapes taken from the model, usage errors before anything loads, searches that never write, and filter SQL
written in one module only."""

from __future__ import annotations

import ast
import gc
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xsearch import Collection, Modality, Query
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.index import IndexSet
from xsearch.modalities import REGISTRY, ModalitySpec, Preview, Tower, define, register, unregister
from xsearch.model import TINY_TEST, create_model, save_checkpoint
from xsearch.preprocess.image import ImageCfg
from xsearch.preprocess.prepared import Preprocessed
from xsearch.sniff import Family
from xsearch.store import Database, ItemRecord
from xsearch.testing.media import gradient_image, tone, write_wav

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder(tiny_model, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# ---- the façade --------------------------------------------------------------------------------------------


def test_collection_index_search_classify_info_errors(tmp_path, encoder):
    media = tmp_path / "media"
    media.mkdir()
    red = gradient_image(media / "red.jpg", seed=1)
    gradient_image(media / "other.png", seed=2)
    write_wav(media / "tone.wav", tone(2.0, 16000), 16000)
    (media / "broken.jpg").write_bytes(b"not an image at all")
    collection = Collection.open(tmp_path / "db", encoder=encoder)
    assert not collection.exists()
    report = collection.index([media], workers=0)
    assert (report.indexed, report.failed) == (3, 1) and report.by_modality == {"image": 2, "audio": 1}
    assert collection.exists() and collection.store.embed_dim == encoder.embed_dim

    hits = collection.search(Query.image(red), target="image", k=2)
    assert hits[0].uri == str(red) and hits[0].modality is Modality.IMAGE and hits[0].score > 0.999
    assert [t.value for t in hits.targets] == ["image"]
    labels = collection.classify(["a", "b"], target="audio")
    assert labels.to_arrow().column_names == ["id", "uri", "modality", "label", "score"] and len(labels) == 1
    assert [label.uri for label in labels] == [str(media / "tone.wav")]
    facts = collection.info()
    assert facts["by_modality"] == {"image": 2, "audio": 1} and facts["indices"]["image"]["fresh"]
    errors = collection.errors().to_pylist()
    assert [e["uri"] for e in errors] == [str(media / "broken.jpg")] and "content is text" in errors[0]["message"]


def test_collection_uses_the_database_model(tmp_path, encoder, checkpoint):
    """With no model named, a collection loads the architecture its database was made with."""
    media = tmp_path / "media"
    media.mkdir()
    photo = gradient_image(media / "a.jpg")
    Collection.open(tmp_path / "db", encoder=encoder).index([media], workers=0)
    reopened = Collection.open(tmp_path / "db", checkpoint=checkpoint)
    assert reopened.model_name == "tiny_test"
    assert reopened.search(Query.image(photo), k=1)[0].uri == str(photo)


def test_shapes_come_from_the_model(tmp_path):
    """A model with another input size and output width: preprocessing and the store follow its config."""
    cfg = replace(TINY_TEST, name="tiny_112_64", image_size=112, embed_dim=64)
    torch.manual_seed(0)
    small = Encoder(create_model(cfg), device="cpu")
    assert small.preprocess.image.size == 112 and small.preprocess.depth.size == 112
    media = tmp_path / "media"
    media.mkdir()
    photo = gradient_image(media / "a.jpg")
    collection = Collection.open(tmp_path / "db", encoder=small)
    report = collection.index([media], workers=0)
    assert report.indexed == 1 and report.failed == 0
    assert collection.store.embed_dim == 64
    assert Database.open(tmp_path / "db", create=False).items().schema.field("embedding").type.list_size == 64
    assert collection.search(Query.image(photo), k=1)[0].score > 0.999


# ---- the modality table: a toy modality is one entry --------------------------------------------------------


def _prepare_swatch(path, cfg: ImageCfg, thumbnail: bool = True) -> Preprocessed:
    """A ``.swatch`` file is one line "R,G,B": a solid colour, embedded by the vision tower."""
    rgb = [int(v) for v in Path(path).read_text().strip().split(",")]
    pixels = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, cfg.size, cfg.size) / 255.0
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    return Preprocessed(((pixels - mean) / std).contiguous(), {"width": 1, "height": 1})


@pytest.fixture
def swatch():
    modality = define("swatch")
    spec = register(
        ModalitySpec(
            modality,
            Tower.VISION,
            preprocess=_prepare_swatch,
            make_cfg=ImageCfg.for_model,
            extensions=frozenset({".swatch"}),
            accepts=frozenset({Family.TEXT}),
            preview=Preview.LABEL,
            help="colour swatch",
        )
    )
    yield spec
    unregister(modality)


def test_a_registered_modality_is_indexed_and_searched(tmp_path, encoder, swatch):
    media = tmp_path / "media"
    media.mkdir()
    (media / "red.swatch").write_text("230,20,20\n")
    (media / "blue.swatch").write_text("20,40,230\n")
    gradient_image(media / "photo.jpg")
    assert "swatch" in Modality and Modality("swatch") is swatch.modality
    collection = Collection.open(tmp_path / "db", encoder=encoder)
    report = collection.index([media], workers=0)
    assert report.by_modality == {"swatch": 2, "image": 1} and report.failed == 0
    assert report.indexes["swatch"]["count"] == 2
    hits = collection.search(Query.swatch(media / "red.swatch"), target="swatch", k=2)
    assert hits[0].uri == str(media / "red.swatch") and hits[0].modality is swatch.modality
    assert hits[0].score > 0.999 > hits[1].score
    everything = collection.search(Query.swatch(media / "blue.swatch"), k=3)
    assert {h.modality.value for h in everything} == {"swatch", "image"}


def test_the_table_drives_every_consumer():
    from xsearch.cli.search import search

    options = {p.name for p in __import__("inspect").signature(search).parameters.values()}
    for modality, spec in REGISTRY.items():
        assert modality.value in options  # a --<modality> search option each
        assert modality.tower is spec.tower
        if spec.query_input == "file":
            assert getattr(Query, modality.value)("x").terms[0].modality is modality
    assert Modality.VIDEO.spec.fallback is Modality.AUDIO
    with pytest.raises(AttributeError):
        Query.smell  # noqa: B018


# ---- usage errors: one line, exit 2, nothing loaded or created ----------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["index", "{media}", "--as", "smell"], "--as: unknown modality 'smell'"),
        (["index", "{media}", "--as", "smell={media}"], "--as: unknown modality 'smell'"),
        (["index", "{media}", "--model", "bogus"], "--model: unknown model 'bogus'"),
        (["index", "{media}", "--modalities", "image,smell"], "--modalities: unknown modality 'smell'"),
        (["index", "{media}", "--device", "tpu"], "--device: unknown device 'tpu'"),
        (["embed", "{media}/a.jpg", "--as", "smell"], "--as: unknown modality 'smell'"),
    ],
)
def test_usage_errors_exit_2_before_anything_loads(tmp_path, args, words):
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    db = tmp_path / "db"
    # A checkpoint that does not exist: an error about it would mean the model was being loaded.
    argv = [a.format(media=media) for a in args] + ["--checkpoint", str(tmp_path / "absent.pt")]
    if args[0] == "index":
        argv += ["--db", str(db)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.output
    assert not db.exists()


def test_search_target_typo_is_a_usage_error(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord("/a.jpg", Modality.IMAGE, np.eye(1024, dtype=np.float32)[0])])
    result = runner.invoke(
        app, ["search", "--db", str(tmp_path / "db"), "--text", "a dog", "--target", "imgae", "--checkpoint", "/no"]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --target: unknown modality 'imgae' (expected one of: image, video, text, audio, depth, thermal, imu)"
    ]


# ---- searching never writes ---------------------------------------------------------------------------------

_SEARCH_SCRIPT = """
import json, sys
from xsearch import Collection, Query
hits = Collection.open(sys.argv[1]).search(Query.item(sys.argv[2]), target="image", k=3)
print(json.dumps([h.uri for h in hits]))
"""


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_search_of_a_stale_read_only_database_writes_nothing():
    """Rows committed after the index was saved are found, and the database is left byte for byte as it was.

    The search runs in a process that cannot write the database: as root (CI), a process switched to the
    ``nobody`` user with ``setpriv``; otherwise this user with the write bits removed (``chmod -R a-w``).
    """
    vectors = np.random.default_rng(0).standard_normal((40, 1024)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        db = Path(scratch) / "db"
        os.chmod(scratch, 0o755)
        store = Database.open(db, model_id="tiny_test", embed_dim=1024)
        store.add_items([ItemRecord(f"/m/{i}.jpg", Modality.IMAGE, v) for i, v in enumerate(vectors[:30])])
        IndexSet.latest(store).current(Modality.IMAGE)[0]  # saved, covering 30 rows
        store.add_items([ItemRecord(f"/m/{i}.jpg", Modality.IMAGE, v) for i, v in enumerate(vectors[30:], 30)])
        assert not IndexSet.latest(store).status(Modality.IMAGE)["fresh"]
        before = _tree(db)
        command = [sys.executable, "-c", _SEARCH_SCRIPT, str(db), "/m/35.jpg"]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv: cannot take write access away (root ignores modes)")
            command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
            probe = subprocess.run(
                [*command[:4], sys.executable, "-c", "import xsearch.store"], capture_output=True, cwd=ROOT
            )
            if probe.returncode != 0:  # e.g. a clone under a 0700 home or a `mktemp -d` folder
                pytest.skip(
                    f"user nobody cannot run this checkout's Python ({sys.executable}): a folder above it is "
                    "private, so the read-only search cannot be run as another user"
                )
        _set_writable(db, False)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
        finally:
            _set_writable(db, True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])[0] == "/m/35.jpg"  # a row the saved index lacks
        assert _tree(db) == before
        assert not IndexSet.latest(Database.open(db, create=False)).status(Modality.IMAGE)["fresh"]


# ---- one filter builder -------------------------------------------------------------------------------------

# What SQL built from values looks like: `x = '...'`, `x > {value}`, `IN (`, `TIMESTAMP`, `AND (`, `) OR `.
_SQL = re.compile(r"\w\s+(=|<|>|<=|>=)\s*('|\{\})|\bIN\s*\(|\bTIMESTAMP\b|\bAND\s*\(|\)\s*OR\s")


def _parse(path: Path) -> ast.AST:
    """``ast.parse`` with the garbage collector held: CPython 3.11 can fail the parse with "AST constructor
    recursion depth mismatch" when a finalizer (here, of the Ray cluster test's objects) runs inside it."""
    gc.disable()
    try:
        return ast.parse(path.read_text())
    finally:
        gc.enable()


def _strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield "".join(p.value if isinstance(p, ast.Constant) else "{}" for p in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def test_filter_sql_is_written_only_in_the_stores_filters():
    offenders = []
    for package in ("xsearch", "indexer", "cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "xsearch" / "store" / "filters.py":
                continue
            for text in _strings(_parse(path)):
                if _SQL.search(text):
                    offenders.append(f"{path.relative_to(ROOT)}: {text[:60]!r}")
    assert offenders == []
    store_strings = list(_strings(_parse(ROOT / "xsearch" / "store" / "filters.py")))
    assert any(_SQL.search(s) for s in store_strings)  # the pattern does recognise filter SQL


def test_only_the_facade_reaches_into_the_indexer():
    """At run time; names imported for type checkers only (``if TYPE_CHECKING:``) do not count."""
    importers = []
    for path in sorted((ROOT / "xsearch").rglob("*.py")):
        tree = _parse(path)
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n.split(".")[:2] in (["xsearch", "indexer"], ["xsearch", "cli"]) for n in names):
                importers.append(path.relative_to(ROOT).as_posix())
            assert not any(n.split(".")[0] in ("indexer", "cli") for n in names), f"{path}: {names}"
    assert sorted(set(importers)) == ["xsearch/collection.py"]


def test_a_search_in_a_fresh_process_loads_nothing_of_the_indexer(tmp_path, encoder, checkpoint):
    """At run time too: stored items, a text and a query file (decoded by a supervised worker) are searched
    and classified with no ``xsearch.indexer`` module imported."""
    media = tmp_path / "media"
    media.mkdir()
    photo = gradient_image(media / "a.jpg", seed=1)
    gradient_image(media / "b.jpg", seed=2)
    Collection.open(tmp_path / "db", encoder=encoder).index([media], workers=0)
    script = f"""
import sys
from xsearch import Collection, Query
collection = Collection.open({str(tmp_path / "db")!r}, checkpoint={str(checkpoint)!r})
hits = collection.search(Query.image({str(photo)!r}) + Query.text("a photo") + Query.item(0), k=2)
assert hits[0].uri == {str(photo)!r}, hits
collection.classify(["a", "b"])
print(sorted(name for name in sys.modules if name.startswith("xsearch.indexer")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_indexer_and_the_cli_install_inside_the_xsearch_package():
    """``indexer/`` and ``cli/`` sit at the top of the repository but install as ``xsearch.indexer`` and
    ``xsearch.cli``: no top-level ``cli`` of ours to collide with another project's."""
    from importlib.metadata import distribution

    import xsearch.cli
    import xsearch.indexer

    assert Path(xsearch.indexer.__file__).resolve().parent == ROOT / "indexer"
    assert Path(xsearch.cli.__file__).resolve().parent == ROOT / "cli"
    (script,) = [e for e in distribution("xsearch").entry_points if e.group == "console_scripts"]
    assert script.value == "xsearch.cli.main:main"


def test_every_package_folder_is_installed():
    """A regular install takes only the packages ``pyproject.toml`` lists: a new subpackage must be there."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "xsearch").rglob("__init__.py")}
    assert folders - listed == set()


def test_rooms_stay_small():
    """No class over 350 lines, no module over 600: a class that grows past that holds several jobs. In the
    server, no function over 80 lines: its routes live in routers, not in one closure."""
    large = []
    for path in sorted((ROOT / "xsearch" / "server").rglob("*.py")):
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                large.append(f"{path.relative_to(ROOT)}: {node.name}, {node.end_lineno - node.lineno + 1} lines")
    for package in ("xsearch", "indexer", "cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = _parse(path)
            lines = len(path.read_text().splitlines())
            if lines > 600:
                large.append(f"{path.relative_to(ROOT)}: {lines} lines")
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno >= 350:
                    large.append(f"{path.relative_to(ROOT)}: class {node.name}, {node.end_lineno - node.lineno + 1}")
    assert large == []


# ---- xsearch embed ----------------------------------------------------------------------------------------------


def test_cli_embed_prints_one_json_line_per_file(tmp_path, encoder, checkpoint):
    photo = gradient_image(tmp_path / "a.jpg")
    sound = write_wav(tmp_path / "b.wav", tone(2.0, 16000), 16000)
    (tmp_path / "c.jpg").write_bytes(b"")
    files = [photo, sound, tmp_path / "c.jpg"]
    argv = ["embed", *map(str, files), "--checkpoint", str(checkpoint), "--model", "tiny_test", "--precision", "fp32"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 3, result.output  # some files could not be embedded
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["path"], line["modality"]) for line in lines] == [
        (str(photo), "image"),
        (str(sound), "audio"),
        (str(tmp_path / "c.jpg"), "image"),
    ]
    expected = Collection(None, encoder=encoder).embed(files[:2])
    for line, want in zip(lines, expected):
        np.testing.assert_allclose(np.asarray(line["embedding"]), want.embedding, atol=1e-6)
    assert "c.jpg: file is empty" in lines[2]["error"] or "c.jpg: not a readable image" in lines[2]["error"]
    depth = runner.invoke(app, [*argv[:2], "--as", "depth", *argv[4:]])
    assert json.loads(depth.stdout.splitlines()[0])["modality"] == "depth"


def test_an_assigned_folder_inside_the_paths_is_scanned_once(tmp_path, encoder):
    media = tmp_path / "media"
    (media / "scans").mkdir(parents=True)
    gradient_image(media / "photo.jpg", seed=1)
    gradient_image(media / "scans" / "room.png", seed=2)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    gradient_image(outside / "hall.png", seed=3)
    report = Collection.open(tmp_path / "db", encoder=encoder).index(
        [media], assign={media / "scans": "depth", outside: "thermal"}, workers=0
    )
    assert report.failed == 0, report.failures
    assert report.by_modality == {"image": 1, "depth": 1, "thermal": 1}
