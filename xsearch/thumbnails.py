"""Small JPEG previews for results pages: images, video frames, false-colour depth and thermal maps, audio
waveforms and IMU plots.

Made at index time from what the decoder already holds (stored in ``items.thumbnail``), or while a query
input is decoded for the model, so a results page (or any other front end) never decodes an original.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from xsearch.sources import open_indexed, open_media

THUMBNAIL_SIZE = 192  # longest side, pixels
JPEG_QUALITY = 80


def jpeg_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """An RGB PIL image -> JPEG bytes no larger than ``size`` on its longest side."""
    image = image.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    return _jpeg(image)


def frame_thumbnail(frame: np.ndarray, size: int = THUMBNAIL_SIZE) -> bytes:
    """An ``H x W x 3`` uint8 frame -> JPEG bytes."""
    return jpeg_thumbnail(Image.fromarray(np.ascontiguousarray(frame)), size)


def _turbo_like(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB with a perceptually ordered blue-green-yellow-red ramp (no matplotlib needed)."""
    stops = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    colours = np.array([[48, 18, 59], [40, 160, 230], [120, 250, 80], [250, 180, 40], [180, 20, 10]], np.float32)
    channels = [np.interp(values, stops, colours[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def false_colour(array: np.ndarray) -> Image.Image:
    """A single-channel float map -> false-colour RGB, stretched between its 1st and 99th percentiles."""
    low, high = np.percentile(array, [1, 99]) if array.size else (0.0, 1.0)
    scaled = np.clip((array - low) / max(high - low, 1e-12), 0.0, 1.0)
    return Image.fromarray(_turbo_like(scaled), "RGB")


def map_thumbnail(array: np.ndarray, size: int = THUMBNAIL_SIZE) -> bytes:
    return jpeg_thumbnail(false_colour(array), size)


PLOT_SIZE = (THUMBNAIL_SIZE, 96)
_PLOT_COLOURS = [(200, 40, 40), (40, 150, 40), (40, 70, 200), (220, 140, 20), (150, 40, 170), (20, 160, 170)]


def waveform_thumbnail(samples: np.ndarray, size: tuple[int, int] = PLOT_SIZE) -> bytes:
    """A mono waveform (any length) -> its min/max envelope across ``size[0]`` columns, as a JPEG."""
    width, height = size
    image = Image.new("RGB", size, (250, 250, 250))
    draw = ImageDraw.Draw(image)
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    columns = (
        np.array_split(samples, width) if len(samples) >= width else [samples[i : i + 1] for i in range(len(samples))]
    )
    peak = max(float(np.abs(samples).max(initial=0.0)), 1e-6)
    middle = (height - 1) / 2
    for x, column in enumerate(columns):
        if len(column):
            low, high = float(column.min()) / peak, float(column.max()) / peak
            draw.line([(x, middle - high * middle), (x, middle - low * middle)], fill=(30, 90, 170))
    draw.line([(0, middle), (width - 1, middle)], fill=(180, 180, 180))
    return _jpeg(image)


def signals_thumbnail(signals: np.ndarray, size: tuple[int, int] = PLOT_SIZE, per_band: int = 3) -> bytes:
    """``[channels, n]`` signals -> a JPEG plot: channels in bands of ``per_band`` (IMU: accelerometer xyz
    above, gyroscope xyz below), each line the mean of its samples per pixel column, scaled to its range."""
    width, height = size
    image = Image.new("RGB", size, (250, 250, 250))
    draw = ImageDraw.Draw(image)
    signals = np.asarray(signals, dtype=np.float32)
    bands = max(1, -(-len(signals) // per_band))
    band_height = height / bands
    columns = min(width, signals.shape[1])
    xs = np.linspace(1, width - 2, columns)
    for index, channel in enumerate(signals):
        means = np.array([chunk.mean() for chunk in np.array_split(channel, columns)])
        low, high = float(means.min()), float(means.max())
        top = (index // per_band) * band_height
        ys = top + 3 + (band_height - 6) * (1 - (means - low) / max(high - low, 1e-6))
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=_PLOT_COLOURS[index % len(_PLOT_COLOURS)], width=2)
    for band in range(1, bands):
        draw.line([(0, band * band_height), (width - 1, band * band_height)], fill=(190, 190, 190))
    return _jpeg(image)


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


TEXT_EXCERPT_CHARS = 300


def text_excerpt(path: str, chars: int = TEXT_EXCERPT_CHARS, indexed: tuple[int, float] | None = None) -> str:
    """The first ``chars`` characters of a text file, as a results page shows it ("" when unreadable).
    ``indexed``: the file's size and mtime as indexed; then only that file is read (``open_indexed``: not
    a link put in its place, which could show any file the server's user can read)."""
    try:
        source = open_media(path) if indexed is None else open_indexed(path, *indexed)
        if source is None:
            return ""
        with io.TextIOWrapper(source, encoding="utf-8", errors="replace") as handle:
            return handle.read(chars).lstrip("\ufeff")
    except OSError:
        return ""
