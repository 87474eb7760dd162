"""A self-contained HTML contact sheet of a search: the query inputs and the results, with previews.

Previews are small: stored thumbnails (made at index time) for images, video and depth/thermal; short
16 kHz mono WAV excerpts for audio players; the first lines of text files. Everything is inlined as data
URIs, so the page can be mailed or archived; no original file is read whole into it.
"""

from __future__ import annotations

import base64
import html
import io
import os
import wave

import numpy as np

from xsearch.errors import DecodeError
from xsearch.query import Results, Term, item_where
from xsearch.store import in_list

AUDIO_PREVIEW_SECONDS = 8.0
AUDIO_PREVIEW_RATE = 16000
TEXT_PREVIEW_CHARS = 300

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; width: 208px; }
.card img { display: block; max-width: 192px; max-height: 192px; margin: 0 auto 6px; }
.card audio { width: 192px; } .card pre { white-space: pre-wrap; font-size: 12px; max-height: 150px;
  overflow: hidden; margin: 0 0 6px; }
.meta { font-size: 12px; color: #555; word-break: break-all; } .score { font-weight: 600; color: #0a5; }
.missing { font-size: 12px; color: #a00; height: 60px; }
"""


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def audio_preview(path: str, seconds: float = AUDIO_PREVIEW_SECONDS) -> bytes:
    """The first ``seconds`` of an audio (or video) file as a small 16 kHz mono 16-bit WAV."""
    import av

    from xsearch.preprocess._av import open_container

    samples = []
    wanted = int(seconds * AUDIO_PREVIEW_RATE)
    with open_container(path) as container:
        if not container.streams.audio:
            raise DecodeError(path, "no audio stream")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_PREVIEW_RATE)
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                samples.append(out.to_ndarray().reshape(-1))
            if sum(len(s) for s in samples) >= wanted:
                break
    pcm = np.concatenate(samples)[:wanted] if samples else np.zeros(0, np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_PREVIEW_RATE)
        out.writeframes(pcm.astype(np.int16).tobytes())
    return buffer.getvalue()


def file_thumbnail(path: str, modality: str) -> bytes | None:
    """A thumbnail made on demand (query inputs, items indexed without one)."""
    from xsearch.preprocess import preprocess_with_metadata

    try:
        return preprocess_with_metadata(path, modality).metadata.get("thumbnail")
    except DecodeError:
        return None


def _text_preview(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(TEXT_PREVIEW_CHARS)
    except OSError:
        return ""


def _preview(path: str | None, modality: str, thumbnail: bytes | None, text: str | None = None) -> str:
    """The HTML for one card's preview."""
    if text is not None:
        return f"<pre>{html.escape(text)}</pre>"
    if modality in ("image", "video", "depth", "thermal"):
        thumbnail = thumbnail or (file_thumbnail(path, modality) if path and os.path.exists(path) else None)
        if thumbnail:
            return f'<img alt="{html.escape(modality)}" src="{_data_uri("image/jpeg", thumbnail)}">'
    if modality == "audio" and path and os.path.exists(path):
        try:
            return f'<audio controls src="{_data_uri("audio/wav", audio_preview(path))}"></audio>'
        except DecodeError:
            pass
    if modality == "text" and path and os.path.exists(path):
        return f"<pre>{html.escape(_text_preview(path))}</pre>"
    if modality == "imu":
        return '<div class="missing">IMU recording</div>'
    return '<div class="missing">no preview (file missing or unreadable)</div>'


def _card(preview: str, lines: list[str]) -> str:
    meta = "<br>".join(lines)
    return f'<div class="card">{preview}<div class="meta">{meta}</div></div>'


def _item_card(term: Term, store) -> str:
    rows = store.scan(["uri", "modality", "thumbnail"], item_where(term.value)).to_pylist()
    lines = [f"stored item, weight {term.weight:g}", html.escape(str(term.value))]
    if not rows:
        return _card('<div class="missing">not in the database</div>', lines)
    row = rows[0]
    return _card(_preview(row["uri"], row["modality"], row["thumbnail"]), lines)


def _term_card(term: Term, store) -> str:
    if term.kind == "item":
        return _item_card(term, store)
    weight = f"weight {term.weight:g}"
    if term.kind == "text":
        return _card(_preview(None, "text", None, text=str(term.value)), [f"text, {weight}"])
    if term.kind == "file":
        name = html.escape(str(term.value))
        return _card(_preview(str(term.value), term.modality.value, None), [f"{term.modality.value}, {weight}", name])
    return _card('<div class="missing"></div>', [f"vector {html.escape(str(term.describe()['value']))}", weight])


def render(results: Results, store) -> str:
    """The page as a string."""
    ids = [r.id for r in results]
    thumbs = {}
    if ids:
        table = store.scan(["id", "thumbnail"], in_list("id", ids))
        thumbs = dict(zip(table["id"].to_pylist(), table["thumbnail"].to_pylist()))
    query_cards = "".join(_term_card(t, store) for t in results.query.terms) if results.query else ""
    result_cards = []
    for r in results:
        lines = [f'#{r.rank} <span class="score">{r.score:.3f}</span> {html.escape(r.modality)}', html.escape(r.uri)]
        result_cards.append(_card(_preview(r.uri, r.modality, thumbs.get(r.id)), lines))
    targets = ", ".join(results.targets) or "all"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>xsearch results</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>xsearch: {len(results)} results</h1><div class='meta'>database {html.escape(str(store.path))}, "
        f"targets: {html.escape(targets)}</div>"
        f"<h2>Query</h2><div class='grid' id='query'>{query_cards}</div>"
        f"<h2>Results</h2><div class='grid' id='results'>{''.join(result_cards)}</div>"
        "</body></html>"
    )


def write_contact_sheet(results: Results, store, path: str | os.PathLike) -> str:
    """Write the page to ``path`` atomically; returns the path."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(render(results, store))
    os.replace(tmp, path)
    return path
