"""``xsearch info`` and ``xsearch errors``: what a database holds, and what could not be indexed."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.app import DbOpt, app, handled_errors


@app.command()
def errors(
    db: DbOpt = ...,
    json_: Annotated[bool, typer.Option("--json", help="JSON lines instead of text.")] = False,
) -> None:
    """List the files that could not be indexed, with the reason (retried on the next `xsearch index`)."""
    with handled_errors():
        from xsearch.store import Store

        rows = Store.open(db, create=False).error_rows().sort_by("uri").to_pylist()
    for row in rows:
        if json_:
            typer.echo(json.dumps({k: row[k] for k in ("uri", "modality", "stage", "message")}))
        else:
            typer.echo(f"{row['uri']}: {row['message']} [{row['stage']}]")
