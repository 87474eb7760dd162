"""``xsearch serve``: a warm search service over one collection, with a JSON API and a browser page.

One process holds the model (each tower loaded when first needed) and the indices; a new commit by a
concurrent ``xsearch index`` is seen at the next request (the engine takes one snapshot per store version).
Requests run in FastAPI's thread pool, off the event loop, side by side: the engine's snapshots and
indices do not change once made, and the encoder takes one batch at a time through the model.

Security: media are served by item id only (never by a path from the client), and only regular files. With
a token, every ``/api`` route needs it as ``Authorization: Bearer``; the previews and media a search
returns carry short-lived signatures instead (an ``<img>`` or ``<audio>`` cannot send a header), so the token
itself never appears in a URL, a log or the browser's history. The page (``/``) holds no data and is served
to anyone who can reach the server; it asks for the token, then for a session cookie standing for it
(HttpOnly, same site only), with which the API's description (``/docs``, ``/openapi.json``, under the token
too) opens in the browser. ``/docs`` works offline: its assets are served from here, not from a CDN.

Errors have one shape: ``{"detail": "one line"}``, validation errors included.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.middleware.trustedhost import TrustedHostMiddleware

from xsearch.capture import describe
from xsearch.errors import ItemNotFound, QueryError, UsageError, XsearchError
from xsearch.modalities import Modality, Preview
from xsearch.moments import split_item_time
from xsearch.objects import is_object_uri
from xsearch.options import SearchOptions, item_key, served_glob
from xsearch.paths import modality_of_path
from xsearch.server.objects import object_response
from xsearch.sources import indexed_descriptor
from xsearch.thumbnails import text_excerpt

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
FIELDS_BYTES = 8 << 20  # a request's texts and other fields, above its uploads
BODY_SECONDS = 120.0  # a request body must arrive within this (a slow client cannot hold a worker for ever)
MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "xsearch_session"
SIGNATURE_SECONDS = 3600  # how long a preview or media URL from a search stays valid
SESSION_SECONDS = 12 * 3600  # how long the page's session cookie stands for the token
MAX_INPUTS = 16  # files, texts and items in one search: each file is decoded and encoded while others wait
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


def check_token(token: str | None) -> None:
    """A token must be hard to guess: at least 16 characters (``UsageError`` otherwise)."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(
            f"a token of {len(token)} characters is easy to guess; use at least {MIN_TOKEN_LENGTH} "
            '(python -c "import secrets; print(secrets.token_urlsafe())")',
            argument="token",
        )


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
        openapi_url=None,  # served below, under the token when there is one
    )
    signer = _Signer(token)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.add_middleware(_Guard, max_body=max_upload_bytes + FIELDS_BYTES, seconds=body_seconds)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    def authorised(request: Request) -> None:
        """The token as a bearer header, or the session cookie the page gets for it (``/api/session``)."""
        if token is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if secrets.compare_digest(given.encode(), token.encode()):
            return
        if signer.valid_session(request.cookies.get(SESSION_COOKIE, "")):
            return
        raise HTTPException(401, "a valid token is required", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    def item_row(item_id: str) -> dict:
        """The stored row of an item named by its numeric id; anything else (a path, ``..``) is 404."""
        key = item_key(item_id)
        if not isinstance(key, int) or key >= 2**63:
            raise HTTPException(404, f"no item {item_id}")
        with _http_errors():
            return collection.item(key, [*ITEM_COLUMNS, "thumbnail"])

    def signed_item(item_id: str, kind: str, request: Request) -> dict:
        """A preview or media request: signed by a search's answer, or with the token itself."""
        if token is not None and not signer.valid(item_id, kind, request.query_params):
            authorised(request)
        return item_row(item_id)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("xsearch.server").joinpath("page.html").read_text(encoding="utf-8")

    docs_assets = _docs_assets()
    if docs_assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")

    @app.post("/api/session", dependencies=guarded, include_in_schema=False)
    def session() -> Response:
        """A cookie standing for the token (HttpOnly, same site only, for ``SESSION_SECONDS``), so that a
        browser can open ``/docs``."""
        answer = Response(status_code=204)
        if token is not None:
            cookie = signer.session()
            answer.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, samesite="strict")
        return answer

    @app.delete("/api/session", dependencies=guarded, include_in_schema=False)
    def end_sessions() -> Response:
        """Revoke every session cookie handed out so far (a restart does too)."""
        signer.revoke_sessions()
        answer = Response(status_code=204)
        answer.delete_cookie(SESSION_COOKIE)
        return answer

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    def openapi() -> dict:
        return app.openapi()

    @app.get("/docs", response_class=HTMLResponse, dependencies=guarded, include_in_schema=False)
    def docs() -> HTMLResponse:
        if docs_assets is None:
            raise HTTPException(404, "the API page needs the fastapi-offline package (pip install fastapi-offline)")
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="xsearch API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.post("/api/search", dependencies=guarded)
    def search(
        request: Request,
        files: Annotated[list[UploadFile], File(description="Query files, any modality (repeatable).")] = (),
        file_modality: Annotated[
            list[str], Form(description="Per file: its modality, or empty to infer it from the file.")
        ] = (),
        file_weight: Annotated[list[float], Form(description="Per file: its weight (default 1).")] = (),
        text: Annotated[list[str], Form(description="Query texts (repeatable).")] = (),
        text_weight: Annotated[list[float], Form(description="Per text: its weight (default 1).")] = (),
        item: Annotated[
            list[str], Form(description="Stored items by id or path, or ID@SECONDS for a moment (repeatable).")
        ] = (),
        item_weight: Annotated[list[float], Form(description="Per item: its weight (default 1).")] = (),
        target: Annotated[str, Form(description="Modalities to search: image,audio,... or all.")] = "all",
        k: Annotated[int, Form(ge=1, le=1000, description="Number of results.")] = SearchOptions.k,
        where: Annotated[str | None, Form(description="Lance SQL filter on items.")] = None,
        path: Annotated[str | None, Form(description="Glob on the file path.")] = None,
        min_score: Annotated[float | None, Form(description="Drop hits below this raw cosine.")] = None,
        min_calibrated: Annotated[float | None, Form(description="Drop hits below this calibrated score.")] = None,
        autocut: Annotated[int | None, Form(ge=1, description="Keep the hits before the N-th jump.")] = None,
        dedup: Annotated[bool, Form(description="Identical files come back once.")] = SearchOptions.dedup,
        exclude_query_items: Annotated[
            bool, Form(description="Leave out the stored items of the query (they lead otherwise).")
        ] = SearchOptions.exclude_query_items,
        moments: Annotated[
            bool, Form(description="Find moments of audio and video (indexed with --moments).")
        ] = SearchOptions.moments,
        per_file: Annotated[int | None, Form(ge=1, le=1000, description="Moments per file (default 1).")] = None,
        near: Annotated[str | None, Form(description="LAT,LON,KM: files taken within KM of that place.")] = None,
        sort: Annotated[
            str, Form(description="relevance, date or -date: the order of the hits the cut-offs keep.")
        ] = SearchOptions.sort,
    ) -> JSONResponse:
        """Search with any mix of uploaded files, texts and stored items, each with a weight."""
        from xsearch.query import Query

        _require_form(request)
        if not (files or text or item):
            raise HTTPException(422, "give at least one input: files, text or item")
        if len(files) + len(text) + len(item) > MAX_INPUTS:
            raise HTTPException(422, f"at most {MAX_INPUTS} inputs (files, texts and items) in one search")
        with _http_errors():
            options = SearchOptions(
                target=target,
                k=k,
                where=where,
                path=served_glob(path),
                min_score=min_score,
                min_calibrated=min_calibrated,
                autocut=autocut,
                dedup=dedup,
                exclude_query_items=exclude_query_items,
                moments=moments,
                per_file=per_file,
                near=near or None,
                sort=sort,
            )
        with tempfile.TemporaryDirectory(prefix="xsearch-upload-") if files else contextlib.nullcontext() as scratch:
            parts, uploads = [], {}
            for i, upload in enumerate(files):
                saved = _save_upload(upload, Path(scratch) / f"{i}", max_upload_bytes)
                uploads[str(saved)] = upload.filename or "upload"
                named = file_modality[i] if i < len(file_modality) and file_modality[i] else None
                modality = _modality(named, saved, upload.filename)
                parts.append(Query.file(saved, modality, _weight(file_weight, i)))
            parts += [Query.text(t, _weight(text_weight, i)) for i, t in enumerate(text)]
            for i, value in enumerate(item):
                key, at = split_item_time(value)
                parts.append(Query.item(key, _weight(item_weight, i), at=at))
            query = Query.sum(parts)
            with _http_errors(uploads=uploads):
                results = collection.search(query, options)
        out = results.as_json()
        for term in out["query"]:  # the client's own file names, not our temporary copies
            if term["kind"] == "file":
                term["value"] = uploads.get(term["value"], term["value"])
        for hit, result in zip(out["results"], results):
            hit["thumbnail_url"] = signer.url(hit["id"], "thumbnail")
            hit["media_url"] = signer.url(hit["id"], "media") + result.fragment  # players start at a moment
            hit["captured"] = describe(result.metadata)  # the line the page shows: worded in one place
            if Modality(hit["modality"]).spec.preview is Preview.TEXT:
                hit["excerpt"] = text_excerpt(hit["uri"], indexed=result.indexed)
        return JSONResponse(out)  # plain JSON types already: FastAPI's encoder would walk them again

    @app.get("/api/items/{item_id}", dependencies=guarded)
    def item_metadata(item_id: str) -> dict:
        """An item's stored metadata (no embedding)."""
        row = item_row(item_id)
        row.pop("thumbnail")
        return row

    @app.get("/api/items/{item_id}/thumbnail", response_class=Response)
    def item_thumbnail(item_id: str, request: Request) -> Response:
        """The preview made at index time (JPEG): picture, video frame, map, waveform or IMU plot."""
        thumbnail = signed_item(item_id, "thumbnail", request)["thumbnail"]
        if not thumbnail:
            raise HTTPException(404, f"item {item_id} has no preview")
        return Response(thumbnail, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/items/{item_id}/media")
    def item_media(item_id: str, request: Request) -> FileResponse:
        """The original file, with HTTP Range support (players seek), if it is still the file indexed."""
        row = signed_item(item_id, "media", request)
        if is_object_uri(row["uri"]):
            return object_response(row, request.headers.get("range"))
        handle = _open_indexed(row)
        if handle is None:
            raise HTTPException(404, f"the file of item {item_id} is gone or changed since it was indexed")
        # Served through the descriptor just checked: a file swapped for another (a link to a private key,
        # say) after the check is not what goes out.
        return FileResponse(
            f"/proc/self/fd/{handle}",
            filename=os.path.basename(row["uri"]),
            content_disposition_type="inline",
            background=BackgroundTask(os.close, handle),
        )

    @app.get("/api/info", dependencies=guarded)
    def info() -> dict:
        """Counts per modality, model (and whether its weights are a random trial), precision, index
        freshness, errors, size; ``modalities``: every modality a query file may be named, the database's own
        (``xsearch bind``) included."""
        with _http_errors():
            facts = collection.info(check=False)  # per request: counts, not a scan of every row
            known = [m.value for m in Modality]
        return {**facts, "random_weights": collection.random_weights, "modalities": known}

    @app.post("/api/classify", dependencies=guarded)
    def classify(
        request: Request,
        labels: Annotated[str, Form(description='Comma-separated labels, e.g. "dog,cat,rain".')],
        target: Annotated[str, Form()] = "all",
        where: Annotated[str | None, Form()] = None,
        min_confidence: Annotated[float | None, Form()] = None,
    ) -> list[dict]:
        """Zero-shot: each item's best label and its probability."""
        _require_form(request)
        with _http_errors():
            labelled = collection.classify(labels.split(","), target=target, where=where, min_confidence=min_confidence)
        return labelled.as_json()

    return app


class _Signer:
    """Short-lived signed URLs for previews and media, so that a token never travels in a URL: an HMAC of
    the item, the kind and an expiry time, keyed by the token (no token: plain URLs)."""

    def __init__(self, token: str | None):
        self.key = hashlib.sha256(token.encode()).digest() if token else None
        self._sessions = secrets.token_bytes(16)  # new per server: a restart or ``revoke_sessions`` ends them

    def _signature(self, item_id, kind: str, expires: int) -> str:
        message = f"{item_id}:{kind}:{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def url(self, item_id: int, kind: str) -> str:
        url = f"/api/items/{item_id}/{kind}"
        if self.key is None:
            return url
        expires = int(time.time()) + SIGNATURE_SECONDS
        return f"{url}?expires={expires}&signature={self._signature(item_id, kind, expires)}"

    def session(self, expires: int | None = None) -> str:
        """A session cookie's value: its expiry and an HMAC of it under the token and this server's session
        key (useless elsewhere, after ``SESSION_SECONDS``, or once revoked)."""
        expires = int(time.time()) + SESSION_SECONDS if expires is None else expires
        return f"{expires}.{hmac.new(self.key, self._sessions + str(expires).encode(), hashlib.sha256).hexdigest()}"

    def valid_session(self, value: str) -> bool:
        expires, _, _ = value.partition(".")
        if self.key is None or not value.isascii() or not expires.isdigit() or len(expires) > 12:
            return False
        return int(expires) >= time.time() and hmac.compare_digest(value, self.session(int(expires)))

    def revoke_sessions(self) -> None:
        self._sessions = secrets.token_bytes(16)

    def valid(self, item_id: str, kind: str, query) -> bool:
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            return False
        if expires < time.time():
            return False
        given = query.get("signature", "")
        if not given.isascii():  # compare_digest refuses non-ASCII text (a TypeError, which was a 500)
            return False
        return hmac.compare_digest(given, self._signature(item_id, kind, expires))


class _Guard:
    """Every request, before FastAPI reads it: a body larger than ``max_body`` is refused from its
    Content-Length, or as soon as it streams past it (413), a body slower than ``seconds`` is cut (408), and,
    a cross-origin POST (any web page the user opens could send one; ``Origin: null`` is a sandboxed frame's or
    a ``file:`` page's) is refused (403)."""

    def __init__(self, app, max_body: int, seconds: float):
        self.app, self.max_body, self.seconds = app, max_body, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        deadline = time.monotonic() + self.seconds
        received, complete, refused, told = 0, False, None, False

        async def bounded_receive():
            nonlocal received, complete, refused
            if complete:  # the body is in: later calls wait for a disconnect, for as long as a response takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                refused = (408, f"the request body did not arrive within {self.seconds:g} s")
                raise _Refused from None
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if received > self.max_body:
                refused = (413, self._too_large())
                raise _Refused
            return message

        async def tell():
            nonlocal told
            if not told:
                told = True
                await JSONResponse({"detail": refused[1]}, status_code=refused[0])(scope, receive, send)

        async def answer(message):
            # Whatever the app makes of a body cut short (FastAPI: "error parsing the body"), the client is
            # told why it was cut.
            if refused is None:
                return await send(message)
            if message["type"] == "http.response.start":
                await tell()

        try:
            await self.app(scope, bounded_receive, answer)
        except _Refused:
            await tell()

    def _too_large(self) -> str:
        uploads = (self.max_body - FIELDS_BYTES) / (1 << 20)
        return f"the request is larger than {uploads:g} MB of uploads and {FIELDS_BYTES >> 20} MB of fields"

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str] | None:
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self.max_body:
            return 413, self._too_large()
        origin = headers.get("origin")
        if scope["method"] in ("POST", "DELETE") and origin is not None:
            if origin == "null" or origin.split("://", 1)[-1] != headers.get("host", ""):
                return 403, "cross-origin requests are refused"
        return None


