"""What the routes share: the served collection and its signer (``Served``, on the application's state),
the token check, items by id, form checks and the one error shape.

Errors have one shape: ``{"detail": "one line"}``, validation errors included.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from xsearch.errors import ItemNotFound, QueryError, UsageError, XsearchError
from xsearch.options import item_key
from xsearch.server.security import SESSION_COOKIE, Signer

ITEM_COLUMNS = [
    "id",
    "uri",
    "modality",
    "sha256",
    "size",
    "mtime",
    "width",
    "height",
    "duration",
    "sample_rate",
    "precision",
]
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class Served:
    """What one application serves: the collection, the token (``None``: none asked) and the signer of its
    preview and media URLs and session cookies, and the size an upload may have."""

    collection: object
    token: str | None
    signer: Signer
    max_upload_bytes: int


def served(request: Request) -> Served:
    return request.app.state.served


def authorised(request: Request) -> None:
    """The token as a bearer header, or the session cookie the page gets for it (``/api/session``)."""
    serving = served(request)
    if serving.token is None:
        return
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if secrets.compare_digest(given.encode(), serving.token.encode()):
        return
    if serving.signer.valid_session(request.cookies.get(SESSION_COOKIE, "")):
        return
    raise HTTPException(401, "a valid token is required", headers={"WWW-Authenticate": "Bearer"})


GUARDED = [Depends(authorised)]  # a route's ``dependencies``: the token (or the session cookie) first


def item_row(request: Request, item_id: str) -> dict:
    """The stored row of an item named by its numeric id; anything else (a path, ``..``) is 404."""
    key = item_key(item_id)
    if not isinstance(key, int) or key >= 2**63:
        raise HTTPException(404, f"no item {item_id}")
    with http_errors():
        return served(request).collection.item(key, [*ITEM_COLUMNS, "thumbnail"])


def signed_item(request: Request, item_id: str, kind: str) -> dict:
    """A preview or media request: signed by a search's answer, or with the token itself."""
    serving = served(request)
    if serving.token is not None and not serving.signer.valid(item_id, kind, request.query_params):
        authorised(request)
    return item_row(request, item_id)


def require_form(request: Request) -> None:
    """A body that is not a form (JSON, say) would read as an empty form: say what to send instead."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in FORM_TYPES and (kind or request.headers.get("content-length", "0") != "0"):
        raise HTTPException(415, f"send multipart/form-data (or a url-encoded form), not {kind or 'no body type'}")


@contextlib.contextmanager
def http_errors(uploads: dict[str, str] | None = None):
    """Library errors as HTTP answers: usage and query problems 400 (reasons name an upload by the client's
    file name, not our temporary path), a missing item 404, the rest 500 with one line."""
    try:
        yield
    except (UsageError, QueryError) as error:
        message = str(error)
        for saved, name in (uploads or {}).items():
            message = message.replace(saved, name)
        raise HTTPException(404 if isinstance(error, ItemNotFound) else 400, message) from None
    except XsearchError as error:
        raise HTTPException(500, str(error)) from None


def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in the API's one shape: ``{"detail": "field: problem; ..."}``."""
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path"))
        problems.append(f"{where}: {problem.get('msg', 'invalid')}" if where else problem.get("msg", "invalid"))
    return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)
