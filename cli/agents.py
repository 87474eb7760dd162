"""``xsearch mcp``: the collection as tools for AI agents, over the Model Context Protocol (stdio, or
streamable HTTP under ``serve``'s rules for addresses and tokens)."""

from __future__ import annotations

from typing import Annotated

import typer

from xsearch.cli.app import (
    DbOpt,
    ModelFlags,
    command,
    fail,
    handled_errors,
    model_flags,
    note_random_weights,
    open_collection,
    shown,
)


@command()
@model_flags
def mcp(
    db: DbOpt = ...,
    allow_files: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-files",
            help="A folder whose files agents may search with (repeatable); otherwise only indexed files.",
        ),
    ] = None,
    http: Annotated[bool, typer.Option("--http", help="Streamable HTTP at /mcp instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="With --http: address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="With --http: port.")] = 8766,
    token: Annotated[
        str | None,
        typer.Option(envvar="XSEARCH_TOKEN", help="With --http: require this bearer token (16+ characters)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="With --http: serve another address without a token.")
    ] = False,
    flags: ModelFlags = ModelFlags(),
) -> None:
    """Serve a database to AI agents over MCP: search, similar, classify, item and info, read-only.

    Add it to an MCP client's configuration as the command `xsearch mcp --db /path/to/media.db` (stdio).
    """
    from xsearch.cli.serve import _bind, _loopback, _reachable

    if http and not _loopback(host) and token is None and not no_auth:
        fail(f"--host {host} is reachable from other machines: give --token TOKEN, or --no-auth to serve anyone")
    if not http and (token or no_auth or host != "127.0.0.1" or port != 8766):
        fail("--host, --port, --token and --no-auth are for --http (stdio needs none)")
    with handled_errors():
        from xsearch.options import EngineSettings
        from xsearch.server.mcp_server import create_server, existing_folders, http_app
        from xsearch.server.security import check_token

        check_token(token)
        folders = existing_folders(allow_files or [])
        collection = open_collection(db, flags, settings=EngineSettings(hold_rows=True))  # answers many searches
        facts = collection.info(check=False)  # a missing or damaged database fails now, in one line
        collection.model_choice()  # a trial database without its --checkpoint too
        server = create_server(collection, folders)
    if not http:
        server.run("stdio")  # the SDK points fd 1 at stderr meanwhile: nothing else reaches the wire
        return
    import uvicorn

    listening = _bind(host, port)
    auth = "token required" if token else "no token: anyone who can reach it can search"
    typer.echo(f"MCP over HTTP: {shown(facts['db'])} at http://{_reachable(host)}:{port}/mcp ({auth})", err=True)
    note_random_weights(collection)
    uvicorn.Server(uvicorn.Config(http_app(server, host, token), log_level="warning")).run(sockets=[listening])
