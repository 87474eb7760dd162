"""The typer application and what every command shares: error handling, exit codes, model loading.

Heavy imports (torch, lancedb, faiss) happen inside the commands so that ``xsearch --help`` is instant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from xsearch import __version__
from xsearch.errors import UsageError, XsearchError

# Exit codes: distinct so that scripts can tell "some files failed" from "nothing could be done".
EXIT_ERROR = 2  # bad arguments, unreadable database or checkpoint: nothing was done
EXIT_SOME_FAILED = 3  # the run finished, but some files could not be indexed (see the errors table)
EXIT_INTERNAL = 70  # a bug: please report it (the traceback is shown with --debug)
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="xsearch",
    help="Cross-modal search over media collections: index folders, search any modality with any other.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _State:
    debug = False


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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (for bug reports).")] = False,
) -> None:
    _State.debug = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")


# How each library argument is spelt on the command line (``UsageError.argument`` -> flag).
FLAGS = {
    "assign": "--as",
    "device": "--device",
    "k": "-k",
    "labels": "--labels",
    "modalities": "--modalities",
    "model": "--model",
    "paths": "PATHS",
    "target": "--target",
}


def fail(message: str | XsearchError, code: int = EXIT_ERROR) -> None:
    """Print an error to stderr and exit with ``code`` (never a traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def handled_errors() -> Iterator[None]:
    """Domain errors -> one line and ``EXIT_ERROR``; anything else -> a short note (traceback with --debug)."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):  # typer reports usage errors itself (exit 2)
        raise
    except UsageError as error:
        if _State.debug:
            raise
        flag = FLAGS.get(error.argument or "")
        fail(f"{flag}: {error}" if flag else error)
    except XsearchError as error:
        if _State.debug:
            raise
        fail(error)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as error:
        if _State.debug:
            raise
        fail(f"internal error: {type(error).__name__}: {error} (re-run with --debug for the traceback)", EXIT_INTERNAL)


CheckpointOpt = Annotated[
    str | None, typer.Option(envvar="XSEARCH_CHECKPOINT", help="ImageBind checkpoint file (default: cached download).")
]
ModelOpt = Annotated[
    str | None, typer.Option(help="Architecture of --checkpoint (default: the database's, else imagebind_huge).")
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
DbOpt = Annotated[str, typer.Option("--db", envvar="XSEARCH_DB", help="Database directory.")]


def open_collection(db: str, checkpoint: str | None = None, model: str | None = None, device: str = "auto"):
    from xsearch.collection import Collection

    return Collection.open(db, checkpoint=checkpoint, model=model, device=device)
