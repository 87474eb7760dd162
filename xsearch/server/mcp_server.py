"""``xsearch mcp``: a collection searched by AI agents over the Model Context Protocol (the official SDK).

Five read-only tools: ``search`` (texts, files and stored items, each with a weight), ``similar`` (more like
an item or a moment), ``classify``, ``item`` and ``info``. No tool writes the database. Queries get the
bounds ``serve`` gives them: at most ``MAX_INPUTS`` inputs, files decoded in a supervised worker under the
indexer's limits, filters through the same bounded builder. A query file must be a file the database
indexed, or lie under a folder the server was started with (``--allow-files``): an agent that can be talked
into anything cannot make the server read ``~/.ssh``.

A failure the user can act on (a bad filter, an unknown item, a file outside the allowed folders) is a tool
error whose text is the one line the CLI would print; arguments that do not fit a tool's schema are refused
by the SDK before any code runs.
"""

from __future__ import annotations

import inspect
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from xsearch.errors import XsearchError
from xsearch.options import ClassifyOptions, SearchOptions, edge_fields, item_key, served
from xsearch.query.results import METADATA_COLUMNS
from xsearch.server.security import MAX_INPUTS

INSTRUCTIONS = (
    "Search a media collection (photos, video, audio, text, depth, thermal and IMU files) in one shared "
    "embedding space: any kind of input finds any kind of file. Use `search` with texts (and files or stored "
    "items), `similar` for more like a result, `item` for one result's details, `classify` to label items, "
    "`info` for what the collection holds. Scores: `calibrated` compares across kinds of files (above 3 "
    "stands out); `score` is the raw cosine."
)


class SearchInput(BaseModel):
    """One input of a query: a text, a file, or a stored item; inputs are added with their weights."""

    kind: Literal["text", "file", "item"] = Field(description="text: words; file: a path; item: an id or path")
    value: str = Field(description="The text, the file's path, or the item's id (ITEM@SECONDS for a moment)")
    weight: float = Field(1.0, ge=-10, le=10, description="How much it counts; negative subtracts")
    modality: str | None = Field(None, description="For a file: its modality when its type does not say")


# What one call may ask of the server, tighter than the API's: an agent reads every result it gets.
MOST = {"k": 200, "per_file": 100}


def create_server(collection, allow_files: list[str | os.PathLike] = ()):
    """The MCP server over ``collection`` (a ``Collection``); ``allow_files``: folders whose files may be
    query inputs besides the indexed ones."""
    collection.bound_modalities()  # the database's own modalities: inputs and targets may name them
    try:
        import mcp  # noqa: F401
    except ImportError:
        from xsearch.errors import UsageError

        raise UsageError("xsearch mcp needs the MCP SDK: pip install 'xsearch[mcp]'") from None
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ToolAnnotations

    from xsearch import __version__

    read_only = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
    server = MCPServer("xsearch", instructions=INSTRUCTIONS, version=__version__)
    tools = _Tools(collection, [os.path.realpath(folder) for folder in allow_files])
    for tool in (tools.search, tools.similar, tools.classify, tools.item, tools.info):
        server.tool(annotations=read_only)(tool)
    return server