class _Refused(Exception):
    """A request body cut short by ``_Guard`` (the reason is the guard's)."""


def _open_indexed(row: dict) -> int | None:
    """A descriptor of the item's file if it is still the file indexed (``indexed_descriptor``)."""
    return indexed_descriptor(row["uri"], row["size"], row["mtime"])


def _docs_assets() -> str | None:
    """Swagger UI's files, packaged by fastapi-offline, so ``/docs`` needs no CDN."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    return os.path.join(os.path.dirname(fastapi_offline.__file__), "static")


def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in the API's one shape: ``{"detail": "field: problem; ..."}``."""
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path"))
        problems.append(f"{where}: {problem.get('msg', 'invalid')}" if where else problem.get("msg", "invalid"))
    return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)


def _require_form(request: Request) -> None:
    """A body that is not a form (JSON, say) would read as an empty form: say what to send instead."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in FORM_TYPES and (kind or request.headers.get("content-length", "0") != "0"):
        raise HTTPException(415, f"send multipart/form-data (or a url-encoded form), not {kind or 'no body type'}")


def _weight(weights: list[float], index: int) -> float:
    return float(weights[index]) if index < len(weights) else 1.0


def _modality(named: str | None, saved: Path, filename: str | None) -> Modality:
    """The modality the client named, else what the indexer's rules make of the upload, saved under its
    name's suffix (the extension, or the first bytes of a file without one)."""
    try:
        if named:
            return Modality(named)
    except UsageError as exc:
        raise HTTPException(400, str(exc)) from None
    found = modality_of_path(saved)
    if found is None:
        raise HTTPException(400, f"{filename}: unknown file type (name its modality)")
    return found


def _save_upload(upload: UploadFile, path: Path, limit: int) -> Path:
    """Copy an upload to ``path`` + its suffix (decoders and the rules look at it), refusing more than
    ``limit`` bytes with 413."""
    target = path.with_name(path.name + Path(upload.filename or "").suffix.lower())
    written = 0
    with open(target, "wb") as out:
        while chunk := upload.file.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise HTTPException(413, f"{upload.filename}: larger than {limit // (1 << 20)} MB")
            out.write(chunk)
    return target


@contextlib.contextmanager
def _http_errors(uploads: dict[str, str] | None = None):
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
