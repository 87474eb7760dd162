"""PyAV helpers shared by the audio and video decoders and the contact sheet: opening a local file as a
container, with readable errors."""

from __future__ import annotations

import os

import av

from xsearch.errors import DecodeError
from xsearch.objects import is_object_uri
from xsearch.sources import media_size, open_media


def open_container(path: str | os.PathLike) -> av.container.InputContainer:
    name = os.fspath(path)
    remote = is_object_uri(name)
    if not remote and os.path.isdir(name):
        raise DecodeError(name, "is a directory")
    try:
        if media_size(name) == 0:
            raise DecodeError(name, "file is empty (0 bytes)")
        # A local file as a file whatever its name holds (FFmpeg reads "take:2.wav" as the URL protocol
        # "take"); an object through its range reader, so that FFmpeg's seeks fetch only what it reads.
        source = open_media(name) if remote else local_file_url(name)
        container = av.open(source, mode="r", metadata_errors="ignore")
    except DecodeError.OS_ERRORS as exc:
        raise DecodeError.from_os_error(name, exc) from None
    except av.FFmpegError as exc:
        raise DecodeError(name, f"not a readable media file ({describe(exc)})") from None
    if not container.streams:  # e.g. an MP4 whose moov box is damaged: not "no audio stream"
        container.close()
        raise DecodeError(name, "no audio or video stream found (damaged or truncated file?)")
    return container


LYING_MARGIN = 1.0  # seconds a stream may end before its header says without being called a lie


def stream_end(container, stream, declared: float) -> float | None:
    """Where ``stream`` really ends, in seconds from its start: the end of its last packet, read after a seek
    to just before the ``declared`` end (packets are demuxed, not decoded: cheap whatever the length). A
    header can claim any length; ``None`` when no packet says."""
    base = stream.time_base
    if base is None:
        return None
    start = stream.start_time or 0
    try:
        container.seek(int(max(declared - 2 * LYING_MARGIN, 0) / base) + start, stream=stream, backward=True)
    except (av.FFmpegError, OverflowError, ValueError):
        container.seek(0)  # read from the start: every packet, still without decoding
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            stop = float((packet.pts - start + (packet.duration or 0)) * base)
            end = stop if end is None else max(end, stop)
    container.seek(0)
    return end


def true_duration(container, stream, declared: float) -> float:
    """``declared``, unless the stream's packets end well before it (a lying header: 10 s of video that says
    2 h): then where they end."""
    end = stream_end(container, stream, declared)
    return end if end is not None and end < declared - LYING_MARGIN else declared


def local_file_url(path: str | os.PathLike) -> str:
    """``path`` for FFmpeg as a local file (its ``file:`` protocol), never as a URL of another protocol."""
    return "file:" + os.path.abspath(os.fspath(path))


def describe(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    text = text.strip().splitlines()[0] if text and text.strip() else type(exc).__name__
    return text
