"""Moments: one vector per segment along long audio and video, so a search can say *when*.

An item's vector averages a few 2 s clips of the whole file (3 for audio, 5 for video): a 40-minute
podcast is one point in the space. With moments on, every audio and video file is also cut into segments
of ``MomentCfg.seconds`` (6 s by default) every ``MomentCfg.stride`` seconds, along the whole file; each
segment's vector averages its 2 s clips (ImageBind's unit: 3 clips for 6 s), each clip made exactly as the
clip of a 2 s file would be, so the seconds of a segment cut out as a file of their own embed as the
segment does. A video's sound track is cut into audio moments of the same file, so a sound or a sentence
finds the moment in a video where it is heard. The last segment of a file is shorter; its clips are moved
back to end at the file's end.

Long files are streamed: the decode stage hands the indexer a file's segments in chunks (``MomentTask``,
a few minutes of audio or seconds of video each), so memory does not grow with length, and each chunk is
bounded by the per-file time limit as a file is.

Moment ids are ``item id << MOMENT_BITS | n``: derived from the file's row, so a file's moments are replaced
as a set in one commit and never need an id table of their own. Light on purpose (no torch): options
import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xsearch.errors import UsageError
from xsearch.modalities import Modality
from xsearch.sources import media_info

CLIP_SECONDS = 2  # ImageBind's audio and video clip
MOMENT_BITS = 20  # moments per file: 2**20 segments (72 days at 6 s)
MAX_ITEM_ID = 2 ** (63 - MOMENT_BITS)


@dataclass(frozen=True)
class MomentCfg:
    """How files are cut into moments: segments of ``seconds`` (a multiple of the 2 s clip) starting every
    ``stride`` seconds (default: ``seconds``, segments side by side)."""

    seconds: float = 6.0
    stride: float | None = None

    def __post_init__(self) -> None:
        seconds = self.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise UsageError(f"moment_seconds must be a number of seconds, got {seconds!r}", argument="moment_seconds")
        if seconds < CLIP_SECONDS or seconds > 60 or seconds % CLIP_SECONDS:
            raise UsageError(
                f"moment_seconds must be a multiple of {CLIP_SECONDS} between {CLIP_SECONDS} and 60 "
                f"(the model hears {CLIP_SECONDS} s clips), got {seconds:g}",
                argument="moment_seconds",
            )
        stride = self.seconds if self.stride is None else self.stride
        if isinstance(stride, bool) or not isinstance(stride, (int, float)) or not 0.5 <= stride <= 600:
            raise UsageError(
                f"moment_stride must be between 0.5 and 600 seconds, got {stride!r}", argument="moment_stride"
            )
        object.__setattr__(self, "seconds", float(seconds))
        object.__setattr__(self, "stride", float(stride))

    @property
    def clips(self) -> int:
        return int(self.seconds // CLIP_SECONDS)

    def spans(self, duration: float) -> list[tuple[float, float]]:
        """``[start, end)`` of each segment of a file of ``duration`` seconds (one, at least)."""
        spans, start = [], 0.0
        while start < duration or not spans:
            end = min(start + self.seconds, duration)
            spans.append((start, end))
            if end >= duration:
                break
            start = round(start + self.stride, 6)
        return spans

    def clip_starts(self, start: float, end: float) -> list[float]:
        """The segment's clips, side by side from its start; in a short (last) segment, moved back to end at
        its end (and repeated when it is shorter than one clip)."""
        latest = max(end - CLIP_SECONDS, start)
        return [min(start + i * CLIP_SECONDS, latest) for i in range(self.clips)]

    def as_json(self) -> dict:
        return {"seconds": self.seconds, "stride": self.stride}

    @classmethod
    def from_json(cls, data: dict) -> MomentCfg:
        return cls(float(data["seconds"]), float(data["stride"]))


def moment_id(item_id: int, n: int) -> int:
    return (int(item_id) << MOMENT_BITS) | n


def item_of(moment: int) -> int:
    return int(moment) >> MOMENT_BITS


@dataclass(frozen=True)
class MomentTask:
    """A chunk of one file's segments for the decode stage: ``spans`` of ``modality`` (a video's sound track
    is ``audio``), numbered from ``first`` among the file's segments of that modality; ``chunks`` is how
    many chunks the file has in all (the indexer commits the file when each has come back)."""

    path: str
    modality: Modality
    size: int
    mtime: float
    spans: tuple[tuple[float, float], ...]
    first: int
    cfg: MomentCfg
    chunks: int = 1
    seconds: float | None = None  # the track's length, for a stream whose header does not say


def plan(path: str, modality: Modality, size: int, mtime: float, duration: float, cfg: MomentCfg) -> list[MomentTask]:
    """The chunks of a decoded audio or video file: its own segments, and a video's sound track's."""
    tracks = [(modality, duration)]
    if modality is Modality.VIDEO:
        heard = _sound_track_seconds(path)
        if heard:
            tracks.append((Modality.AUDIO, heard))
    pieces = []
    for track, seconds in tracks:
        spans = cfg.spans(seconds)
        step = track.spec.moment_chunk
        pieces += [(track, tuple(spans[i : i + step]), i) for i in range(0, len(spans), step)]
    return [
        MomentTask(path, track, size, mtime, spans, first, cfg, len(pieces), spans[-1][1])
        for track, spans, first in pieces
    ]


def _sound_track_seconds(path: str) -> float | None:
    """The length of a video's first audio stream (its header's, else the container's), or ``None``."""
    import av

    from xsearch.preprocess.containers import open_container, true_duration

    try:
        with open_container(path) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration and stream.time_base:
                declared = float(stream.duration * stream.time_base)
            else:
                declared = container.duration / av.time_base if container.duration else None
            # A sound track shorter than its header (2 s of sound in a 40 s video) has moments where it sounds.
            return true_duration(container, stream, declared) if declared else None
    except Exception:  # no readable sound track: the video's moments stand alone
        return None


