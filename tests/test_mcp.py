"""``xsearch mcp`` driven by the MCP SDK's own client over stdio: a real client session with the server in a
subprocess, as an agent's host starts it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xsearch.cli.main import app
from xsearch.model import save_random_checkpoint
from xsearch.options import ClassifyOptions, SearchOptions, edge_fields
from xsearch.testing.media import gradient_image, tone, write_wav

from scripts import xsearch_script

mcp = pytest.importorskip("mcp", reason="the MCP SDK is in the test extra (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp")
    checkpoint = save_random_checkpoint(root / "trial.pt", "tiny_test", seed=0)
    media = root / "media"
    media.mkdir()
    for i in range(3):
        gradient_image(media / f"photo{i}.jpg", seed=i)
    write_wav(media / "tone.wav", tone(2.0, 16000), 16000)
    (media / "note.txt").write_text("a note about a red door")
    outside = root / "outside"
    outside.mkdir()
    gradient_image(outside / "query.jpg", seed=7)
    (root / "secret.txt").write_text("a private key")
    db = root / "db"
    argv = ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "--precision", "fp32"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    return {"root": root, "db": db, "checkpoint": checkpoint, "media": media, "outside": outside}


def _session(collection, *more: str):
    """Run ``talk(session)`` against ``xsearch mcp`` started by the SDK's stdio client."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    # fp32 on both sides: the tiny random model puts the test's pictures within 0.001 of each other, which
    # int8's per-batch activation scales could reorder.
    argv = ["mcp", "--db", str(collection["db"]), "--checkpoint", str(collection["checkpoint"]), "--precision", "fp32"]
    argv += more
    params = StdioServerParameters(command=xsearch_script(), args=argv, cwd=str(collection["root"]))

    def run(talk):
        async def main():
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                return await talk(session)

        return asyncio.run(asyncio.wait_for(main(), timeout=240))

    return run


