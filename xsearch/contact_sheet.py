"""A self-contained HTML contact sheet of a search: the query inputs and the results, with previews.

Previews are small and chosen by each modality's ``preview`` in the modality table: stored thumbnails
(made at index time, or while a query input was decoded for the model) for images, video and
depth/thermal; short 16 kHz mono WAV excerpts for audio players; the first lines of text files. Everything
is inlined as data URIs, so the page can be mailed or archived; no original file is read whole into it.
The page is drawn from a ``Results`` alone: it runs no query and decodes no input for the model again.
"""

from __future__ import annotations

import base64
import html
import io
import os
import wave

import numpy as np

from xsearch.errors import DecodeError
from xsearch.modalities import Modality, Preview
from xsearch.query import QueryInput, Results, TextTerm

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


def _text_preview(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(TEXT_PREVIEW_CHARS)
    except OSError:
        return ""


def _preview(modality: Modality | None, path: str | None, thumbnail: bytes | None) -> str:
    """The HTML for one card's preview, as the modality table says the modality is shown."""
    kind = modality.spec.preview if modality is not None else None
    exists = path is not None and os.path.exists(path)
    if kind is Preview.THUMBNAIL and thumbnail:
        return f'<img alt="{html.escape(modality.value)}" src="{_data_uri("image/jpeg", thumbnail)}">'
    if kind is Preview.AUDIO and exists:
        try:
            return f'<audio controls src="{_data_uri("audio/wav", audio_preview(path))}"></audio>'
        except DecodeError:
            pass
    if kind is Preview.TEXT and exists:
        return f"<pre>{html.escape(_text_preview(path))}</pre>"
    if kind is Preview.LABEL:
        return f'<div class="missing">{html.escape(modality.spec.help or modality.value)}</div>'
    return '<div class="missing">no preview (file missing or unreadable)</div>'


def _card(preview: str, lines: list[str]) -> str:
    meta = "<br>".join(lines)
    return f'<div class="card">{preview}<div class="meta">{meta}</div></div>'


def _input_card(given: QueryInput) -> str:
    """A query input as the engine embedded it: its own description, and a preview of what it was."""
    term = given.term
    described = term.describe()
    head = f"{html.escape(str(given.modality or term.kind))} {html.escape(term.kind)}, weight {term.weight:g}"
    if isinstance(term, TextTerm):
        return _card(f"<pre>{html.escape(term.text)}</pre>", [head])
    if given.modality is None:  # a raw vector: nothing to show but its description
        return _card('<div class="missing">vector</div>', [head, html.escape(str(described["value"]))])
    return _card(_preview(given.modality, given.uri, given.thumbnail), [head, html.escape(str(described["value"]))])


def render(results: Results, database: str = "") -> str:
    """The page as a string."""
    thumbnails = results.thumbnails()
    query_cards = "".join(_input_card(given) for given in results.inputs)
    result_cards = []
    for r in results:
        lines = [
            f'#{r.rank} <span class="score">{r.score:.3f}</span> {html.escape(r.modality.value)}',
            html.escape(r.uri),
        ]
        result_cards.append(_card(_preview(r.modality, r.uri, thumbnails.get(r.id)), lines))
    targets = ", ".join(t.value for t in results.targets) or "all"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>xsearch results</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>xsearch: {len(results)} results</h1><div class='meta'>database {html.escape(str(database))}, "
        f"targets: {html.escape(targets)}</div>"
        f"<h2>Query</h2><div class='grid' id='query'>{query_cards}</div>"
        f"<h2>Results</h2><div class='grid' id='results'>{''.join(result_cards)}</div>"
        "</body></html>"
    )


def write_contact_sheet(results: Results, path: str | os.PathLike, database: str = "") -> str:
    """Write the page to ``path`` atomically; returns the path."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(render(results, database))
    os.replace(tmp, path)
    return path
