"""Filters (``where``): bounded in size, never escaping the target they are given, in the library, over
HTTP and on the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from xsearch import Modality
from xsearch.cli.main import app
from xsearch.server import create_app
from xsearch.store import Database, ItemRecord

from trials import basis_vector

runner = CliRunner()


def test_a_filter_cannot_escape_its_target_in_the_library(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items(
        [ItemRecord("/a.jpg", Modality.IMAGE, basis_vector(0)), ItemRecord("/b.wav", Modality.AUDIO, basis_vector(1))]
    )
    argv = ["search", "--db", str(tmp_path / "db"), "--item", "/a.jpg", "--target", "image"]
    escaping = runner.invoke(app, [*argv, "--where", "1=1) OR (modality = 'audio'"])
    assert escaping.exit_code == 2 and "unbalanced parentheses" in escaping.output
    fine = runner.invoke(app, [*argv, "--where", "uri LIKE '%(a%' OR (width IS NULL)", "--json"])
    assert fine.exit_code == 0, fine.output
    assert [r["modality"] for r in json.loads(fine.stdout)["results"]] == ["image"]


def test_a_filter_of_40000_terms_is_refused_in_one_line(served):
    _, collection = served
    client = TestClient(create_app(collection))
    huge = " OR ".join(f"width = {i}" for i in range(40_000))  # 520 KB: it segfaulted Lance
    answer = client.post("/api/search", data={"item": ["0"], "where": huge})
    assert answer.status_code == 400 and "characters, more than" in answer.json()["detail"]
    many = " OR ".join(f"width = {i}" for i in range(300))
    assert "AND/OR/NOT, more than" in client.post("/api/search", data={"item": ["0"], "where": many}).json()["detail"]
    assert client.post("/api/search", data={"item": ["0"], "k": "2"}).status_code == 200  # still serving


@pytest.mark.parametrize(
    "payload", ["1=1) OR (modality = 'audio' --", "1=1 /* ) OR (modality = 'audio' */", "width > 0; DROP"]
)
def test_a_filter_cannot_escape_its_target_over_http(served, payload):
    _, collection = served
    answer = TestClient(create_app(collection)).post(
        "/api/search", data={"item": ["0"], "target": "image", "where": payload}
    )
    assert (
        answer.status_code == 400
        and "not allowed in a filter" in answer.json()["detail"]
        or ("unbalanced" in answer.json()["detail"])
    )


def test_rows_a_filter_selects_are_rechecked_against_the_target(served):
    from xsearch.store import ItemFilter

    _, collection = served
    rows = collection.store.items().scan(["id"], ItemFilter(modality=Modality.IMAGE, where="id >= 0"))
    assert rows.num_rows == 3 and rows.column_names == ["id"]


def test_the_cli_says_a_filter_is_too_large_in_one_line(served):
    root, collection = served
    huge = " OR ".join(f"width = {i}" for i in range(40_000))
    result = runner.invoke(app, ["search", "--db", str(collection.path), "--item", "0", "--where", huge])
    assert result.exit_code == 2 and result.output.startswith("error: --where: bad filter")
    assert len(result.output) < 500 and Path(root).exists()
