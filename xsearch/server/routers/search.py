"""Searches with any mix of uploaded files, texts and stored items, each weighted; zero-shot labels.

Uploads are saved under a temporary folder (the decoders and the modality rules read files), decoded in
the collection's supervised worker, and removed with the folder when the answer is made.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

from xsearch.capture import describe
from xsearch.errors import UsageError
from xsearch.modalities import Modality, Preview
from xsearch.moments import split_item_time
from xsearch.options import ClassifyOptions, SearchOptions
from xsearch.paths import modality_of_path
from xsearch.server.dependencies import GUARDED, http_errors, require_form, served
from xsearch.server.forms import options_form
from xsearch.server.security import MAX_INPUTS
from xsearch.thumbnails import text_excerpt

router = APIRouter()


@router.post("/api/search", dependencies=GUARDED)
def search(
    request: Request,
    options: Annotated[SearchOptions, Depends(options_form(SearchOptions))],
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
) -> JSONResponse:
    """Search with any mix of uploaded files, texts and stored items, each with a weight."""
    require_form(request)
    if not (files or text or item):
        raise HTTPException(422, "give at least one input: files, text or item")
    if len(files) + len(text) + len(item) > MAX_INPUTS:
        raise HTTPException(422, f"at most {MAX_INPUTS} inputs (files, texts and items) in one search")
    serving = served(request)
    with tempfile.TemporaryDirectory(prefix="xsearch-upload-") if files else contextlib.nullcontext() as scratch:
        parts, uploads = _file_terms(files, file_modality, file_weight, scratch, serving.max_upload_bytes)
        query = _query(parts, text, text_weight, item, item_weight)
        with http_errors(uploads=uploads):
            results = serving.collection.search(query, options)
    return JSONResponse(_answer(results, uploads, serving.signer))  # plain JSON types: no second encoding


@router.post("/api/classify", dependencies=GUARDED)
def classify(
    request: Request,
    labels: Annotated[str, Form(description='Comma-separated labels, e.g. "dog,cat,rain".')],
    options: Annotated[ClassifyOptions, Depends(options_form(ClassifyOptions))],
) -> list[dict]:
    """Zero-shot: each item's best label and its probability."""
    require_form(request)
    with http_errors():
        labelled = served(request).collection.classify(labels.split(","), options)
    return labelled.as_json()


def _file_terms(files: list[UploadFile], named: list[str], weights: list[float], scratch: str, limit: int):
    """Each upload saved under ``scratch`` as a query term of its modality and weight; and each saved copy's
    path -> the client's file name (for answers and messages)."""
    from xsearch.query import Query

    parts, uploads = [], {}
    for i, upload in enumerate(files):
        saved = _save_upload(upload, Path(scratch) / f"{i}", limit)
        uploads[str(saved)] = upload.filename or "upload"
        modality = _modality(named[i] if i < len(named) and named[i] else None, saved, upload.filename)
        parts.append(Query.file(saved, modality, _weight(weights, i)))
    return parts, uploads


def _query(parts: list, texts: list[str], text_weights, items: list[str], item_weights):
    """The uploads' terms, then the texts', then the stored items' (``ID@SECONDS``: a moment), summed."""
    from xsearch.query import Query

    parts = parts + [Query.text(t, _weight(text_weights, i)) for i, t in enumerate(texts)]
    for i, value in enumerate(items):
        key, at = split_item_time(value)
        parts.append(Query.item(key, _weight(item_weights, i), at=at))
    return Query.sum(parts)


def _answer(results, uploads: dict[str, str], signer) -> dict:
    """The results as JSON, with the client's own file names, signed preview and media URLs, the capture
    line the page shows and a text hit's excerpt."""
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
    return out


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
