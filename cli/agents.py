"""``xsearch mcp``: the collection as tools for AI agents, over the Model Context Protocol (stdio)."""

from __future__ import annotations

from typing import Annotated

import typer

from xsearch.cli.app import CheckpointOpt, DbOpt, DeviceOpt, PrecisionOpt, command, handled_errors, open_collection


@command()
def mcp(
    db: DbOpt = ...,
    allow_files: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-files",
            help="A folder whose files agents may search with (repeatable); otherwise only indexed files.",
        ),
    ] = None,
    checkpoint: CheckpointOpt = None,
    model: Annotated[str | None, typer.Option(help="Architecture of --checkpoint (default: the database's).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
) -> None:
    """Serve a database to AI agents over MCP (stdio): search, similar, classify, item and info, read-only.

    Add it to an MCP client's configuration as the command `xsearch mcp --db /path/to/media.db`.
    """
    with handled_errors():
        from xsearch.server.mcp_server import create_server, existing_folders

        folders = existing_folders(allow_files or [])
        collection = open_collection(db, checkpoint, model, device, precision)
        collection.info(check=False)  # a missing or damaged database fails now, in one line, not at each call
        collection.model_choice()  # a trial database without its --checkpoint too
        server = create_server(collection, folders)
    server.run("stdio")
