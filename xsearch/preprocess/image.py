"""Images: file or bytes -> normalised ``[3, 224, 224]`` float tensor.

Same arithmetic as the reference pipeline (resize the shorter side to 224 with PIL bicubic, centre-crop,
scale to [0, 1], CLIP mean/std), plus what real collections need: EXIF orientation, every PIL mode
(RGBA/LA/P over white, CMYK, 16-bit and float greyscale scaled by their range), the first frame of
animations, and a megapixel cap checked from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from xsearch.errors import DecodeError
from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg
from xsearch.objects import is_object_uri
from xsearch.preprocess.prepared import Preprocessed
from xsearch.sources import open_media

# The shorter side is scaled to the model's size, so an N x 1 picture would become a 224N x 224 tensor (an
# 85-byte 5000 x 1 PNG asked for 2 GB): pictures and frames longer than this many times their width are refused.
MAX_ASPECT_RATIO = 50
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageCfg:
    size: int = IMAGEBIND_HUGE.image_size
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    max_megapixels: float = 178.0  # the header's width x height above this is refused before decoding
    # JPEG DCT-domain downscaling while decoding: several times faster on large photos, but not bit-equal
    # to the reference pipeline (which decodes at full size), hence off by default.
    jpeg_draft: bool = False

    @classmethod
    def for_model(cls, model: ImageBindCfg) -> ImageCfg:
        return cls(size=model.image_size)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """``uint8 [..., 3, H, W]`` pixels (as ``prepare`` hands them over) -> float model input, on the
        pixels' device: the encoder does this last step, so that decode workers hand over a quarter of the
        bytes (150 KB an image instead of 600 KB)."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        return pixels.float().div_(255.0).sub_(mean).div_(std)


def _open(source, cfg: ImageCfg) -> Image.Image:
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    try:
        with warnings.catch_warnings():
            # PIL warns from 89.5 MP; the cap that applies is ``max_megapixels``, checked below from the header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if isinstance(source, (bytes, bytearray)):
                source = io.BytesIO(source)
            elif is_object_uri(name):
                source = open_media(name)  # PIL reads what it needs, by range
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"declares {int(pixels.group(1)) / 1e6:.0f} MP, " if pixels else ""
        raise DecodeError(name, f"image {size}too large to decode safely (decompression bomb?)") from None
    except DecodeError.OS_ERRORS as exc:
        raise DecodeError.from_os_error(name, exc) from None
    except (Image.UnidentifiedImageError, OSError, ValueError) as exc:
        raise DecodeError(name, f"not a readable image ({_reason(exc)})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise DecodeError(name, f"image has no pixels ({width}x{height})")
    if width * height > cfg.max_megapixels * 1e6:
        raise DecodeError(
            name, f"image is {width}x{height} ({width * height / 1e6:.0f} MP), above the {cfg.max_megapixels:g} MP cap"
        )
    check_aspect(name, width, height)
    return image


def check_aspect(name: str, width: int, height: int, what: str = "image") -> None:
    """``DecodeError`` for a picture whose scaled copy would be unbounded (see ``MAX_ASPECT_RATIO``)."""
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        raise DecodeError(name, f"{what} is {width}x{height}: longer than {MAX_ASPECT_RATIO} times its width, refused")


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max(initial=0)), 1e-12)
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source, cfg: ImageCfg = ImageCfg()) -> Image.Image:
    """Decode an image file (or bytes) into an upright 8-bit RGB PIL image."""
    return _load(source, cfg)[0]


def _load(source, cfg: ImageCfg) -> tuple[Image.Image, dict]:
    """The upright RGB image, and what its EXIF says of its capture (``xsearch.capture``)."""
    from xsearch.capture import exif_tags

    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    image = _open(source, cfg)
    tags = exif_tags(image)
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        if cfg.jpeg_draft and image.format == "JPEG":
            short = min(image.size)
            image.draft("RGB", (image.size[0] * cfg.size // short, image.size[1] * cfg.size // short))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image), tags
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DecodeError(name, f"image data is corrupt or truncated ({_reason(exc)})") from None


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return image.resize((max(new_w, 1), max(new_h, 1)), Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def image_to_pixels(image: Image.Image, cfg: ImageCfg = ImageCfg()) -> torch.Tensor:
    """An RGB PIL image -> ``uint8 [3, size, size]``: shorter side to ``size`` (bicubic), centre crop."""
    cropped = center_crop(resize_shorter_side(image, cfg.size), cfg.size)
    return torch.from_numpy(np.asarray(cropped, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def image_to_tensor(image: Image.Image, cfg: ImageCfg = ImageCfg()) -> torch.Tensor:
    """An RGB PIL image -> ``[3, size, size]`` model input."""
    return cfg.normalise(image_to_pixels(image, cfg))


def preprocess_image(source, cfg: ImageCfg = ImageCfg()) -> torch.Tensor:
    """Image file or bytes -> ``[3, 224, 224]`` float32 tensor.

    Example
    -------
    >>> x = preprocess_image("photo.jpg")  # doctest: +SKIP
    >>> x.shape
    torch.Size([3, 224, 224])
    """
    return image_to_tensor(load_image(source, cfg), cfg)


def prepare(path, cfg: ImageCfg, thumbnail: bool = True) -> Preprocessed:
    """Model input, size and (when ``thumbnail``) a preview made from the pixels already decoded."""
    from xsearch import thumbnails

    image, tags = _load(path, cfg)
    meta = {"width": image.width, "height": image.height, **tags}
    if thumbnail:
        meta["thumbnail"] = thumbnails.jpeg_thumbnail(image)
    return Preprocessed(image_to_pixels(image, cfg), meta)  # uint8: the encoder normalises (``ImageCfg.normalise``)
