"""Options classes and their edges: a field declared once reaches the CLI, the HTTP form and the MCP tools."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from xsearch.cli.app import option_flags
from xsearch.cli.main import app
from xsearch.errors import UsageError
from xsearch.options import ClassifyOptions, SearchOptions, Selection, edge_fields, spelled
from xsearch.server.forms import options_form


@dataclasses.dataclass(frozen=True)
class _WithFuzz(SearchOptions):
    """A search option added the way the house adds one: a field, its check and its spelling."""

    fuzz: int = spelled(3, "How fuzzy.", minimum=1, most=9)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fuzz == 7:
            raise UsageError("fuzz 7 is unlucky", argument="fuzz")


def test_every_option_field_is_spelled_once():
    for cls in (SearchOptions, ClassifyOptions):
        spelled_names = [f.name for f in edge_fields(cls)]
        assert spelled_names == [f.name for f in dataclasses.fields(cls)]
        assert all(f.spelling.help.endswith(".") for f in edge_fields(cls))
    shared = [f.name for f in edge_fields(Selection)]
    assert shared == ["target", "where", "path"]
    for cls in (SearchOptions, ClassifyOptions):
        assert [f.name for f in edge_fields(cls)][:3] == shared


@pytest.mark.parametrize(("command", "cls"), [("search", SearchOptions), ("classify", ClassifyOptions)])
def test_each_command_takes_a_flag_for_every_field(command, cls):
    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}, terminal_width=200).output
    for field in edge_fields(cls):
        flag = field.spelling.flags[-1] if field.spelling.flags else "--" + field.name.replace("_", "-")
        assert flag in shown, (command, field.name)
        assert field.spelling.help[:30] in " ".join(shown.split()), (command, field.name)


def test_a_new_field_reaches_the_cli_with_its_default_bounds_and_check():
    made = []
    cli = typer.Typer()

    @cli.command()
    @option_flags(_WithFuzz)
    def go(options: _WithFuzz = ...) -> None:
        made.append(options())

    runner = CliRunner()
    assert runner.invoke(cli, ["--k", "4"]).exit_code == 0 and (made[-1].k, made[-1].fuzz) == (4, 3)
    assert runner.invoke(cli, ["--fuzz", "5", "--no-dedup"]).exit_code == 0
    assert (made[-1].fuzz, made[-1].dedup) == (5, False)
    refused = runner.invoke(cli, ["--fuzz", "0"])
    assert refused.exit_code == 2 and "--fuzz" in refused.output  # the minimum, checked by the parser
    with pytest.raises(UsageError, match="unlucky"):
        runner.invoke(cli, ["--fuzz", "7"], catch_exceptions=False)


def test_a_new_field_reaches_the_http_form_with_its_bounds_and_check():
    api = FastAPI()

    @api.post("/go")
    def go(options: _WithFuzz = Depends(options_form(_WithFuzz))) -> dict:
        return {"fuzz": options.fuzz, "k": options.k, "target": options.target, "path": options.path}

    client = TestClient(api)
    assert client.post("/go", data={"fuzz": "5", "k": "2", "target": "image"}).json() == {
        "fuzz": 5,
        "k": 2,
        "target": ["image"],
        "path": None,
    }
    assert client.post("/go", data={}).json()["fuzz"] == 3
    assert client.post("/go", data={"fuzz": "10"}).status_code == 422  # above the served bound
    unlucky = client.post("/go", data={"fuzz": "7"})
    assert unlucky.status_code == 400 and "unlucky" in unlucky.json()["detail"]
    relative = client.post("/go", data={"path": "photos/*"})
    assert relative.status_code == 400 and "absolute glob" in relative.json()["detail"]
    assert client.post("/go", data={"path": "*/2024/*"}).json()["path"] == "*/2024/*"


def test_a_relative_path_is_resolved_at_the_cli_and_python_edges(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert SearchOptions(path="photos/*").path == str(tmp_path / "photos/*")
    assert ClassifyOptions(path="~/x/*").path.startswith("/") and ClassifyOptions(path="*/x").path == "*/x"


def test_classify_options_are_checked_before_any_work():
    with pytest.raises(UsageError, match="id or score") as refused:
        ClassifyOptions(sort="confidence")
    assert refused.value.argument == "sort"
    with pytest.raises(UsageError, match="finite"):
        ClassifyOptions(min_confidence=float("nan"))
    assert ClassifyOptions.of(None, target="image").target == SearchOptions(target="image").target


def test_labels_refuse_an_order_they_do_not_know():
    """``Labels.sorted`` is public: it checks its order itself, against the same words as ``ClassifyOptions``."""
    import pyarrow as pa

    from xsearch.query.classify import SCHEMA, Labels

    labels = Labels(
        pa.table(
            {
                "id": [2, 1],
                "uri": ["/b", "/a"],
                "modality": ["image"] * 2,
                "label": ["x", "y"],
                "score": pa.array([0.9, 0.6], pa.float32()),
            },
            schema=SCHEMA,
        )
    )
    assert [row["id"] for row in labels.sorted("id").as_json()] == [1, 2]
    assert [row["id"] for row in labels.sorted("score").as_json()] == [2, 1]
    with pytest.raises(UsageError, match="sort by 'id' or 'score'"):
        labels.sorted("confidence")