def _data(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content.get("result", result.structured_content)
    return json.loads(result.content[0].text)


def test_an_agent_lists_the_tools_and_calls_each(collection):
    media = collection["media"]

    async def talk(session):
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        text = await session.call_tool("search", {"inputs": [{"kind": "text", "value": "a red door"}], "k": 3})
        photo = str(media / "photo0.jpg")
        by_file = await session.call_tool(
            "search", {"inputs": [{"kind": "file", "value": photo, "weight": 2.0}], "target": "image"}
        )
        similar = await session.call_tool("similar", {"item": photo, "target": "image", "k": 2})
        labels = await session.call_tool("classify", {"labels": ["photo", "sound"], "target": "image,audio"})
        item = await session.call_tool("item", {"key": photo})
        info = await session.call_tool("info", {})
        return tools, text, by_file, similar, labels, item, info

    tools, text, by_file, similar, labels, item, info = _session(collection)(talk)
    assert set(tools) == {"search", "similar", "classify", "item", "info"}
    assert all(tool.annotations.read_only_hint for tool in tools.values())
    assert "inputs" in tools["search"].input_schema["properties"] and tools["search"].description
    searched = tools["search"].input_schema["properties"]
    assert set(searched) == {"inputs"} | {f.name for f in edge_fields(SearchOptions)}  # every field, derived
    assert searched["k"]["maximum"] == 200 and searched["k"]["default"] == SearchOptions.k
    labelling = set(tools["classify"].input_schema["properties"])
    assert labelling == {"labels", "limit"} | {f.name for f in edge_fields(ClassifyOptions)} - {"sort"}
    hits = _data(text)["results"]
    assert len(hits) == 3 and {"uri", "modality", "score", "calibrated"} <= set(hits[0])
    assert _data(by_file)["results"][0]["uri"] == str(media / "photo0.jpg")  # an indexed file: allowed
    found = _data(similar)["results"]
    assert len(found) == 2 and str(media / "photo0.jpg") not in [h["uri"] for h in found]  # itself left out
    assert {row["label"] for row in _data(labels)["labels"]} <= {"photo", "sound"} and _data(labels)["items"] == 4
    assert _data(item)["modality"] == "image" and _data(item)["width"] > 0
    assert _data(info)["items"] == 5


def test_bad_arguments_and_files_outside_the_collection_are_tool_errors(collection):
    root = collection["root"]

    async def talk(session):
        calls = {
            "secret": ("search", {"inputs": [{"kind": "file", "value": str(root / "secret.txt")}]}),
            "outside": ("search", {"inputs": [{"kind": "file", "value": str(collection["outside"] / "query.jpg")}]}),
            "schema": ("search", {"inputs": [{"kind": "smell", "value": "x"}]}),
            "too_many": ("search", {"inputs": [{"kind": "text", "value": f"t{i}"} for i in range(17)]}),
            "filter": ("search", {"inputs": [{"kind": "text", "value": "x"}], "where": "nope > 1"}),
            "item": ("item", {"key": "999999"}),
        }
        out = {name: await session.call_tool(tool, args) for name, (tool, args) in calls.items()}
        out["still_serving"] = await session.call_tool("info", {})
        return out

    out = _session(collection)(talk)
    messages = {name: result.content[0].text for name, result in out.items() if result.is_error}
    assert set(messages) == {"secret", "outside", "schema", "too_many", "filter", "item"}
    assert "not a file of this collection" in messages["secret"] and "private key" not in messages["secret"]
    assert "--allow-files" in messages["outside"]
    assert "no column named nope" in messages["filter"] and "no indexed item" in messages["item"]
    assert _data(out["still_serving"])["items"] == 5


def test_allow_files_lets_an_agent_search_with_a_file_from_that_folder(collection):
    query = str(collection["outside"] / "query.jpg")

    async def talk(session):
        return await session.call_tool("search", {"inputs": [{"kind": "file", "value": query}], "target": "image"})

    result = _session(collection, "--allow-files", str(collection["outside"]))(talk)
    assert len(_data(result)["results"]) == 3


def test_a_missing_allowed_folder_or_database_is_one_line(collection, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["mcp", "--db", str(collection["db"]), "--allow-files", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "--allow-files" in missing.output and "no such folder" in missing.output
    no_db = runner.invoke(app, ["mcp", "--db", str(tmp_path / "none.db")])
    assert no_db.exit_code != 0 and "Traceback" not in no_db.output
    assert Path(tmp_path / "none.db").exists() is False


def test_over_http_a_token_is_required_and_the_tools_answer_with_it(collection):
    import socket
    import subprocess
    import time

    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = "a-token-long-enough-to-pass"
    argv = [xsearch_script(), "mcp", "--db", str(collection["db"]), "--checkpoint", str(collection["checkpoint"])]
    argv += ["--precision", "fp32", "--http", "--port", str(port), "--token", token]
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.2)
        refused = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401

        async def main():
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                # The SDK's own client waits minutes for a reply; httpx's default (5 s) is shorter than a first
                # text query that loads the model on a busy machine, and cut that reply off.
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as client,
                streamable_http_client(url, http_client=client) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                names = {tool.name for tool in (await session.list_tools()).tools}
                found = await session.call_tool("search", {"inputs": [{"kind": "text", "value": "a red door"}]})
                return names, found

        names, found = asyncio.run(asyncio.wait_for(main(), timeout=120))
        assert names == {"search", "similar", "classify", "item", "info"}
        assert len(_data(found)["results"]) == 5
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_options_for_http_without_http_and_an_open_address_without_a_token_are_refused(collection):
    runner = CliRunner()
    stdio_with_token = runner.invoke(app, ["mcp", "--db", str(collection["db"]), "--token", "x" * 20])
    assert stdio_with_token.exit_code == 2 and "are for --http" in stdio_with_token.output
    open_address = runner.invoke(app, ["mcp", "--db", str(collection["db"]), "--http", "--host", "0.0.0.0"])
    assert open_address.exit_code == 2 and "give --token" in open_address.output
