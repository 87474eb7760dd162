"""BasicMotions (the UEA archive's smartwatch set: 3-axis accelerometer + gyroscope at 10 Hz, 100 samples, four
activities, 40 train and 40 test recordings), read from the copy sktime's wheel ships, as ``.npy`` files.

The set is found without importing sktime (its import is slow): its ``.ts`` files are plain text, read here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

LABELS = ("Standing", "Walking", "Running", "Badminton")


def ts_file(split: str) -> Path | None:
    """sktime's ``BasicMotions_<SPLIT>.ts``, or ``None`` when sktime is not installed."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "BasicMotions" / f"BasicMotions_{split}.ts"
    return path if path.is_file() else None


def read_ts(path: Path) -> tuple[np.ndarray, list[str]]:
    """``(float32 [n, 6, 100], labels)`` of a ``.ts`` file: after ``@data``, a line per recording, its
    dimensions separated by ``:``, the class last."""
    lines = path.read_text().splitlines()
    series, labels = [], []
    for line in lines[lines.index("@data") + 1 :]:
        if not line.strip():
            continue
        *dimensions, label = line.split(":")
        series.append([[float(v) for v in dimension.split(",")] for dimension in dimensions])
        labels.append(label.strip())
    return np.asarray(series, np.float32), labels


def write_split(split: str, folder: Path) -> list[tuple[Path, str]]:
    """The recordings of ``split`` (``TRAIN`` or ``TEST``) as ``folder/<n>.npy`` (``[6, 100]``); their
    files and labels."""
    series, labels = read_ts(ts_file(split))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (recording, label) in enumerate(zip(series, labels)):
        np.save(folder / f"{split.lower()}_{i:02d}.npy", recording)
        out.append((folder / f"{split.lower()}_{i:02d}.npy", label))
    return out
