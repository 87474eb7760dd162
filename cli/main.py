"""``xsearch`` command line: thin commands that hand off to the library.

Heavy imports (torch, lancedb, faiss) happen inside the commands so that ``xsearch --help`` is instant.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from xsearch import __version__
from xsearch.errors import XsearchError

app = typer.Typer(
    name="xsearch",
    help="Cross-modal search over media collections: index folders, search any modality with any other.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xsearch {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


def fail(error: XsearchError, code: int = 2) -> None:
    """Print a domain error to stderr and exit with ``code`` (never a traceback)."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code)


@app.command()
def embed(
    paths: Annotated[list[str], typer.Argument(help="Media files to embed.")],
    checkpoint: Annotated[
        str | None, typer.Option(envvar="XSEARCH_CHECKPOINT", help="ImageBind checkpoint file.")
    ] = None,
    model: Annotated[str, typer.Option(help="Architecture for --checkpoint.")] = "imagebind_huge",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_: Annotated[str | None, typer.Option("--as", help="Modality of all PATHS (depth, thermal, imu...).")] = None,
) -> None:
    """Embed files and print one JSON line per file (path, modality, 1024-d vector)."""
    import json

    from xsearch.encoder import Encoder
    from xsearch.model import load_pretrained

    try:
        encoder = Encoder(load_pretrained(checkpoint, architecture=model), device=device)
        for result in encoder.encode_files(paths, modality=as_):
            typer.echo(json.dumps({"path": result.path, "modality": str(result.modality), **result.as_json()}))
    except XsearchError as error:
        fail(error)
