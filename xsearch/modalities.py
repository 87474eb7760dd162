"""Modalities and towers.

A *modality* is what a user indexes and searches (``image``, ``video``, ``audio``...). A *tower* is the
ImageBind encoder that embeds it; its value is the key the official checkpoint uses (``vision`` serves both
images and videos). Everything else in xsearch names modalities and towers through these two enums.
"""

from __future__ import annotations

import enum
from pathlib import Path


class Tower(str, enum.Enum):
    """The six ImageBind encoders, valued by their checkpoint keys."""

    VISION = "vision"
    TEXT = "text"
    AUDIO = "audio"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"

    def __str__(self) -> str:
        return self.value


class Modality(str, enum.Enum):
    """What an indexed item or a query input is."""

    IMAGE = "image"
    VIDEO = "video"
    TEXT = "text"
    AUDIO = "audio"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"

    def __str__(self) -> str:
        return self.value

    @property
    def tower(self) -> Tower:
        """The encoder that embeds this modality."""
        if self in (Modality.IMAGE, Modality.VIDEO):
            return Tower.VISION
        return Tower(self.value)

    @classmethod
    def parse(cls, value: str | Modality) -> Modality:
        """``Modality`` from its name, with an error listing the valid names."""
        if isinstance(value, Modality):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown modality {value!r} (expected one of: {names})") from None


# Extensions recognised without content sniffing. Depth, thermal and IMU files share extensions with images
# and arrays, so they are never guessed from the extension alone: the indexer assigns them by folder
# convention or an explicit option.
EXTENSIONS: dict[Modality, frozenset[str]] = {
    Modality.IMAGE: frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}),
    Modality.VIDEO: frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"}),
    Modality.AUDIO: frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac"}),
    Modality.TEXT: frozenset({".txt"}),
    Modality.IMU: frozenset({".npy", ".csv"}),
}


def parse_modalities(value: str | list) -> list[Modality]:
    """``"image, audio"`` (or a list of names) -> modalities, in order; ``ValueError`` names a bad one."""
    names = value.split(",") if isinstance(value, str) else list(value)
    return [Modality.parse(str(name).strip()) for name in names if str(name).strip()]


def modality_from_extension(path: str | Path) -> Modality | None:
    """The modality an extension suggests (image, video, audio, text), or ``None`` when unknown.

    ``.npy``/``.csv`` return ``None`` here: they are IMU only when the caller says so.
    """
    suffix = Path(path).suffix.lower()
    for modality in (Modality.IMAGE, Modality.VIDEO, Modality.AUDIO, Modality.TEXT):
        if suffix in EXTENSIONS[modality]:
            return modality
    return None


def as_tower(value: Tower | Modality | str) -> Tower:
    """The tower for a tower, a modality, or either's name (``"image"`` -> ``Tower.VISION``)."""
    if isinstance(value, Tower):
        return value
    if isinstance(value, Modality):
        return value.tower
    name = str(value).strip().lower()
    if name in Tower._value2member_map_:
        return Tower(name)
    return Modality.parse(name).tower
