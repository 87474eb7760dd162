"""The typer application and what every command shares: error handling, exit codes, model loading.

Heavy imports (torch, lancedb, faiss) happen inside the commands so that ``xsearch --help`` is instant.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterator
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
    rich_markup_mode=None,  # plain help, in the terminal's width (xsearch.cli.main.plain_help names the values)
)


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks (for bug reports).")]
StorageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        help="A setting of the object store holding s3:// databases and media (repeatable; e.g. "
        "aws_region=eu-west-1, aws_endpoint=http://127.0.0.1:9000); the AWS_* environment is read without it.",
    ),
]


@dataclasses.dataclass
class Invocation:
    """What the options of ``xsearch`` itself set for one command line, given before the command's name or
    after it: kept on typer's root context, and current while the command runs (``Invocation.current``),
    so that nothing outlives the command line."""

    verbose: bool = False
    debug: bool = False

    @classmethod
    def of(cls, context: typer.Context) -> Invocation:
        root = context.find_root()
        if not isinstance(root.obj, cls):
            root.obj = cls()
        return root.obj

    @classmethod
    def current(cls) -> Invocation:
        """The running command's; outside one (a command function called directly), the defaults."""
        return _RUNNING.get() or cls()

    def take(self, verbose: bool, debug: bool) -> None:
        """Options given again (after the command's name) add to those given before it."""
        self.verbose, self.debug = self.verbose or verbose, self.debug or debug
        configure_logging(self)


