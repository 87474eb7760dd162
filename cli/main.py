"""``xsearch`` command line: the app with every command registered (entry point ``cli.main:app``)."""

from cli import embed, index, info, search  # noqa: F401  (each module registers its commands on ``app``)
from cli.app import app

__all__ = ["app"]
