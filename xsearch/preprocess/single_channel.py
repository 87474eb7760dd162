"""Depth and thermal maps: single-channel file -> ``[1, 224, 224]``.

Sources: 8- or 16-bit PNG/TIFF (scaled by the type's range to [0, 1]), float TIFF, or ``.npy`` arrays
(``H x W`` or ``1 x H x W``; integer arrays scaled by their type's range, float arrays used as they are).
Colour images are converted to luminance. Then: shorter side to 224 (bicubic), centre crop, and the
modality's normalisation.

Depth is expected as *disparity* (inverse depth), as ImageBind was trained on: its default normalisation
is Omnivore's disparity mean/std (0.0418, 0.0295) and applies to disparity in those units; maps from
other sources embed, but less faithfully. Thermal maps are used in [0, 1] without normalisation: Meta
published no thermal loader, and users of the reference report better LLVIP accuracy without one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from xsearch.errors import DecodeError
from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg
from xsearch.preprocess._npy import load_npy
from xsearch.preprocess.image import ImageCfg, _open, check_aspect
from xsearch.preprocess.prepared import Preprocessed


@dataclass(frozen=True)
class SingleChannelCfg:
    size: int = IMAGEBIND_HUGE.image_size
    mean: float = 0.0
    std: float = 1.0
    max_megapixels: float = 178.0


DEPTH = SingleChannelCfg(mean=0.0418, std=0.0295)
THERMAL = SingleChannelCfg()


def _scale_integer(array: np.ndarray) -> np.ndarray:
    """Integer maps -> [0, 1] by their type's range; float (and boolean) maps as they are."""
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    return array.astype(np.float32)


def load_single_channel(path: str | os.PathLike, cfg: SingleChannelCfg = THERMAL) -> np.ndarray:
    """A map as ``float32 H x W``."""
    name = os.fspath(path)
    if name.lower().endswith(".npy"):
        array = load_npy(name, max_elements=int(cfg.max_megapixels * 1e6))
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
        if array.ndim != 2:
            raise DecodeError(name, f"expected a 2-D map, got an array of shape {array.shape}")
        check_aspect(name, array.shape[1], array.shape[0], "map")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise DecodeError(name, f"expected a numeric array, got dtype {array.dtype}")
        array = _scale_integer(array)
    else:
        image = _open(path, ImageCfg(max_megapixels=cfg.max_megapixels))
        try:
            image.load()
            if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                image = image.convert("L")
            array = np.asarray(image)
            if image.mode.startswith("I;16"):
                array = array.astype(np.uint16)
            elif image.mode == "I" and array.max(initial=0) <= 65535 and array.min(initial=0) >= 0:
                array = array.astype(np.uint16)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DecodeError(name, f"image data is corrupt or truncated ({exc})") from None
        array = _scale_integer(array)
    if array.size == 0:
        raise DecodeError(name, "map has no pixels")
    if not np.isfinite(array).all():
        raise DecodeError(name, "map contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def map_to_tensor(array: np.ndarray, cfg: SingleChannelCfg) -> torch.Tensor:
    """``H x W`` float map -> ``[1, size, size]``: shorter side to ``size`` (bicubic), centre crop, normalise."""
    x = torch.from_numpy(array)[None, None]
    h, w = array.shape
    if w <= h:
        new_w, new_h = cfg.size, max(int(cfg.size * h / w), cfg.size)
    else:
        new_w, new_h = max(int(cfg.size * w / h), cfg.size), cfg.size
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((new_h - cfg.size) / 2.0)), int(round((new_w - cfg.size) / 2.0))
    x = x[0, :, top : top + cfg.size, left : left + cfg.size]
    return (x - cfg.mean) / cfg.std


def depth_cfg(model: ImageBindCfg) -> SingleChannelCfg:
    return replace(DEPTH, size=model.image_size)


def thermal_cfg(model: ImageBindCfg) -> SingleChannelCfg:
    return replace(THERMAL, size=model.image_size)


def _prepare_map(path, cfg: SingleChannelCfg, thumbnail: bool) -> Preprocessed:
    from xsearch import thumbnails

    array = load_single_channel(path, cfg)
    meta = {"width": array.shape[1], "height": array.shape[0]}
    if thumbnail:
        meta["thumbnail"] = thumbnails.map_thumbnail(array)
    return Preprocessed(map_to_tensor(array, cfg), meta)


def prepare_depth(path, cfg: SingleChannelCfg = DEPTH, thumbnail: bool = True) -> Preprocessed:
    """Depth map -> model input, size and a false-colour preview."""
    return _prepare_map(path, cfg, thumbnail)


def prepare_thermal(path, cfg: SingleChannelCfg = THERMAL, thumbnail: bool = True) -> Preprocessed:
    """Thermal image -> model input, size and a false-colour preview."""
    return _prepare_map(path, cfg, thumbnail)
