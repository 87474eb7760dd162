"""``xsearch`` command line: the app with every command registered (entry point ``xsearch.cli.main:main``)."""

import sys

from xsearch.cli import embed, index, info, search, serve  # noqa: F401  (each module registers its commands on ``app``)
from xsearch.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except SystemExit:
        # Click (as typer vendors it) swaps in this wrapper when the reader of our output went away
        # (`xsearch ... | head`): the reader has what it wanted, which is success, not the exit 1 reported.
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            raise SystemExit(0) from None
        raise
