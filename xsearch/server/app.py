"""``xsearch serve``: a warm search service over one collection, with a JSON API and a browser page.

One process holds the model (each tower loaded when first needed) and the indices; a new commit by a
concurrent ``xsearch index`` is seen at the next request (the engine takes one snapshot per store version).
Requests run in FastAPI's thread pool, off the event loop, side by side: the engine's snapshots and
indices do not change once made, and the encoder takes one batch at a time through the model.

The rooms, as FastAPI lays out a larger application: ``routers/`` (pages, search, items), ``dependencies``
(the served collection, the token check, items by id, the one error shape ``{"detail": "one line"}``),
``security`` (token, signed URLs, session cookies, the request guard). Here they are wired together.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from xsearch.server.dependencies import Served, validation_error
from xsearch.server.routers import items, pages, search
from xsearch.server.security import (
    BODY_SECONDS,
    FIELDS_BYTES,
    MAX_INPUTS,
    MAX_UPLOAD_BYTES,
    RequestGuard,
    Signer,
    check_token,
)

__all__ = ["MAX_INPUTS", "MAX_UPLOAD_BYTES", "check_token", "create_app"]


def create_app(
    collection,
    token: str | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    allowed_hosts: list[str] | None = None,
    body_seconds: float = BODY_SECONDS,
) -> FastAPI:
    """The application over ``collection`` (a ``Collection``). ``token``: required on every ``/api`` route.
    ``allowed_hosts``: the names the server answers to (``Host``), ``None`` for any; ``xsearch serve`` on a
    loopback address answers to loopback names only, which defeats DNS rebinding."""
    check_token(token)
    collection.bound_modalities()  # the database's own modalities: uploads and targets may name them
    app = FastAPI(
        title="xsearch",
        summary="Cross-modal search: any mix of files, text and stored items, weighted, against any modality.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by the pages router, under the token when there is one
    )
    app.state.served = Served(collection, token, Signer(token), max_upload_bytes)
    app.exception_handler(RequestValidationError)(validation_error)
    app.add_middleware(RequestGuard, max_body=max_upload_bytes + FIELDS_BYTES, seconds=body_seconds)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    assets = pages.docs_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    for router in (pages.router, search.router, items.router):
        app.include_router(router)
    return app