_RUNNING: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("xsearch_invocation", default=None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xsearch {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    context: typer.Context,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
    storage_option: StorageOpt = None,
) -> None:
    Invocation.of(context).take(verbose, debug)
    configure_storage(storage_option)


def configure_storage(options: list[str] | None) -> None:
    if options:
        from xsearch.objects import configure, parse_option

        try:
            configure(dict(parse_option(o) for o in options))
        except XsearchError as error:
            fail(f"--storage-option: {error}")


def configure_logging(invocation: Invocation) -> None:
    level = logging.DEBUG if invocation.debug else logging.INFO if invocation.verbose else logging.WARNING
    logging.basicConfig(format="%(levelname)s %(message)s")
    logging.getLogger().setLevel(level)
    # FAISS announces which SIMD build it loaded at INFO: noise unless debugging.
    logging.getLogger("faiss").setLevel(logging.DEBUG if invocation.debug else logging.WARNING)


def command(*args, **kwargs) -> Callable:
    """``app.command`` for a command that also takes ``--verbose``/``-v`` and ``--debug`` after its name
    (they work before it too, as options of ``xsearch`` itself)."""

    def register(function: Callable) -> Callable:
        signature = inspect.signature(function, eval_str=True)
        params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        for name, annotation, default in (
            ("verbose", VerboseOpt, False),
            ("debug", DebugOpt, False),
            ("storage_option", StorageOpt, None),
        ):
            keyword = inspect.Parameter.KEYWORD_ONLY
            params.append(inspect.Parameter(name, keyword, default=default, annotation=annotation))

        params.append(inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(function)
        def run(*call_args, context, verbose=False, debug=False, storage_option=None, **call_kwargs):
            invocation = Invocation.of(context)
            invocation.take(verbose, debug)
            configure_storage(storage_option)
            running = _RUNNING.set(invocation)
            try:
                return function(*call_args, **call_kwargs)
            finally:
                _RUNNING.reset(running)

        run.__signature__ = signature.replace(parameters=params)
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        # `xsearch --help` lists each command by its docstring's first sentence, whole (click cuts at 45 chars).
        kwargs.setdefault("short_help", (function.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "))
        return app.command(*args, **kwargs)(run)

    return register


# How each library argument is spelt on the command line (``XsearchError.argument`` -> flag), besides the
# search and classify options, whose flags their fields say (``flag_of``).
FLAGS = {
    "assign": "--as",
    "checkpoint": "--checkpoint",
    "device": "--device",
    "examples": "--examples",
    "batch_size": "--batch-size",
    "commit_every": "--commit-every",
    "db": "--db",
    "file_timeout": "--file-timeout",
    "gpu_decode": "--gpu-decode",
    "labels": "--labels",
    "modalities": "--modalities",
    "modality": "--as",
    "model": "--model",
    "paths": "PATHS",
    "precision": "--precision",
    "ray": "--ray",
    "ray_actors": "--ray-actors",
    "ray_stall_seconds": "--ray-stall",
    "storage_option": "--storage-option",
    "token": "--token",
    "workers": "--workers",
}


def flag_of(argument: str | None) -> str | None:
    """The flag a library argument is given by, if a command has one."""
    if argument in FLAGS:
        return FLAGS[argument]
    from xsearch.options import ClassifyOptions, SearchOptions, edge_fields

    for field in edge_fields(SearchOptions) + edge_fields(ClassifyOptions):
        if field.name == argument:
            return field.spelling.flags[0] if field.spelling.flags else "--" + field.name.replace("_", "-")
    return None


def fail(message: str | XsearchError, code: int = EXIT_ERROR) -> None:
    """Print an error to stderr and exit with ``code`` (never a traceback)."""
    typer.echo(f"error: {shown(message)}", err=True)
    raise typer.Exit(code)


@contextmanager
def handled_errors() -> Iterator[None]:
    """Domain errors -> one line and ``EXIT_ERROR``; anything else -> a short note (traceback with --debug)."""
    debug = Invocation.current().debug
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter, BrokenPipeError):  # typer/click report these
        raise
    except UsageError as error:
        if debug:
            raise
        flag = flag_of(error.argument)
        fail(f"{flag}: {error}" if flag else error)
    except XsearchError as error:
        if debug:
            raise
        flag = flag_of(error.argument)
        fail(f"{error} ({flag})" if flag else error)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as error:
        if debug:
            raise
        fail(f"internal error: {type(error).__name__}: {error} (re-run with --debug for the traceback)", EXIT_INTERNAL)


CheckpointOpt = Annotated[
    str | None,
    typer.Option(help="ImageBind checkpoint file (default: $XSEARCH_CHECKPOINT, else the cached download)."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Architecture of --checkpoint (default: the database's, else what the checkpoint names, else "
        "imagebind_huge)."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
DbOpt = Annotated[str, typer.Option("--db", envvar="XSEARCH_DB", help="Database directory.")]


PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="auto (bf16 on GPUs and CPUs with AMX; on other CPUs int8 with ONNX Runtime installed, else bf16 "
        "with AVX512-BF16, else fp32; `xsearch info` says which and why), fp32, bf16 or int8 "
        "(pip install 'xsearch[cpu]')."
    ),
]
VerifyOpt = Annotated[bool, typer.Option("--verify", help="Re-hash the cached checkpoint against its record.")]
AsOpt = Annotated[
    list[str] | None,
    typer.Option("--as", help="MODALITY for all PATHS, or MODALITY=PATH for one folder (depth=scans/)."),
]


@dataclasses.dataclass(frozen=True)
class ModelFlags:
    """The five model flags as a command received them; checked when ``open_collection`` folds them into a
    ``ModelChoice`` (inside the command's error handling, so a bad value is one line)."""

    checkpoint: str | None = None
    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    verify: bool = False


_MODEL_FLAGS = [  # declared once for every command that loads the model (``model_flags``)
    ("checkpoint", CheckpointOpt, None),
    ("model", ModelOpt, None),
    ("device", DeviceOpt, "auto"),
    ("precision", PrecisionOpt, "auto"),
    ("verify", VerifyOpt, False),
]


def model_flags(function: Callable) -> Callable:
    """``function(..., flags: ModelFlags)`` as a command taking ``--checkpoint``, ``--model``, ``--device``,
    ``--precision`` and ``--verify`` (appended to its options, in that order)."""
    signature = inspect.signature(function, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "flags"]
    keyword = inspect.Parameter.KEYWORD_ONLY
    added = [inspect.Parameter(name, keyword, default=default, annotation=kind) for name, kind, default in _MODEL_FLAGS]
    params = [p.replace(kind=keyword) if p.kind != p.VAR_KEYWORD else p for p in kept] + added
    params.sort(key=lambda p: p.kind == p.VAR_KEYWORD)  # **inputs last

    @functools.wraps(function)
    def command(*args, **kwargs):
        flags = ModelFlags(*(kwargs.pop(name) for name, _, _ in _MODEL_FLAGS))
        return function(*args, **kwargs, flags=flags)

    command.__signature__ = signature.replace(parameters=params)
    command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return command


def option_flags(cls: type) -> Callable[[Callable], Callable]:
    """``function(..., options)`` as a command taking one flag per spelled field of ``cls`` (an options class,
    ``xsearch.options``) in place of ``options``: name, type, default and help as the field says. The command
    gets ``options``, a ``functools.partial(cls, ...)`` to call once the flags may be checked (after the
    database's own modalities are registered: a target may name one)."""
    from xsearch.options import edge_fields

    given = edge_fields(cls)

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function, eval_str=True)
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = []
        for p in signature.parameters.values():
            if p.name == "options":
                params += [_flag(f) for f in given]
            else:
                params.append(p.replace(kind=keyword) if p.kind != p.VAR_KEYWORD else p)

        @functools.wraps(function)
        def command(*args, **kwargs):
            values = {f.name: kwargs.pop(f.name) for f in given}
            return function(*args, **kwargs, options=functools.partial(cls, **values))

        command.__signature__ = signature.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return command

    return decorate


def _flag(field) -> inspect.Parameter:
    """One options field (an ``EdgeField``) as a typer option."""
    spelling = field.spelling
    option = typer.Option(*spelling.flags, help=spelling.help, min=spelling.minimum)  # no flags: typer's --name
    annotation = Annotated[field.type, option]
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=annotation)


def model_choice(flags: ModelFlags):
    """The model flags folded into one ``ModelChoice`` (checked there)."""
    from xsearch.model.choice import ModelChoice

    return ModelChoice(*dataclasses.astuple(flags))


def open_collection(db: str | None, flags: ModelFlags = ModelFlags(), choice=None, settings=None):
    """The collection at ``db`` (``None``: none, for ``embed``) with the model the flags (or ``choice``)
    say; ``settings``: its ``EngineSettings`` (a long-lived command's)."""
    from xsearch.collection import Collection
    from xsearch.options import EngineSettings

    choice = choice or model_choice(flags)
    return Collection.open(db, choice=choice, settings=settings or EngineSettings())


def parse_assignments(values: list[str], paths: list[str]) -> dict[str, str]:
    """``--as MODALITY`` (all PATHS) and ``--as MODALITY=PATH`` -> {path: modality name}; the library
    checks the names."""
    assigned: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and not path:
            raise typer.BadParameter(f"{value!r}: expected MODALITY=PATH", param_hint="--as")
        for target in [path] if sep else paths:
            assigned[target] = name
    return assigned


def output_file(value: str | None, option: str, suffixes: tuple[str, ...] = ()) -> str | None:
    """An output file named by ``option``, checked before any work: its suffix, and its folder (created when
    missing, as ``--db`` is). A problem is one usage line and exit 2, never a traceback after the work."""
    if value is None:
        return None
    if suffixes and not value.lower().endswith(suffixes):
        fail(f"{option} {shown(value)}: expected a file name ending in {', '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(os.path.expanduser(value)))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        fail(f"{option} {shown(value)}: cannot create its folder ({exc.strerror or exc})")
    if os.path.isdir(value):
        fail(f"{option} {shown(value)}: is a folder, expected a file name")
    if not os.access(folder, os.W_OK):
        fail(f"{option} {shown(value)}: its folder {shown(folder)} is not writable")
    return os.path.expanduser(value)


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def shown(text: object) -> str:
    """Text for the terminal: control characters (escape sequences, newlines in file names) written as
    ``\\x1b``, so that a hostile or odd name can neither restyle the terminal nor break a table's rows."""
    return str(text).translate(_CONTROLS)


def note_random_weights(collection) -> None:
    """Every command on a database made with trial weights says that its results mean nothing."""
    if collection.random_weights:
        where = f"{collection.path} holds embeddings of" if collection.path is not None else "embedded with"
        typer.echo(
            f"note: {shown(where)} a random-weights model ({collection.model_name}): "
            "results are meaningless (made for trying xsearch)",
            err=True,
        )
