"""Serving an item whose file is an object (``s3://...``): streamed through the server with HTTP Range
support, under the same signed-URL rules as a local file. The bucket need not be reachable by the browser,
and no credentials or presigned URLs leave the server."""

from __future__ import annotations

import mimetypes
import re

from fastapi import HTTPException
from fastapi.responses import StreamingResponse

from xsearch.objects import ObjectUri, store_of
from xsearch.sources import media_info

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a single-range ``Range`` header (``None``: the whole object); a range that
    cannot be served is HTTP 416."""
    if not header:
        return None
    found = _RANGE.match(header.strip())
    if not found or found.groups() == ("", ""):
        raise HTTPException(
            416, "only one byte range (bytes=START-END) is served", {"Content-Range": f"bytes */{size}"}
        )
    first, last = found.groups()
    if first == "":  # the last N bytes
        start, stop = max(size - int(last), 0), size
    else:
        start, stop = int(first), min(int(last) + 1, size) if last else size
    if start >= size or start >= stop:
        raise HTTPException(416, "range outside the file", {"Content-Range": f"bytes */{size}"})
    return start, stop


def object_response(row: dict, range_header: str | None) -> StreamingResponse:
    """The object of ``row`` if it is still the one indexed (size and modification time), else 404."""
    import obstore

    uri = row["uri"]
    info = media_info(uri)
    if info is None or info.size != row["size"] or info.mtime != row["mtime"]:
        raise HTTPException(404, f"the file of item {row['id']} is gone or changed since it was indexed")
    wanted = byte_range(range_header, info.size)
    start, stop = wanted or (0, info.size)
    where = ObjectUri.parse(uri)
    options = {"range": (start, stop)} if stop > start else {}
    if info.identity[1]:
        options["if_match"] = info.identity[1]  # the object checked above, not one replaced since
    result = obstore.get(store_of(where), where.key, options=options)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(stop - start),
        "Content-Disposition": f'inline; filename="{where.name}"',
    }
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{info.size}"
    kind = mimetypes.guess_type(where.name)[0] or "application/octet-stream"
    chunks = (bytes(chunk) for chunk in result) if stop > start else iter(())
    return StreamingResponse(chunks, status_code=206 if wanted else 200, headers=headers, media_type=kind)
