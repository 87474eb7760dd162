"""``xsearch serve``: the warm search service (JSON API + browser page) over one database."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import time
from typing import Annotated

import typer

from xsearch.cli.app import (
    DbOpt,
    ModelFlags,
    command,
    fail,
    handled_errors,
    model_choice,
    model_flags,
    note_random_weights,
    open_collection,
    shown,
)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@command()
@model_flags
def serve(
    db: DbOpt = ...,
    host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(envvar="XSEARCH_TOKEN", help="Require this bearer token (16+ characters) on every API route."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve another address without a token (anyone can search).")
    ] = False,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest upload accepted, in MB.")] = 100,
    gpu_memory: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="On a GPU: GB of its memory for exact search per modality (default: half of what is free); "
            "past it the index proposes candidates and the GPU re-ranks them.",
        ),
    ] = None,
    flags: ModelFlags = ModelFlags(),
) -> None:
    """Serve a database: a browser page at / and a JSON API (documented at /docs), the model kept warm.

    Binds 127.0.0.1 by default; another address needs --token (or XSEARCH_TOKEN) or an explicit --no-auth.
    """
    if not _loopback(host) and token is None and not no_auth:
        fail(f"--host {host} is reachable from other machines: give --token TOKEN, or --no-auth to serve anyone")
    with handled_errors():
        import uvicorn

        from xsearch.options import EngineSettings
        from xsearch.server import create_app
        from xsearch.server.security import check_token

        check_token(token)  # arguments first: before the database and the model are looked at
        choice = model_choice(flags)
        placement = choice.placement()
        settings = EngineSettings(
            hold_rows=True,  # a server answers many searches: hits' rows from memory
            exact_device=placement.device if placement.on_gpu else None,  # on a GPU: exact search there
            exact_budget_bytes=int(gpu_memory * (1 << 30)) if gpu_memory is not None else None,
        )
        collection = open_collection(db, choice=choice, settings=settings)
        facts = collection.info()  # fails now, in one line, when the database is missing or damaged
        collection.model_choice()  # a trial database without its --checkpoint fails now, not at each search
        # On a loopback address, only loopback names: a web page cannot reach it through DNS rebinding.
        hosts = ["127.0.0.1", "localhost", "::1", "[::1]"] if _loopback(host) else None
        app = create_app(collection, token=token, max_upload_bytes=max_upload_mb << 20, allowed_hosts=hosts)
    listening = _bind(host, port)  # a taken port fails here, before "serving"
    page = f"http://{_reachable(host)}:{port}/" + (f"#token={token}" if token else "")
    auth = "token required" if token else "no token: anyone who can reach it can search"
    typer.echo(f"serving {shown(facts['db'])} ({facts['items']} items) on {page} ({auth})", err=True)
    note_random_weights(collection)
    _quiet_repeated_accept_errors()
    from xsearch.server.protocol import TimelyH11Protocol

    config = uvicorn.Config(
        app,
        http=TimelyH11Protocol,  # a connection that sends no request head in 20 s is closed
        log_level="warning",
        limit_concurrency=MAX_CONNECTIONS,  # past it, 503 at once: a flood of slow clients cannot exhaust descriptors
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 << 10,  # request line and headers
    )
    uvicorn.Server(config).run(sockets=[listening])


MAX_CONNECTIONS = 256


class _OncePer(logging.Filter):
    """Lets one record of a kind through per ``seconds`` (1,100 refused accepts wrote 674 MB of the same line)."""

    def __init__(self, seconds: float = 10.0):
        super().__init__()
        self.seconds, self.last = seconds, {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = str(record.msg)[:80]
        now = time.monotonic()
        if now - self.last.get(kind, -self.seconds) < self.seconds:
            return False
        self.last[kind] = now
        return True


def _quiet_repeated_accept_errors() -> None:
    """Raise the open-file limit to what the system allows, and log a failing accept once per 10 s."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else soft, hard))
    logging.getLogger("asyncio").addFilter(_OncePer())


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a port in use is one usage line (exit 2), not a server error."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        fail(f"--port {port}: {reason} ({host})" if exc.errno == errno.EADDRINUSE else f"--host {host}: {reason}")
    listening.set_inheritable(True)
    return listening


def _reachable(host: str) -> str:
    """The name to open in a browser: a wildcard address (all interfaces) is not one, this machine's name is."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
