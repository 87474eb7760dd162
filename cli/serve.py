"""``xsearch serve``: the warm search service (JSON API + browser page) over one database."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from xsearch.cli.app import (
    CheckpointOpt,
    DbOpt,
    DeviceOpt,
    PrecisionOpt,
    command,
    fail,
    handled_errors,
    open_collection,
)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@command()
def serve(
    db: DbOpt = ...,
    host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8765,
    token: Annotated[
        str | None, typer.Option(envvar="XSEARCH_TOKEN", help="Require this bearer token on every request.")
    ] = None,
    no_auth: Annotated[bool, typer.Option(help="Serve another address without a token (anyone can search).")] = False,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest upload accepted, in MB.")] = 100,
    checkpoint: CheckpointOpt = None,
    model: Annotated[str | None, typer.Option(help="Architecture of --checkpoint (default: the database's).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
) -> None:
    """Serve a database: a browser page at / and a JSON API (documented at /docs), the model kept warm.

    Binds 127.0.0.1 by default; another address needs --token (or XSEARCH_TOKEN) or an explicit --no-auth.
    """
    if not _loopback(host) and token is None and not no_auth:
        fail(f"--host {host} is reachable from other machines: give --token TOKEN, or --no-auth to serve anyone")
    with handled_errors():
        import uvicorn

        from xsearch.server import create_app

        collection = open_collection(db, checkpoint, model, device, precision)
        facts = collection.info()  # fails now, in one line, when the database is missing or damaged
        app = create_app(collection, token=token, max_upload_bytes=max_upload_mb << 20)
    auth = "token required" if token else "no token: anyone who can reach it can search"
    typer.echo(f"serving {facts['db']} ({facts['items']} items) on http://{host}:{port}/ ({auth})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
