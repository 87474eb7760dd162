"""``xsearch index --refresh-metadata``: the capture tags (``xsearch.capture``) of files indexed before they
were read, or whose tags changed without their bytes changing, re-read without decoding or embedding."""

from __future__ import annotations

import logging

from xsearch.capture import CAPTURE_COLUMNS, exif_tags
from xsearch.modalities import Modality
from xsearch.sources import open_media

log = logging.getLogger("xsearch.indexer.pipeline")


def capture_of(path: str, modality: Modality) -> dict | None:
    """The capture columns of one file, every one of them (``None`` for those it lacks: a tag removed is
    removed); ``None`` when the file cannot be read now (left as it is)."""
    try:
        if modality is Modality.IMAGE:
            from PIL import Image

            with open_media(path) as handle, Image.open(handle) as image:  # the header: no pixels decoded
                tags = exif_tags(image)
        elif modality is Modality.VIDEO:
            from xsearch.preprocess.video import capture_tags

            tags = capture_tags(path)
        else:
            return None
    except Exception as exc:  # an unreadable file keeps its row and its tags; the next run reads it again
        log.info("%s: capture tags not read (%s)", path, exc)
        return None
    return {name: tags.get(name) for name in CAPTURE_COLUMNS}


def refresh_capture(store, unchanged: dict[str, Modality]) -> int:
    """Re-read the capture tags of ``unchanged`` files (``{uri: modality}``; pictures and videos) and write
    them in one commit; returns how many files were read."""
    values = {}
    for path, modality in unchanged.items():
        tags = capture_of(path, modality)
        if tags is not None:
            values[path] = tags
    store.update_columns(values)
    return len(values)
