"""IMU: ``.npy`` or ``.csv`` -> ``[6, 2000]`` (accelerometer xyz + gyroscope xyz, 2000 samples).

ImageBind's IMU tower saw Ego4D windows of 10 s at 200 Hz. Arrays may be ``6 x N`` or ``N x 6`` (CSV:
one row per sample, six numeric columns, an optional header row). A window longer than 2000 samples is
centre-cropped, a shorter one zero-padded at the end; resample to 200 Hz beforehand if yours differs.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np
import torch

from xsearch.errors import DecodeError
from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg
from xsearch.preprocess._npy import load_npy
from xsearch.preprocess.prepared import Preprocessed
from xsearch.sources import media_size, open_media


@dataclass(frozen=True)
class ImuCfg:
    channels: int = IMAGEBIND_HUGE.imu_channels
    length: int = IMAGEBIND_HUGE.imu_length
    max_file_bytes: int = 256 << 20

    @classmethod
    def for_model(cls, model: ImageBindCfg) -> ImuCfg:
        return cls(channels=model.imu_channels, length=model.imu_length)


def _read_csv(name: str) -> np.ndarray:
    rows = []
    with io.TextIOWrapper(open_media(name), newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                rows.append([float(cell) for cell in row])
            except ValueError:
                if i == 0 and not rows:
                    continue  # header
                raise DecodeError(name, f"line {i + 1} is not numeric: {','.join(row)[:60]!r}") from None
    if not rows:
        raise DecodeError(name, "no samples in CSV")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise DecodeError(name, f"rows have different numbers of columns: {sorted(widths)}")
    return np.asarray(rows, dtype=np.float32)


def load_imu(path: str | os.PathLike, cfg: ImuCfg = ImuCfg()) -> np.ndarray:
    """An IMU file as ``float32 [channels, N]``."""
    name = os.fspath(path)
    try:
        if media_size(name) > cfg.max_file_bytes:
            raise DecodeError(name, "IMU file is too large")
        if name.lower().endswith(".csv"):
            array = _read_csv(name)
        else:
            array = load_npy(name, max_elements=cfg.max_file_bytes // 4)
    except DecodeError.OS_ERRORS as exc:
        raise DecodeError.from_os_error(name, exc) from None
    except UnicodeDecodeError:
        raise DecodeError(name, "CSV is not UTF-8 text") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DecodeError(name, f"not a readable IMU array ({exc})") from None
    if array.ndim != 2 or cfg.channels not in array.shape:
        raise DecodeError(name, f"expected {cfg.channels} x N or N x {cfg.channels} samples, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise DecodeError(name, f"expected numbers, got dtype {array.dtype}")
    if array.shape[0] != cfg.channels:
        array = array.T
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise DecodeError(name, "IMU data contains NaN or infinite values")
    return array


def fit_length(array: np.ndarray, length: int) -> np.ndarray:
    n = array.shape[1]
    if n > length:
        start = (n - length) // 2
        return array[:, start : start + length]
    if n < length:
        return np.pad(array, ((0, 0), (0, length - n)))
    return array


def prepare(path, cfg: ImuCfg, thumbnail: bool = True) -> Preprocessed:
    """Model input and (when ``thumbnail``) a plot of the whole recording, one line per channel."""
    from xsearch import thumbnails

    array = load_imu(path, cfg)
    meta = {}
    if thumbnail:
        meta["thumbnail"] = thumbnails.signals_thumbnail(array)
    return Preprocessed(torch.from_numpy(np.ascontiguousarray(fit_length(array, cfg.length))), meta)
