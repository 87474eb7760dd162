"""Stored items by id: metadata, the preview made at index time, the original file (only while it is the
file indexed, and only a regular file; never by a path from the client); and the collection's facts."""

from __future__ import annotations

import os

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from xsearch.modalities import Modality
from xsearch.objects import is_object_uri
from xsearch.server.dependencies import GUARDED, http_errors, item_row, served, signed_item
from xsearch.server.objects import object_response
from xsearch.sources import indexed_descriptor

router = APIRouter()


@router.get("/api/items/{item_id}", dependencies=GUARDED)
def item_metadata(item_id: str, request: Request) -> dict:
    """An item's stored metadata (no embedding)."""
    row = item_row(request, item_id)
    row.pop("thumbnail")
    return row


@router.get("/api/items/{item_id}/thumbnail", response_class=Response)
def item_thumbnail(item_id: str, request: Request) -> Response:
    """The preview made at index time (JPEG): picture, video frame, map, waveform or IMU plot."""
    thumbnail = signed_item(request, item_id, "thumbnail")["thumbnail"]
    if not thumbnail:
        raise HTTPException(404, f"item {item_id} has no preview")
    return Response(thumbnail, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/items/{item_id}/media")
def item_media(item_id: str, request: Request) -> FileResponse:
    """The original file, with HTTP Range support (players seek), if it is still the file indexed."""
    row = signed_item(request, item_id, "media")
    if is_object_uri(row["uri"]):
        return object_response(row, request.headers.get("range"))
    handle = indexed_descriptor(row["uri"], row["size"], row["mtime"])
    if handle is None:
        raise HTTPException(404, f"the file of item {item_id} is gone or changed since it was indexed")
    # Served through the descriptor just checked: a file swapped for another (a link to a private key, say)
    # after the check is not what goes out.
    return FileResponse(
        f"/proc/self/fd/{handle}",
        filename=os.path.basename(row["uri"]),
        content_disposition_type="inline",
        background=BackgroundTask(os.close, handle),
    )


@router.get("/api/info", dependencies=GUARDED)
def info(request: Request) -> dict:
    """Counts per modality, model (and whether its weights are a random trial), precision, index freshness,
    errors, size; ``modalities``: every modality a query file may be named, the database's own (``xsearch
    bind``) included."""
    collection = served(request).collection
    with http_errors():
        facts = collection.info(check=False)  # per request: counts, not a scan of every row
        known = [m.value for m in Modality]
    return {**facts, "random_weights": collection.random_weights, "modalities": known}
