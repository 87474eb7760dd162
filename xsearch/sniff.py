"""Content sniffing: what a file is, from its first bytes, whatever its name says.

Used to catch files whose extension lies (a ``.jpg`` that is text) before a decoder gives a cryptic
message, while letting harmless mismatches through (a ``.jpg`` that is a PNG decodes fine as an image).
Only signatures that are unambiguous are listed; anything else is ``None`` and left to the decoders.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

HEAD_BYTES = 64


class Family(str, enum.Enum):
    """What a file's first bytes say it is (``xsearch.sniff``), whatever its name says."""

    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    ARRAY = "array"
    TEXT = "text"
    DOCUMENT = "document"  # PDF, archives, executables: never media


@dataclass(frozen=True)
class Sniffed:
    family: Family
    format: str  # as a person would say it: "a PNG image", "an MP4 video", "text"


def _ftyp(head: bytes) -> Sniffed | None:
    if head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    if brand in (b"M4A ", b"M4B ", b"M4P ", b"F4A "):
        return Sniffed(Family.AUDIO, "M4A audio")
    if brand in (b"heic", b"heix", b"mif1", b"avif"):
        return Sniffed(Family.IMAGE, "a HEIF/AVIF image")
    if brand == b"qt  ":
        return Sniffed(Family.VIDEO, "a QuickTime video")
    return Sniffed(Family.VIDEO, "an MP4 video")


def _riff(head: bytes) -> Sniffed | None:
    if head[:4] != b"RIFF":
        return None
    kind = head[8:12]
    return {
        b"WAVE": Sniffed(Family.AUDIO, "WAV audio"),
        b"WEBP": Sniffed(Family.IMAGE, "a WebP image"),
        b"AVI ": Sniffed(Family.VIDEO, "an AVI video"),
    }.get(kind)


_PREFIXES: list[tuple[bytes, Sniffed]] = [
    (b"\xff\xd8\xff", Sniffed(Family.IMAGE, "a JPEG image")),
    (b"\x89PNG\r\n\x1a\n", Sniffed(Family.IMAGE, "a PNG image")),
    (b"GIF87a", Sniffed(Family.IMAGE, "a GIF image")),
    (b"GIF89a", Sniffed(Family.IMAGE, "a GIF image")),
    (b"II*\x00", Sniffed(Family.IMAGE, "a TIFF image")),
    (b"MM\x00*", Sniffed(Family.IMAGE, "a TIFF image")),
    (b"BM", Sniffed(Family.IMAGE, "a BMP image")),
    (b"fLaC", Sniffed(Family.AUDIO, "FLAC audio")),
    (b"OggS", Sniffed(Family.AUDIO, "Ogg audio")),
    (b"ID3", Sniffed(Family.AUDIO, "MP3 audio")),
    (b"\x1aE\xdf\xa3", Sniffed(Family.VIDEO, "a Matroska/WebM video")),
    (b"\x93NUMPY", Sniffed(Family.ARRAY, "a NumPy array")),
    # Byte-order marks of UTF-16/32 text (Windows Notepad's "Unicode"); checked before MPEG frame sync,
    # which 0xFF 0xFE also matches.
    (b"\xff\xfe", Sniffed(Family.TEXT, "UTF-16 text")),
    (b"\xfe\xff", Sniffed(Family.TEXT, "UTF-16 text")),
    (b"\x00\x00\xfe\xff", Sniffed(Family.TEXT, "UTF-32 text")),
    (b"%PDF", Sniffed(Family.DOCUMENT, "a PDF document")),
    (b"PK\x03\x04", Sniffed(Family.DOCUMENT, "a ZIP archive")),
    (b"\x1f\x8b", Sniffed(Family.DOCUMENT, "a gzip archive")),
    (b"\x7fELF", Sniffed(Family.DOCUMENT, "an executable")),
]


def _is_mpeg_audio_frame(head: bytes) -> bool:
    # 11 sync bits, a valid MPEG version and layer (MP3 without an ID3 tag; ADTS AAC has layer bits 00).
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x18) != 0x08


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the end of the sample is still text.
        if exc.start < len(head) - 3:
            return False
    return True


def sniff(head: bytes) -> Sniffed | None:
    """The family of a file from its first ``HEAD_BYTES`` bytes, or ``None`` when not recognised."""
    for found in (_ftyp(head), _riff(head)):
        if found:
            return found
    for prefix, found in _PREFIXES:
        if head.startswith(prefix):
            return found
    if _is_mpeg_audio_frame(head):
        return Sniffed(Family.AUDIO, "MPEG audio")
    if _looks_like_text(head):
        return Sniffed(Family.TEXT, "text")
    return None