def decode_chunk(task: MomentTask, cfg) -> object:
    """A ``MomentTask`` -> a ``Decoded`` whose tensor holds its segments' clips (``[S, clips, ...]``), or
    its error. The file must be the one the indexer hashed: one changed since fails (retried next run)."""
    from xsearch.decode import Decoded, guarded_decode

    decoded = Decoded(task.path, task.modality, task=task)
    info = media_info(task.path)
    if info is None:
        return decoded.fail("read", "cannot read it again for its moments (gone, or not a regular file)")
    if info.size != task.size or info.mtime != task.mtime:
        return decoded.fail("read", "the file changed while its moments were read (retried next run)")
    segments = [task.cfg.clip_starts(start, end) for start, end in task.spans]
    decoded.tensor = guarded_decode(decoded, lambda: _segment_tensor(task, segments, cfg))
    return decoded


def _segment_tensor(task: MomentTask, segments: list[list[float]], cfg):
    if task.modality is Modality.AUDIO:
        from xsearch.preprocess.audio import segment_clips

        return segment_clips(task.path, segments, cfg[Modality.AUDIO], task.seconds)
    from xsearch.preprocess.video import decode_segments

    return decode_segments(task.path, segments, cfg[Modality.VIDEO])


def clock(seconds: float, tenths: bool = False) -> str:
    """``83.0`` -> ``"1:23"``, ``3723.5`` -> ``"1:02:03"`` (whole seconds, as players show them); with
    ``tenths``, ``0.25`` -> ``"0:00.2"``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return text + f".{int((seconds - whole) * 10)}" if tenths else text


def clock_span(start: float, end: float) -> str:
    """``"1:23-1:29"``; in tenths when whole seconds would show a sub-second moment as ``"0:00-0:00"``."""
    tenths = int(start) == int(end) and start != end
    return f"{clock(start, tenths)}-{clock(end, tenths)}"


def split_item_time(text: str) -> tuple[str, float | None]:
    """``"12@1:03"`` -> ``("12", 63.0)``: an item and the second of the moment asked for, when the text after
    the last ``@`` is a time; else ``(text, None)`` (a path with an ``@`` in its name)."""
    key, sep, when = text.rpartition("@")
    at = parse_clock(when) if sep and key else None
    return (text, None) if at is None else (key, at)


def parse_clock(text: str) -> float | None:
    """``"83"``, ``"83.5"``, ``"1:23"``, ``"1:02:03"`` -> seconds; ``None`` when ``text`` is not a time."""
    parts = text.strip().split(":")
    # ASCII digits only: "²" is a digit to ``str.isdigit`` but not to ``float``.
    if not 1 <= len(parts) <= 3 or not all(p.isascii() and p.replace(".", "", 1).isdigit() for p in parts):
        return None
    if any("." in p for p in parts[:-1]):
        return None
    # Minutes and seconds after a colon have two digits ("1:05", "1:05.5"): "17:30:0.5" is no time (its
    # author meant a weight, which a moment takes as a prefix: "0.5::338@17:30").
    if any(len(p.split(".")[0]) != 2 for p in parts[1:]):
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds if math.isfinite(seconds) else None  # 400 nines is no time (``float`` makes it inf)


def moment_at(moments, item_id: int, seconds: float, prefer: Modality | None = None) -> dict | None:
    """The moment of ``item_id`` holding ``seconds`` in the ``moments`` view (``id``, ``modality``, ``start``,
    ``end``, ``embedding``), of modality ``prefer`` when it has one (a video's picture before its sound);
    the last one when ``seconds`` is its end. ``None`` when there is none."""
    from xsearch.store import ItemFilter

    columns = ["id", "modality", "start", "end", "embedding"]
    rows = moments.scan(columns, ItemFilter(item_ids=[item_id])).to_pylist()
    held = [r for r in rows if r["start"] <= seconds < r["end"] or seconds == r["end"]]
    held.sort(key=lambda r: (r["modality"] != str(prefer), r["end"] == seconds, r["start"]))
    return held[0] if held else None
