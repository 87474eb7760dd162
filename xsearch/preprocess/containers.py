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


def local_file_url(path: str | os.PathLike) -> str:
    """``path`` for FFmpeg as a local file (its ``file:`` protocol), never as a URL of another protocol."""
    return "file:" + os.path.abspath(os.fspath(path))


def describe(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    text = text.strip().splitlines()[0] if text and text.strip() else type(exc).__name__
    return text
