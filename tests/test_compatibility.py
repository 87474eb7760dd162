"""The on-disk format across the storage seam: a database written by xsearch at eb2017c (before ``Database`` and
``TableView``; ``tests/data/legacy.db``, made by ``tests/data/build_legacy_db.py``) opens, answers as it did
and takes new rows; and a database written today answers the same, to today's code and to eb2017c's."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from xsearch import Collection
from xsearch.store import Database
from xsearch.testing.media import tone, write_wav

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
EXPECTED = json.loads((DATA / "legacy.json").read_text())
LEGACY_COMMIT = "eb2017c6c822d2b072498598facbbc00387007ab"


def _builder():
    spec = importlib.util.spec_from_file_location("build_legacy_db", DATA / "build_legacy_db.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _builder()


@pytest.fixture
def legacy(tmp_path) -> Path:
    """A copy of the legacy database (a test never writes into the repository)."""
    return Path(shutil.copytree(DATA / "legacy.db", tmp_path / "legacy.db"))


def _answers(expected: dict) -> dict:
    return {key: value for key, value in expected.items() if key not in ("photo", "sound", "next_id")}


def _format(answers: dict) -> dict:
    """What the on-disk format decides: ids, uris, modalities, raw scores, rankings, moments, counts. The
    calibrated score (the fifth field of a hit) is search semantics, changed on purpose since eb2017c (a
    modality of a handful of items has its spread shrunk toward a prior), so it is left out; the rankings,
    which it decides when targets merge, are still compared."""
    return {
        key: [hit[:4] + hit[5:] for hit in value] if key.endswith(("_search", "_per_file")) else value
        for key, value in answers.items()
    }


def test_a_database_written_before_the_seam_answers_as_it_did(legacy):
    answered = builder.read(legacy, EXPECTED["photo"], EXPECTED["sound"])
    assert _format(answered) == _format(_answers(EXPECTED))
    assert answered["indices_fresh"] == ["audio", "depth", "image", "text"]  # its FAISS files are current


def test_an_earlier_database_takes_new_rows_above_its_id_mark(legacy, tmp_path, tiny_model):
    from xsearch.encoder import Encoder

    media = tmp_path / "new"
    media.mkdir()
    (media / "later.txt").write_text("a note added after the upgrade")
    write_wav(media / "later.wav", tone(8.0, 16000), 16000)
    with Collection.open(legacy, encoder=Encoder(tiny_model, device="cpu", precision="fp32")) as collection:
        report = collection.index([media], workers=0, progress=False)  # moments on: remembered by the database
        assert report.indexed == 2 and report.failed == 0
    db = Database.open(legacy, create=False)
    added = db.items().scan(["id", "uri"]).to_pylist()
    new_ids = sorted(row["id"] for row in added if row["uri"].startswith(str(media)))
    assert new_ids == [EXPECTED["next_id"], EXPECTED["next_id"] + 1]  # the pruned id is never given again
    assert db.moment_cfg().seconds == EXPECTED["info"]["moments"]["seconds"]
    assert db.moments().count() == EXPECTED["info"]["moments"]["moments"] + 2  # 8 s of sound: two moments


@pytest.fixture(scope="module")
def written_today(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("today")
    return out / "legacy.db", builder.build(out)


def test_a_database_written_today_answers_as_the_earlier_one_did(written_today):
    _, answered = written_today
    assert _format(answered) == _format(EXPECTED)  # the same ids, id mark, counts, indices and rankings


def test_the_earlier_code_reads_a_database_written_today(written_today, tmp_path):
    """eb2017c's own code (from this repository's history) opens today's database and answers as before."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: eb2017c's code cannot be taken from the history")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", LEGACY_COMMIT, "xsearch", "indexer", "cli"],
                             capture_output=True)  # fmt: skip
    if archive.returncode != 0:
        pytest.skip(f"commit {LEGACY_COMMIT[:7]} is not in this clone's history (a shallow clone?)")
    old = tmp_path / "eb2017c"
    old.mkdir()
    (tmp_path / "code.tar").write_bytes(archive.stdout)
    with tarfile.open(tmp_path / "code.tar") as tar:
        tar.extractall(old, filter="data")
    (old / "xsearch" / "indexer").symlink_to(old / "indexer")  # as the package installs them
    (old / "xsearch" / "cli").symlink_to(old / "cli")
    db, _ = written_today
    copy = shutil.copytree(db, tmp_path / "today.db")
    env = {**os.environ, "PYTHONPATH": str(old)}
    command = [sys.executable, str(DATA / "build_legacy_db.py"), "read", str(copy), str(EXPECTED["photo"]),
               str(EXPECTED["sound"])]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == _answers(EXPECTED)
    probe = [sys.executable, "-c", "import xsearch, sys; sys.stdout.write(xsearch.__file__)"]
    assert subprocess.run(probe, capture_output=True, text=True, env=env, cwd=tmp_path).stdout.startswith(str(old))
