"""A self-contained HTML contact sheet of a search: the query inputs and the results, with previews.

Previews are small and chosen by each modality's ``preview`` in the modality table: stored thumbnails
(made at index time, or while a query input was decoded for the model) for images, video, depth/thermal
maps and IMU plots; a waveform picture and a short 16 kHz mono WAV excerpt for audio; the first lines of
text files. Negative scores and subtracted inputs are marked in red; links to the originals are opt-in. Everything
is inlined as data URIs, so the page can be mailed or archived; no original file is read whole into it.
The page is drawn from a ``Results`` alone: it runs no query and decodes no input for the model again.
"""

from __future__ import annotations

import base64
import html
import io
import os
import wave
from pathlib import Path

import numpy as np

from xsearch.capture import describe
from xsearch.errors import DecodeError
from xsearch.modalities import Modality, Preview
from xsearch.moments import clock, clock_span
from xsearch.paths import is_regular_file
from xsearch.query import QueryInput, Results, TextTerm
from xsearch.query.results import RANDOM_WEIGHTS_NOTE
from xsearch.thumbnails import text_excerpt

AUDIO_PREVIEW_SECONDS = 8.0
AUDIO_PREVIEW_RATE = 16000

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; width: 240px; }
.card.subtracted { border: 2px dashed #c33; }
.card img { display: block; max-width: 192px; max-height: 192px; margin: 0 auto 6px; }
.card audio { display: block; width: 100%; margin: 0 0 6px; }
.card pre { white-space: pre-wrap; font-size: 12px; max-height: 150px; overflow: hidden; margin: 0 0 6px; }
.card a { color: inherit; text-decoration: none; }
.meta { font-size: 12px; color: #555; overflow-wrap: anywhere; }
.score { font-weight: 600; color: #0a5; } .score.negative, .weight.negative { color: #c33; font-weight: 600; }
.label { font-size: 12px; color: #555; background: #f0f0f0; border-radius: 4px; padding: 20px 6px; margin: 0 0 6px;
  text-align: center; }
.missing { font-size: 12px; color: #a00; height: 60px; }
.when { font-weight: 600; color: #222; }
.timeline { position: relative; height: 8px; background: #e4e4ec; border-radius: 4px; margin: 4px 0; }
.timeline span { position: absolute; top: 0; height: 8px; min-width: 3px; background: #36c; border-radius: 4px; }
.timeline span.this { background: #e63; }
.note { background: #fff3cd; border: 1px solid #d8b24a; padding: 6px 10px; font-weight: bold; }
"""


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def audio_preview(path: str, seconds: float = AUDIO_PREVIEW_SECONDS, start: float = 0.0) -> bytes:
    """``seconds`` of an audio (or video) file from ``start`` as a small 16 kHz mono 16-bit WAV."""
    import av

    from xsearch.preprocess.containers import open_container

    samples, skip = [], 0
    wanted = int(seconds * AUDIO_PREVIEW_RATE)
    with open_container(path) as container:
        if not container.streams.audio:
            raise DecodeError(path, "no audio stream")
        stream = container.streams.audio[0]
        if start > 0 and stream.time_base:
            container.seek(int(start / stream.time_base) + (stream.start_time or 0), stream=stream)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_PREVIEW_RATE)
        for frame in container.decode(stream):
            if start > 0 and not samples and frame.pts is not None and stream.time_base:
                at = float((frame.pts - (stream.start_time or 0)) * stream.time_base)  # seeks land before
                skip = max(int((start - at) * AUDIO_PREVIEW_RATE), 0)
            for out in resampler.resample(frame):
                samples.append(out.to_ndarray().reshape(-1))
            if sum(len(s) for s in samples) >= wanted + skip:
                break
    pcm = np.concatenate(samples)[skip : skip + wanted] if samples else np.zeros(0, np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_PREVIEW_RATE)
        out.writeframes(pcm.astype(np.int16).tobytes())
    return buffer.getvalue()


def _img(alt: str, jpeg: bytes) -> str:
    return f'<img alt="{html.escape(alt)}" src="{_data_uri("image/jpeg", jpeg)}">'


def _preview(
    modality: Modality | None,
    path: str | None,
    thumbnail: bytes | None,
    moment: tuple[float, float] | None = None,
    indexed: tuple[int, float] | None = None,
) -> str:
    """The HTML for one card's preview, as the modality table says the modality is shown; for a
    ``moment`` of audio, its own seconds are the excerpt that plays."""
    kind = modality.spec.preview if modality is not None else None
    exists = path is not None and is_regular_file(path)  # a pipe or device in its place would block the read
    if kind is Preview.THUMBNAIL and thumbnail:
        return _img(modality.value, thumbnail)
    if kind is Preview.AUDIO and (exists or thumbnail):
        picture = _img("waveform", thumbnail) if thumbnail else ""
        start, seconds = (moment[0], moment[1] - moment[0]) if moment else (0.0, AUDIO_PREVIEW_SECONDS)
        try:
            excerpt = audio_preview(path, seconds, start) if exists else None
        except DecodeError:
            excerpt = None
        player = f'<audio controls src="{_data_uri("audio/wav", excerpt)}"></audio>' if excerpt else ""
        return picture + player
    if kind is Preview.TEXT and exists:
        return f"<pre>{html.escape(text_excerpt(path, indexed=indexed))}</pre>"
    if kind is Preview.LABEL or (kind is Preview.THUMBNAIL and exists):  # indexed before it had a preview
        return f'<div class="label">{html.escape(modality.spec.help or modality.value)}</div>'
    return '<div class="missing">no preview (file missing or unreadable)</div>'


def _path(uri: str) -> str:
    """A path that wraps at its separators, not mid-word."""
    return html.escape(uri).replace("/", "/<wbr>")


def _card(preview: str, lines: list[str], link: str | None = None, subtracted: bool = False) -> str:
    if link:
        preview = f'<a href="{html.escape(link)}">{preview}</a>'
    meta = "<br>".join(lines)
    return f'<div class="card{" subtracted" if subtracted else ""}">{preview}<div class="meta">{meta}</div></div>'


def _weight(weight: float) -> str:
    if weight < 0:
        return f'<span class="weight negative">weight {weight:g} (subtracted)</span>'
    return f'<span class="weight">weight {weight:g}</span>'


def _link(uri: str | None, link_originals: bool) -> str | None:
    return Path(uri).as_uri() if link_originals and uri and os.path.isabs(uri) else None


def _input_card(given: QueryInput, link_originals: bool, stored: dict[int, bytes | None]) -> str:
    """A query input as the engine embedded it: its own description, and a preview of what it was."""
    term = given.term
    subtracted = term.weight < 0
    head = f"{html.escape(str(given.modality or term.kind))} {html.escape(term.kind)}, {_weight(term.weight)}"
    if isinstance(term, TextTerm):
        return _card(f"<pre>{html.escape(term.text)}</pre>", [head], subtracted=subtracted)
    shown = _path(str(term.describe()["value"]))
    if given.modality is None:  # a raw vector: nothing to show but its description
        return _card('<div class="label">vector</div>', [head, shown], subtracted=subtracted)
    thumbnail = given.thumbnail if given.thumbnail is not None else stored.get(given.item_id)  # a stored item
    preview = _preview(given.modality, given.uri, thumbnail)
    return _card(preview, [head, shown], _link(given.uri, link_originals), subtracted)


def _timeline(result, results: Results) -> str:
    """A bar of the file's length marking where its moments in these results lie (this one highlighted)."""
    length = result.metadata.get("duration") or result.end
    marks = "".join(
        f'<span class="{"this" if other is result else ""}" style="left:{100 * other.start / length:.2f}%;'
        f'width:{100 * (other.end - other.start) / length:.2f}%"></span>'
        for other in results
        if other.id == result.id and other.is_moment and length
    )
    return f'<div class="timeline">{marks}</div>'


def _moment_player(result, link_originals: bool) -> str:
    """A video moment's player, starting at the moment (a media fragment), when the page links originals."""
    if not (link_originals and result.modality is Modality.VIDEO and os.path.isabs(result.uri)):
        return ""
    src = html.escape(Path(result.uri).as_uri() + result.fragment)
    return f'<video controls preload="none" src="{src}"></video>'


def render(results: Results, database: str = "", link_originals: bool = False) -> str:
    """The page as a string. ``link_originals`` links each card to its file (``file://``); the page is
    self-contained either way."""
    thumbnails = results.thumbnails()
    query_cards = "".join(_input_card(given, link_originals, thumbnails) for given in results.inputs)
    result_cards = []
    for r in results:
        score = f'<span class="score{" negative" if r.score < 0 else ""}">{r.score:.3f}</span>'
        calibrated = f" <span>calibrated {r.calibrated:.1f}</span>" if r.calibrated is not None else ""
        lines = [f"#{r.rank} {score}{calibrated} {html.escape(r.modality.value)}", _path(r.uri)]
        if r.is_moment:
            lines.append(f'<span class="when">@ {clock_span(r.start, r.end)}</span>{_timeline(r, results)}')
        taken = describe(r.metadata)
        if taken:
            lines.append(f'<span class="taken">{html.escape(taken)}</span>')
        if r.duplicates:
            lines.append("also at: " + ", ".join(_path(d) for d in r.duplicates))
        link = _link(r.uri, link_originals)
        if r.is_moment:  # players in the card: the link to the file (at the moment) is a line of its own
            if link:
                lines.append(f'<a href="{html.escape(link + r.fragment)}">open at {clock(r.start)}</a>')
            preview = _moment_player(r, link_originals) + _preview(
                r.modality, r.uri, thumbnails.get(r.id), (r.start, r.end)
            )
            result_cards.append(_card(preview, lines))
        else:
            result_cards.append(
                _card(_preview(r.modality, r.uri, thumbnails.get(r.id), indexed=r.indexed), lines, link)
            )
    targets = ", ".join(t.value for t in results.targets) or "all"
    note = f"<p class='note'>Note: {html.escape(RANDOM_WEIGHTS_NOTE)}.</p>" if results.random_weights else ""
    model = f"model {html.escape(results.model_id)}, " if results.model_id else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>xsearch results</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>xsearch: {len(results)} results</h1>{note}<div class='meta'>database {html.escape(str(database))}, "
        f"{model}targets: {html.escape(targets)}</div>"
        f"<h2>Query</h2><div class='grid' id='query'>{query_cards}</div>"
        f"<h2>Results</h2><div class='grid' id='results'>{''.join(result_cards)}</div>"
        "</body></html>"
    )


def write_contact_sheet(
    results: Results, path: str | os.PathLike, database: str = "", link_originals: bool = False
) -> str:
    """Write the page to ``path`` atomically; returns the path."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(render(results, database, link_originals))
    os.replace(tmp, path)
    return path
