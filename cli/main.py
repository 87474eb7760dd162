"""``xsearch`` command line: the app with every command registered (entry point ``xsearch.cli.main:main``)."""

import sys
import types
import typing

import typer

from xsearch.cli import agents, bind, embed, index, info, search, serve  # noqa: F401  (each module registers its commands on ``app``)
from xsearch.cli.app import app

__all__ = ["app", "main", "plain_help"]


def plain_help(command):
    """Help in the words of a command line, not of Python: a flag shows no type, a value its kind in capitals
    (``-k INTEGER``), an argument its name (``PATHS...``); typer would print ``<bool>`` and ``<list[str]>``."""
    for param in command.params:
        kind = _base_type(param.type_descriptor.annotation) if hasattr(param, "type_descriptor") else None
        if param.param_type_name == "argument":
            param.metavar = param.name.upper()
            param.display_type_rich = lambda ctx: None  # the name says it; no "<list[str]>" beside it
        elif kind is bool or getattr(param, "is_flag", False):
            param.metavar = ""
        else:
            param.metavar = {int: "INTEGER", float: "NUMBER"}.get(kind, "TEXT")
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)
    return command


def _base_type(annotation):
    """``int`` for ``int``, ``int | None`` and ``list[int] | None``."""
    while True:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if not args or typing.get_origin(annotation) not in (list, typing.Union, types.UnionType):
            return annotation
        annotation = args[0]


def main() -> None:
    try:
        plain_help(typer.main.get_command(app))(prog_name="xsearch")
    except SystemExit:
        # Click (as typer vendors it) swaps in this wrapper when the reader of our output went away
        # (`xsearch ... | head`): the reader has what it wanted, which is success, not the exit 1 reported.
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            raise SystemExit(0) from None
        raise
