"""Small JPEG previews for results pages: images, video frames, false-colour depth and thermal maps.

Made at index time from pixels the decoder already holds (stored in ``items.thumbnail``), or on demand for
query inputs, so a results page never embeds a full-size original.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

THUMBNAIL_SIZE = 192  # longest side, pixels
JPEG_QUALITY = 80


def jpeg_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """An RGB PIL image -> JPEG bytes no larger than ``size`` on its longest side."""
    image = image.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


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
