"""A bound modality's arrays as its trainable encoder reads them: ``.npy`` -> ``float32 [channels, length]``.

Two shapes of array are told apart when a modality is bound, from its training files, and kept in the
binding (``RawCfg``): a *series* (1-D, or 2-D with a short axis of at most ``MAX_CHANNELS`` channels,
either way round, as IMU recordings come) is resampled along time to ``length``; a *map* (2-D, both axes
longer: a scan, a tactile grid) is resized to ``grid x grid`` and read as one channel of ``grid**2``
values. Values are kept as they are: the encoder standardises them with statistics of the training set,
so what tells one file from another (how strongly a sensor moved) is not normalised away.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xsearch.errors import DecodeError
from xsearch.sniff import Family

MAX_CHANNELS = 16
MAX_LENGTH = 1024  # a series' samples the encoder reads (longer ones are resampled down to it)
GRID = 32


@dataclass(frozen=True)
class RawCfg:
    kind: str  # "series" or "map"
    channels: int
    length: int
    max_elements: int = 64 << 20

    ACCEPTS: ClassVar[frozenset] = frozenset({Family.ARRAY})

    @classmethod
    def fitted(cls, arrays: list[np.ndarray], names: list[str]) -> RawCfg:
        """The shape every training array is read at; arrays of different kinds or channel counts are one
        error naming the first that differs."""
        shapes = [_layout(a, n) for a, n in zip(arrays, names)]
        kind, channels, _ = shapes[0]
        for (other_kind, other_channels, _), name in zip(shapes, names):
            if (other_kind, other_channels) != (kind, channels):
                raise DecodeError(
                    name, f"a {other_kind} of {other_channels} channel(s), unlike {names[0]} ({kind}, {channels})"
                )
        if kind == "map":
            return cls("map", 1, GRID * GRID)
        length = int(min(np.median([s[2] for s in shapes]), MAX_LENGTH))
        return cls("series", channels, max(length, 2))


def _layout(array: np.ndarray, name: str) -> tuple[str, int, int]:
    """``(kind, channels, length)`` of an array as it is stored."""
    if array.ndim == 1:
        return "series", 1, array.shape[0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise DecodeError(name, f"expected a 1-D or 2-D array, got shape {array.shape}")
    short, long = sorted(array.shape)
    if short <= MAX_CHANNELS and long > short:
        return "series", short, long
    return "map", 1, GRID * GRID


def read_array(path: str | os.PathLike, cfg: RawCfg | None = None) -> np.ndarray:
    """A ``.npy`` file as ``float32``, checked to be finite numbers."""
    from xsearch.preprocess._npy import load_npy

    name = os.fspath(path)
    array = load_npy(name, cfg.max_elements if cfg else RawCfg.max_elements)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise DecodeError(name, f"expected an array of real numbers, got {array.dtype}")
    array = array.astype(np.float32)
    if array.size == 0 or not np.isfinite(array).all():
        raise DecodeError(name, "the array is empty or holds NaN or infinite values")
    return array


def shaped(array: np.ndarray, cfg: RawCfg, name: str):
    """``float32 [channels, length]`` torch tensor of ``array`` as ``cfg`` reads it."""
    import torch
    import torch.nn.functional as F

    kind, channels, _ = _layout(array, name)
    if (kind, channels) != (cfg.kind, cfg.channels):
        reads = f"this modality reads a {cfg.kind} of {cfg.channels}"
        raise DecodeError(name, f"a {kind} of {channels} channel(s); {reads}")
    x = torch.from_numpy(np.ascontiguousarray(array))
    if kind == "map":
        grid = F.interpolate(x[None, None], size=(GRID, GRID), mode="bilinear", align_corners=False)
        return grid.reshape(1, GRID * GRID)
    if x.ndim == 1:
        x = x[None]
    elif x.shape[0] > x.shape[1]:  # samples x channels, as CSV exports write them
        x = x.T
    if x.shape[1] != cfg.length:
        x = F.interpolate(x[None], size=cfg.length, mode="linear", align_corners=False)[0]
    return x.contiguous()


def prepare(path, cfg: RawCfg, thumbnail: bool = False):
    """The preprocessing function of a RAW bound modality (``ModalitySpec.preprocess``)."""
    from xsearch.preprocess.prepared import Preprocessed

    name = os.fspath(path)
    return Preprocessed(shaped(read_array(name, cfg), cfg, name), {})
