"""``xsearch serve``: a warm search service over one collection, with a JSON API and a browser page.

One process holds the model (each tower loaded when first needed) and the indices; a new commit by a
concurrent ``xsearch index`` is seen at the next request (the engine checks the store's version). Requests
run in FastAPI's thread pool, off the event loop; one lock serialises the model, so concurrent searches
never interleave inside it.

Security: media are served by item id only (never by a path from the client), and only regular files; a
token, when configured, is required on every route (``Authorization: Bearer``, or ``?token=`` for the
``<img>`` and ``<audio>`` URLs the page builds).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response

from xsearch.errors import ItemNotFound, QueryError, UsageError, XsearchError
from xsearch.modalities import Modality
from xsearch.options import SearchOptions, item_key
from xsearch.paths import is_regular_file, modality_of_path

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
ITEM_COLUMNS = ["id", "uri", "modality", "sha256", "size", "width", "height", "duration", "sample_rate", "precision"]


def create_app(collection, token: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The application over ``collection`` (a ``Collection``). ``token``: required on every route."""
    app = FastAPI(
        title="xsearch",
        summary="Cross-modal search: any mix of files, text and stored items, weighted, against any modality.",
    )
    lock = threading.Lock()

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or request.query_params.get("token", "")
        if not secrets.compare_digest(given, token):
            raise HTTPException(401, "a valid token is required", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    def item_row(item_id: str) -> dict:
        """The stored row of an item named by its numeric id; anything else (a path, ``..``) is 404."""
        key = item_key(item_id)
        if not isinstance(key, int):
            raise HTTPException(404, f"no item {item_id}")
        with _http_errors():
            return collection.item(key, [*ITEM_COLUMNS, "thumbnail"])

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("xsearch.server").joinpath("page.html").read_text(encoding="utf-8")

    @app.post("/api/search", dependencies=guarded)
    def search(
        files: Annotated[list[UploadFile], File(description="Query files, any modality (repeatable).")] = (),
        file_modality: Annotated[
            list[str], Form(description="Per file: its modality, or empty to infer it from the file.")
        ] = (),
        file_weight: Annotated[list[float], Form(description="Per file: its weight (default 1).")] = (),
        text: Annotated[list[str], Form(description="Query texts (repeatable).")] = (),
        text_weight: Annotated[list[float], Form(description="Per text: its weight (default 1).")] = (),
        item: Annotated[list[str], Form(description="Stored items by id or path (repeatable).")] = (),
        item_weight: Annotated[list[float], Form(description="Per item: its weight (default 1).")] = (),
        target: Annotated[str, Form(description="Modalities to search: image,audio,... or all.")] = "all",
        k: Annotated[int, Form(ge=1, le=1000, description="Number of results.")] = SearchOptions.k,
        where: Annotated[str | None, Form(description="Lance SQL filter on items.")] = None,
        path: Annotated[str | None, Form(description="Glob on the file path.")] = None,
        min_score: Annotated[float | None, Form(description="Drop hits below this raw cosine.")] = None,
        min_calibrated: Annotated[float | None, Form(description="Drop hits below this calibrated score.")] = None,
        autocut: Annotated[int | None, Form(ge=1, description="Keep the hits before the N-th jump.")] = None,
        dedup: Annotated[bool, Form(description="Identical files come back once.")] = SearchOptions.dedup,
    ) -> dict:
        """Search with any mix of uploaded files, texts and stored items, each with a weight."""
        from xsearch.query import Query

        if not (files or text or item):
            raise HTTPException(422, "give at least one input: files, text or item")
        with _http_errors():
            options = SearchOptions(
                target=target,
                k=k,
                where=where,
                path=path,
                min_score=min_score,
                min_calibrated=min_calibrated,
                autocut=autocut,
                dedup=dedup,
            )
        with tempfile.TemporaryDirectory(prefix="xsearch-upload-") as scratch:
            parts, uploads = [], {}
            for i, upload in enumerate(files):
                saved = _save_upload(upload, Path(scratch) / f"{i}", max_upload_bytes)
                uploads[str(saved)] = upload.filename or "upload"
                named = file_modality[i] if i < len(file_modality) and file_modality[i] else None
                modality = _modality(named, saved, upload.filename)
                parts.append(Query.file(saved, modality, _weight(file_weight, i)))
            parts += [Query.text(t, _weight(text_weight, i)) for i, t in enumerate(text)]
            parts += [Query.item(v, _weight(item_weight, i)) for i, v in enumerate(item)]
            query = Query.sum(parts)
            # The model is one: searches that embed take turns; stored-item searches run side by side.
            with lock if query.needs_model else contextlib.nullcontext(), _http_errors(uploads=uploads):
                results = collection.search(query, options)
        out = results.as_json()
        for hit in out["results"]:
            hit["thumbnail_url"] = f"/api/items/{hit['id']}/thumbnail"
            hit["media_url"] = f"/api/items/{hit['id']}/media"
        return out

    @app.get("/api/items/{item_id}", dependencies=guarded)
    def item_metadata(item_id: str) -> dict:
        """An item's stored metadata (no embedding)."""
        row = item_row(item_id)
        row.pop("thumbnail")
        return row

    @app.get("/api/items/{item_id}/thumbnail", dependencies=guarded, response_class=Response)
    def item_thumbnail(item_id: str) -> Response:
        """The preview made at index time (JPEG): picture, video frame, map, waveform or IMU plot."""
        thumbnail = item_row(item_id)["thumbnail"]
        if not thumbnail:
            raise HTTPException(404, f"item {item_id} has no preview")
        return Response(thumbnail, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/items/{item_id}/media", dependencies=guarded)
    def item_media(item_id: str) -> FileResponse:
        """The original file, with HTTP Range support (players seek)."""
        uri = item_row(item_id)["uri"]
        if not is_regular_file(uri):  # gone, or replaced by a pipe or device that would block
            raise HTTPException(404, f"the file of item {item_id} is not readable")
        return FileResponse(uri, filename=os.path.basename(uri), content_disposition_type="inline")

    @app.get("/api/info", dependencies=guarded)
    def info() -> dict:
        """Counts per modality, model, precision, index freshness, errors, size."""
        with _http_errors():
            return collection.info(check=False)  # per request: counts, not a scan of every row

    @app.post("/api/classify", dependencies=guarded)
    def classify(
        labels: Annotated[str, Form(description='Comma-separated labels, e.g. "dog,cat,rain".')],
        target: Annotated[str, Form()] = "all",
        where: Annotated[str | None, Form()] = None,
        min_confidence: Annotated[float | None, Form()] = None,
    ) -> list[dict]:
        """Zero-shot: each item's best label and its probability."""
        with lock, _http_errors():
            labelled = collection.classify(labels.split(","), target=target, where=where, min_confidence=min_confidence)
        return labelled.as_json()

    return app


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