def _answered(work):
    """``work()``, with xsearch's one-line errors as tool errors the agent reads."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        return work()
    except XsearchError as exc:
        raise ToolError(str(exc)) from None


class _Tools:
    """The tools over one collection: each method's name, parameters and docstring are what an agent sees.
    ``allowed``: the folders (real paths) whose files may be query inputs besides the indexed ones."""

    def __init__(self, collection, allowed: list[str]):
        self.collection, self.allowed = collection, allowed

    def search(self, inputs: Annotated[list[SearchInput], Field(min_length=1, max_length=MAX_INPUTS)], **given) -> dict:
        """Find the files nearest to the inputs (texts, files, stored items; weighted and added), best first."""

        def work():
            options = SearchOptions(**served(given))
            query = _query(self.collection, inputs, self.allowed)
            return _results(self.collection.search(query, options))

        return _answered(work)

    def similar(
        self, item: Annotated[str, Field(description="A result's id or path; ID@SECONDS for a moment of it")], **given
    ) -> dict:
        """More like one stored item or moment (the item itself is left out)."""

        def work():
            options = SearchOptions(**given, exclude_query_items=True)
            return _results(self.collection.search(_item_query(item), options))

        return _answered(work)

    def classify(
        self,
        labels: Annotated[list[str], Field(min_length=2, max_length=100, description="The labels to choose from")],
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many items, most confident first")] = 100,
        **given,
    ) -> dict:
        """Give stored items their most likely label (zero-shot, from the labels' texts) and a score."""

        def work():
            labelled = self.collection.classify(labels, ClassifyOptions(**served(given), sort="score"))
            rows = labelled.as_json()
            return {"labels": rows[:limit], "items": len(rows)}

        return _answered(work)

    def item(self, key: Annotated[str, Field(description="The item's id or path")]) -> dict:
        """One stored item: path, modality, size, and what is known of it (width, duration, when, where...)."""
        columns = ["id", "uri", "modality", "size", "mtime", "sha256", *METADATA_COLUMNS]
        row = lambda: self.collection.item(item_key(key), columns)  # noqa: E731
        return _answered(lambda: {k: v for k, v in row().items() if v is not None})

    def info(self) -> dict:
        """What the collection holds: items per modality, the model, indices, errors, moments."""
        return _answered(lambda: self.collection.info(check=False))


def _with_options(method, cls: type, only: list[str] | None = None) -> None:
    """``method``'s ``**given`` declared as ``cls``'s spelled fields (or ``only`` these): each a tool
    parameter with the field's type, default, help and bounds (``MOST`` tightening the API's), which the
    SDK turns into the schema the agent reads and checks before the call."""
    signature = inspect.signature(method, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    added = []
    for field in edge_fields(cls, only):
        spelling = field.spelling
        kind = Literal[spelling.choices] if spelling.choices else field.type
        bounds = Field(description=spelling.help, ge=spelling.minimum, le=MOST.get(field.name, spelling.most))
        annotation = Annotated[kind, bounds]
        added.append(
            inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=annotation)
        )
    method.__signature__ = signature.replace(parameters=kept + added)


_with_options(_Tools.search, SearchOptions)
_with_options(_Tools.similar, SearchOptions, only=["target", "k", "moments"])
_with_options(_Tools.classify, ClassifyOptions, only=[f.name for f in edge_fields(ClassifyOptions) if f.name != "sort"])


def http_app(server, host: str, token: str | None):
    """The server as an ASGI app for streamable HTTP at ``/mcp``: with ``token``, every request needs it as
    ``Authorization: Bearer``; on a loopback ``host``, only loopback ``Host`` names are answered (the SDK's
    DNS-rebinding check)."""
    return _BearerToken(server.streamable_http_app(host=host), token)


class _BearerToken:
    """Refuses a request without the token (401) before the MCP app sees it."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.token is not None:
            given = dict(scope["headers"]).get(b"authorization", b"").removeprefix(b"Bearer ").strip()
            if not secrets.compare_digest(given, self.token):
                from starlette.responses import JSONResponse

                refused = {"detail": "a valid token is required"}
                await JSONResponse(refused, 401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _query(collection, inputs: list[SearchInput], allowed: list[str]):
    from xsearch.query import Query

    parts = []
    for given in inputs:
        if given.kind == "text":
            parts.append(Query.text(given.value, given.weight))
        elif given.kind == "item":
            parts.append(_item_query(given.value, given.weight))
        else:
            path = _allowed_file(collection, given.value, allowed)
            parts.append(Query.file(path, given.modality or _modality_of(path), given.weight))
    return Query.sum(parts)


def _item_query(value: str, weight: float = 1.0):
    from xsearch.moments import split_item_time
    from xsearch.query import Query

    key, at = split_item_time(value)
    return Query.item(key, weight, at=at)


def _allowed_file(collection, value: str, allowed: list[str]) -> str:
    """``value`` as a query file when the database indexed it or it lies under an allowed folder."""
    from xsearch.errors import UsageError
    from xsearch.objects import is_object_uri
    from xsearch.paths import is_under

    remote = is_object_uri(value)
    real = value if remote else os.path.realpath(os.path.expanduser(value))
    if not remote and any(is_under(real, folder) for folder in allowed):
        return real
    if collection.store.items().lookup(real, ["id"]) is not None:
        return real
    where = f" or under {', '.join(allowed)}" if allowed else " (start the server with --allow-files DIR for others)"
    raise UsageError(f"{value}: not a file of this collection{where}")


def _modality_of(path: str):
    from xsearch.errors import UsageError
    from xsearch.paths import modality_of_path

    modality = modality_of_path(path)
    if modality is None:
        raise UsageError(f"{path}: unknown file type; give its modality (image, audio, video...)")
    return modality


def _results(results) -> dict:
    out = results.as_json()
    for hit in out["results"]:
        hit["modality"] = str(hit["modality"])
        hit["file"] = hit["uri"] if not hit["uri"].startswith(("s3://", "gs://", "az://")) else None
    return out


def existing_folders(folders: list[str]) -> list[Path]:
    """``--allow-files`` folders, each required to exist (a typo would allow nothing, silently)."""
    from xsearch.errors import UsageError

    out = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UsageError(f"--allow-files {folder}: no such folder", argument="allow_files")
        out.append(path)
    return out
