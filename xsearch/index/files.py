"""The files of one index folder (``<db>/faiss/<modality>/``): rows, segments, the mask and ``meta.json``,
each checked against its CRC-32; writes that readers see whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from xsearch.errors import SearchIndexError
from xsearch.index.faiss_ops import faiss_module, inner_products, to_float32

FORMAT = 2
META = "meta.json"
IDS, VECTORS, TRAINED = "rows.ids", "rows.f16", "trained.faiss"


def crc32(data, crc: int = 0) -> int:
    """CRC-32 of an array's bytes. A checksum against damage (not tampering: meta.json sits beside the
    files), chosen for speed: 4x sha256's on this CPU, which matters for 2 GB of vectors per million."""
    return zlib.crc32(as_bytes(data), crc)


def as_bytes(array) -> np.ndarray:
    """An array's bytes, without a copy when it is contiguous; also of an empty one (an emptied index), whose
    ``memoryview`` cannot be cast."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


class Rows:
    """Row-aligned ids and float16 vectors: saved rows through memory maps, rows added since in RAM.

    Rows added after saved ones also keep their float32 vectors: they become a top-up segment, whose codes
    are made from those, exactly as a build from scratch would make them. Rows of an index never saved
    need not: its first segment is the index itself.
    """

    def __init__(self, dim: int, ids=None, vectors=None):
        self.dim = dim
        self.ids_parts = [ids] if ids is not None else []
        self.vector_parts = [vectors] if vectors is not None else []
        self.saved = len(ids) if ids is not None else 0  # rows that came from files
        self.unsaved: list[np.ndarray] = []  # float32 of the rows appended after saved ones
        self._ids = None

    def __len__(self) -> int:
        return sum(len(p) for p in self.ids_parts)

    def copy(self) -> Rows:
        """Rows to append to while this one is read: the lists are new, the arrays shared (never written)."""
        out = Rows(self.dim)
        out.ids_parts, out.vector_parts = list(self.ids_parts), list(self.vector_parts)
        out.saved, out.unsaved = self.saved, list(self.unsaved)
        return out

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.concatenate(self.ids_parts) if self.ids_parts else np.empty(0, np.int64)
        return self._ids

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.saved:  # after saved rows: a top-up
            self.unsaved.append(vectors)
        self.ids_parts.append(np.asarray(ids, np.int64))
        self.vector_parts.append(vectors.astype(np.float16))
        self._ids = None

    def vectors_f16(self, start: int = 0) -> np.ndarray:
        """The float16 vectors of the rows from ``start`` on, in one array (only the parts holding them are
        copied: a top-up's new rows, not every row)."""
        parts, first = [], 0
        for part in self.vector_parts:
            if first + len(part) > start:
                parts.append(part[max(start - first, 0) :])
            first += len(part)
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float16)

    def vectors(self, rows: np.ndarray, half: bool = False) -> np.ndarray:
        """float32 (``half``: the stored float16) vectors of ``rows`` (any shape), gathered from the parts
        they live in."""
        if len(self.vector_parts) == 1:
            gathered = self.vector_parts[0][rows]
        else:
            gathered = np.empty((*rows.shape, self.dim), np.float16)
            start = 0
            for part in self.vector_parts:
                inside = (rows >= start) & (rows < start + len(part))
                if inside.any():
                    gathered[inside] = part[rows[inside] - start]
                start += len(part)
        return to_float32(gathered) if not half else gathered

    def scores(self, positions: np.ndarray, query: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Exact scores ``float32 [n]`` of the rows at ``positions`` against ``query [d]``, ``chunk`` rows
        at a time (their float32 copy, 8 MB, stays in cache)."""
        out = np.empty(len(positions), np.float32)
        for start in range(0, len(positions), chunk):
            rows = positions[start : start + chunk]
            out[start : start + len(rows)] = inner_products(self.vectors(rows), query)
        return out


VERIFIED: set[tuple] = set()  # re-rank vector files whose checksums this process has checked


def identity(path: Path, meta: dict) -> tuple | None:
    """A vectors file as it is now: path, size, mtime, inode and the checksums it must match."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    checksums = tuple(segment.get("vectors_crc32") for segment in meta.get("segments", []))
    return (str(path), info.st_size, info.st_mtime_ns, info.st_ino, checksums)


def write_trained(template, target: Path) -> int:
    faiss_module().write_index(template, str(target / TRAINED))
    return file_crc32(target / TRAINED)


def write_segment(
    target: Path, generation: int, index, start: int, stop: int, ids_crc32: int, vectors_crc32: int, in_rows: bool
) -> dict:
    """Write a segment's FAISS file (for a flat index kept in its rows, an empty one) and describe it."""
    name = f"seg-{generation}.faiss"
    faiss_module().write_index(faiss_module().IndexFlatIP(index.d) if in_rows else index, str(target / name))
    return {"file": name, "rows": [start, stop], "crc32": file_crc32(target / name),
            "ids_crc32": ids_crc32, "vectors_crc32": vectors_crc32, "in_rows": in_rows}  # fmt: skip


class RowFiles:
    """Rows written straight to ``rows.ids`` / ``rows.f16`` while a build adds them (hashed as they go)."""

    def __init__(self, directory: Path):
        self.ids, self.vectors = open(directory / IDS, "wb"), open(directory / VECTORS, "wb")
        self.ids_crc32 = self.vectors_crc32 = 0
        self.count = 0

    def write(self, ids: np.ndarray, vectors16: np.ndarray) -> None:
        self.ids.write(as_bytes(ids))
        self.vectors.write(as_bytes(vectors16))
        self.ids_crc32 = crc32(ids, self.ids_crc32)
        self.vectors_crc32 = crc32(vectors16, self.vectors_crc32)
        self.count += len(ids)

    def close(self) -> None:
        for handle in (self.ids, self.vectors):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


def replace_directory(directory: Path, new: Path) -> None:
    """``new`` takes ``directory``'s place by renames: a reader sees the old index or the new one."""
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(new, directory)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(directory: Path) -> dict:
    """``meta.json`` as a dict of this format, or ``SearchIndexError`` saying why not."""
    try:
        meta = json.loads((Path(directory) / META).read_text())
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{directory}: unreadable {META} ({str(exc).splitlines()[0]})") from None
    written = meta.get("format", 1) if isinstance(meta, dict) else None
    if isinstance(written, int) and written < FORMAT and "kind" in meta:
        raise SearchIndexError(f"{directory}: written by an older xsearch (format {written}); rebuilt")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "kind" not in meta:
        raise SearchIndexError(f"{directory}: {META} is not an index description of format {FORMAT}")
    return meta


def expect_crc32(path: Path, expected: int) -> None:
    if file_crc32(path) != expected:
        raise SearchIndexError(f"{path}: contents differ from the checksum in {META}")


def append_exactly(path: Path, array: np.ndarray, offset: int) -> None:
    """Write ``array`` at ``offset``, dropping anything after it (the tail of a top-up that was killed)."""
    with open(path, "r+b" if path.exists() else "wb") as handle:
        handle.truncate(offset)
        handle.seek(offset)
        handle.write(as_bytes(array))
        handle.flush()
        os.fsync(handle.fileno())


def open_rows(directory: Path, dim: int, count: int) -> Rows:
    """The first ``count`` saved rows, memory-mapped (files longer than that hold a killed top-up's tail)."""
    need = {IDS: count * 8, VECTORS: count * 2 * dim}
    for name, size in need.items():
        have = (directory / name).stat().st_size
        if have < size:
            raise SearchIndexError(f"{directory / name}: {have} bytes, {META} expects at least {size}")
    if count == 0:
        return Rows(dim, np.empty(0, np.int64), np.empty((0, dim), np.float16))
    ids = np.memmap(directory / IDS, np.int64, "r", shape=(count,))
    vectors = np.memmap(directory / VECTORS, np.float16, "r", shape=(count, dim))
    return Rows(dim, ids, vectors)
