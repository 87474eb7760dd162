"""FAISS indices over the store's embeddings, one per modality, with exact re-ranking.

Below ``IndexCfg.flat_threshold`` vectors an index is exact (``IndexFlatIP``). Above it, IVF-PQ with ``d / 4``
sub-quantisers of 4 bits (fast-scan: ``d / 8`` bytes a vector, 128 B at 1024-d), the same files whether a GPU
trained the centroids or not (``_train_ivfpq``); ``serve`` on a GPU answers exactly from the re-rank vectors
(``VectorIndex.use_exact``, ``xsearch.exact``). ``nlist``, ``nprobe`` and the re-rank depth come from
``search_defaults(N)``, measured on 1M vectors (BENCHMARKS.md). IVF-PQ scores are approximate, so ``search``
takes ``k * refine`` candidates and re-ranks them exactly against float16 copies of the vectors.

Layout of ``<db>/faiss/<modality>/`` (append-only, so a top-up costs what it adds):

- ``rows.ids`` / ``rows.f16``: raw int64 item ids and float16 vectors, one per *row*. A row is never
  rewritten; FAISS labels are row numbers, and the vectors are read through a memory map, so re-ranking
  never copies them into RAM.
- ``trained.faiss``: the empty trained index (coarse quantiser + PQ); ``seg-N.faiss``: the codes of one
  build or top-up (rows ``[start, stop)``), merged in memory at load.
- ``dead-G.npy``: rows masked out (deleted items, and the old rows of re-embedded ones); searches skip them
  with a FAISS ``IDSelectorBitmap``. Too many dead rows or segments and the next writer rebuilds.
- ``meta.json``, written last and atomically: what the files hold, their CRC-32 (the rows' per segment)
  and the store state covered (table version + that version's commit time, which cannot repeat even when
  a lost manifest makes a version number come back). Files that disagree with it, an unreadable
  ``meta.json``, or scores outside [-1, 1] mean damage: ``xsearch index`` rebuilds, a search rebuilds in
  memory and writes nothing.

Builds stream: a training sample, then ``id, embedding`` batches read from Lance, so memory holds the
index codes and one batch, never all vectors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import secrets
import shutil
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from xsearch.errors import SearchIndexError
from xsearch.modalities import Modality
from xsearch.store import ItemFilter

log = logging.getLogger(__name__)

FORMAT = 2
META = "meta.json"
IDS, VECTORS, TRAINED = "rows.ids", "rows.f16", "trained.faiss"


@dataclass(frozen=True)
class IndexCfg:
    flat_threshold: int = 50_000  # exact search below this many vectors
    nlist: int | None = None  # IVF lists; None: ``search_defaults``
    nprobe: int | None = None  # lists visited per query; None: ``search_defaults``
    refine_factor: int | None = None  # candidates re-ranked exactly: k * refine_factor; None: ``search_defaults``
    pq_bytes_per_dim: float = 1 / 8  # PQ code size: d/4 sub-quantisers of 4 bits = d/8 bytes (128 B at 1024-d)
    train_size: int | None = None  # training sample; None: 50 points per list, at most 100k
    chunk_rows: int = 16_384  # rows read from the store per batch while building
    max_segments: int = 16  # more top-ups than this and the next writer rebuilds
    max_dead_fraction: float = 0.25  # ... or more masked rows than this
    use_gpu: bool | None = (
        None  # k-means of the IVF centroids, and a build's list assignment, on a GPU; None: when faiss sees one
    )


def search_defaults(n: int) -> tuple[int, int, int]:
    """``(nlist, nprobe, refine_factor)`` for an IVF-PQ index of ``n`` vectors (recall@10 >= 0.95 in
    ``benchmarks/search.py`` on embedding-like vectors; the table is in BENCHMARKS.md)."""
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(n), 16)))
    nlist = int(min(nlist, max(n // 39, 16)))
    return nlist, default_nprobe(nlist), 15


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(16, nlist // 32))


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    try:
        return _faiss().get_num_gpus() > 0
    except Exception:  # a faiss build without GPU support
        return False


def torch_device(device):
    import torch

    return torch.device(device)


def _free_bytes(device) -> int:
    """Free memory on ``device`` (a CUDA device's, or the machine's RAM for the CPU)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _crc32(data, crc: int = 0) -> int:
    """CRC-32 of an array's bytes. A checksum against damage (not tampering: meta.json sits beside the
    files), chosen for speed: 4x sha256's on this CPU, which matters for 2 GB of vectors per million."""
    return zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B"), crc)


def _file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _to_float32(half: np.ndarray) -> np.ndarray:
    """float16 -> float32 through FAISS's SIMD fp16 decoder: exact, and twice as fast as numpy's ``astype``,
    which is most of a re-rank's time."""
    dim = half.shape[-1]
    decoder = _FP16_DECODERS.get(dim)
    if decoder is None:
        faiss = _faiss()
        decoder = _FP16_DECODERS[dim] = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)
    codes = np.ascontiguousarray(half).reshape(-1, dim).view(np.uint8)
    return decoder.sa_decode(codes).reshape(half.shape) if len(codes) else half.astype(np.float32)


_FP16_DECODERS: dict[int, object] = {}
_RERANK_CHUNK = 32  # queries re-ranked together (bounds the [q, candidates, d] float32 gather)
_SCORE_SLACK = 1e-2  # float16 vectors: a cosine may round a little past 1


class _Rows:
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
        return _to_float32(gathered) if not half else gathered


class VectorIndex:
    """One modality's FAISS index (labels are row numbers), its rows and the rows masked out."""

    def __init__(self, index, template, rows: _Rows, dead: np.ndarray, kind: str, cfg: IndexCfg):
        self.index = index  # a CPU index holding every row's code (its centroids found on a GPU when there is one)
        self.template = template  # the empty trained index new segments start from
        self.rows = rows
        self.dead = dead  # bool per row
        self.kind = kind
        self.cfg = cfg
        self.saved_rows = 0  # rows already in files (set by ``load`` / ``save``)
        self.trained_crc32: int | None = None  # of ``trained.faiss``, once written or read
        self.nprobe, self.refine = cfg.nprobe, cfg.refine_factor
        self._selector = None
        self._live_ids = None
        self._exact = None  # an ExactSearcher holding the rows on a GPU (``use_exact``)
        self._rerank_device = None  # past the exact budget: IVF candidates re-ranked there (``use_exact``)
        self._exact_stale = True
        # A flat index over float16 vectors (moments) keeps them only in ``rows.f16``: its segment files are
        # empty and filled from the rows when loaded (the float32 copy would hold nothing more).
        self.vectors_in_rows = False

    def __len__(self) -> int:
        return int(len(self.dead) - self.dead.sum())

    @property
    def ids(self) -> np.ndarray:
        """The live item ids, sorted."""
        if self._live_ids is None:
            self._live_ids = np.sort(self.rows.ids[~self.dead])
        return self._live_ids

    # ---- building --------------------------------------------------------------------------------------

    @classmethod
    def empty(cls, dim: int, n_expected: int, cfg: IndexCfg, sample: np.ndarray | None = None) -> VectorIndex:
        """A trained, empty index for about ``n_expected`` vectors (IVF-PQ trained on ``sample``)."""
        faiss = _faiss()
        if n_expected < cfg.flat_threshold:
            template, kind = faiss.IndexFlatIP(dim), "flat"
        else:
            template, kind = _train_ivfpq(_normalise(sample), n_expected, cfg)
        index = faiss.clone_index(template)
        out = cls(index, template, _Rows(dim), np.zeros(0, bool), kind, cfg)
        out._tune(n_expected)
        return out

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, cfg: IndexCfg = IndexCfg()) -> VectorIndex:
        """An index of vectors held in memory (tests, benchmarks); ``IndexSet`` builds from the store."""
        ids = np.asarray(ids, np.int64)
        sample = None
        if len(ids) >= cfg.flat_threshold:
            picks = np.random.default_rng(0).choice(len(ids), min(len(ids), _train_size(len(ids), cfg)), False)
            sample = vectors[np.sort(picks)]
        index = cls.empty(vectors.shape[1], len(ids), cfg, sample)
        with assigned_by(index.index, _gpu_quantizer(index.index, cfg)):
            for start in range(0, len(ids), cfg.chunk_rows):
                index.add(ids[start : start + cfg.chunk_rows], vectors[start : start + cfg.chunk_rows])
        log.info("built %s index of %d vectors", index.kind, len(ids))
        return index

    def _tune(self, n: int) -> None:
        if self.kind == "flat":
            return
        ivf = _faiss().extract_index_ivf(self.index)
        self.nprobe = ivf.nprobe = self.cfg.nprobe or default_nprobe(ivf.nlist)
        self.refine = self.cfg.refine_factor or search_defaults(n)[2]

    # ---- updates ---------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append rows (a re-embedded item's old row must be removed first)."""
        if len(ids) == 0:
            return
        vectors = _normalise(vectors)
        _add_rows(self.index, vectors, len(self.rows))
        self.rows.append(ids, vectors)
        self.dead = np.concatenate([self.dead, np.zeros(len(ids), bool)])
        self._changed()

    def remove(self, ids: np.ndarray) -> None:
        """Mask the rows of ``ids`` (a search skips them; the next rebuild drops them)."""
        if len(ids) == 0:
            return
        self.dead |= np.isin(self.rows.ids, np.asarray(ids, np.int64))
        self._changed()

    def _changed(self) -> None:
        self._selector = self._live_ids = None
        self._exact_stale = True

    def use_exact(self, device, budget_bytes: int | None = None) -> bool:
        """Answer searches exactly on ``device`` (a GPU) from the rows' float16 vectors, when they fit
        ``budget_bytes`` (default: half the device's free memory). Returns whether it does; the index files
        are unchanged. Past the budget, the IVF index proposes candidates and the device re-ranks them."""
        from xsearch.exact import ExactSearcher

        device = torch_device(device)
        if budget_bytes is None:
            budget_bytes = _free_bytes(device) // 2
        if ExactSearcher.bytes_for(len(self.rows), self.rows.dim) > budget_bytes:
            log.info("%d vectors exceed the exact-search budget on %s: IVF, re-ranked there", len(self.rows), device)
            self._exact, self._rerank_device = None, device
            return False
        self._exact, self._exact_stale, self._rerank_device = ExactSearcher(device), True, None
        return True

    def needs_rebuild(self, topups: int) -> str | None:
        if topups > self.cfg.max_segments:
            return f"{topups} top-ups since the last build"
        if len(self.dead) and self.dead.mean() > self.cfg.max_dead_fraction:
            return f"{self.dead.mean():.0%} of rows masked"
        if self.kind == "flat" and len(self) >= self.cfg.flat_threshold:
            return "outgrew the exact index"
        return None

    # ---- search ----------------------------------------------------------------------------------------

    def _params(self):
        faiss = _faiss()
        if self.dead.any() and self._selector is None:
            bits = np.packbits(~self.dead, bitorder="little")
            self._selector = (faiss.IDSelectorBitmap(len(self.dead), faiss.swig_ptr(bits)), bits)  # bits kept alive
        selector = self._selector[0] if self._selector is not None and self.dead.any() else None
        if self.kind == "flat":
            return faiss.SearchParameters(sel=selector) if selector is not None else None
        return faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [q, k], ids [q, k])``, best first; ids are -1 and scores -inf where fewer than k exist."""
        queries = _normalise(np.atleast_2d(queries))
        k_eff = min(k, len(self))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        if k_eff == 0:
            return scores, out_ids
        if self._exact is not None:
            if self._exact_stale:
                self._exact.refresh(self.rows.vectors_f16(start=len(self._exact)), self.dead)
                self._exact_stale = False
            s, rows = self._exact.search(queries, k_eff)
            self._check(s)
            scores[:, :k_eff] = s
            out_ids[:, :k_eff] = np.where(rows >= 0, self.rows.ids[np.maximum(rows, 0)], -1)
            return scores, out_ids
        params = self._params()
        if self.kind == "flat":
            s, rows = self.index.search(queries, k_eff, params=params)
            self._check(s)
            scores[:, :k_eff] = s
            out_ids[:, :k_eff] = np.where(rows >= 0, self.rows.ids[np.maximum(rows, 0)], -1)
            return scores, out_ids
        _, cand = self.index.search(queries, min(len(self), k_eff * self.refine), params=params)
        for start in range(0, len(queries), _RERANK_CHUNK):
            block = cand[start : start + _RERANK_CHUNK]
            valid = block >= 0
            rows = np.where(valid, block, 0)
            # Exact scores of all candidates of a block of queries at once: [q, c, d] @ [q, d] -> [q, c].
            exact = self._rerank(rows, queries[start : start + _RERANK_CHUNK])
            self._check(exact[valid])
            exact[~valid] = -np.inf
            top = np.argsort(-exact, axis=1)[:, :k_eff]
            top_scores = np.take_along_axis(exact, top, 1)
            top_rows = np.take_along_axis(block, top, 1)
            scores[start : start + len(block), :k_eff] = top_scores
            out_ids[start : start + len(block), :k_eff] = np.where(
                np.isfinite(top_scores), self.rows.ids[np.maximum(top_rows, 0)], -1
            )
        return scores, out_ids

    def _rerank(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Exact scores ``[q, c]`` of each query against its candidate rows ``[q, c]``: on the CPU, or on the
        re-rank device past the exact budget (``use_exact``)."""
        if self._rerank_device is not None:
            from xsearch.exact import rerank

            return rerank(self.rows.vectors(rows, half=True), queries, self._rerank_device)
        return np.matmul(self.rows.vectors(rows), queries[:, :, None])[..., 0]

    @staticmethod
    def _check(scores: np.ndarray) -> None:
        """Cosines of unit vectors lie in [-1, 1]: anything else is a damaged file, not a ranking."""
        finite = scores[np.isfinite(scores)]
        if (finite.size and np.abs(finite).max() > 1 + _SCORE_SLACK) or np.isnan(scores).any():
            raise SearchIndexError("the index returned scores outside [-1, 1]: its files are damaged")

    # ---- files -----------------------------------------------------------------------------------------

    def save(
        self, directory: Path, covers: dict, segments: list[dict] | None = None, topup: bool = False
    ) -> list[dict]:
        """Write what changed since the last save; ``meta.json`` last, atomically. Returns the segments.

        ``segments`` (from ``load``) is ``None`` for a fresh directory: everything is written to a temporary
        one renamed over the old. Otherwise rows are appended and a segment file added for them.
        """
        faiss = _faiss()
        directory = Path(directory)
        fresh = segments is None
        target = directory.with_name(directory.name + ".tmp") if fresh else directory
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            self.trained_crc32 = _write_trained(self.template, target)
            segments = []
        start, stop = self.saved_rows, len(self.rows)
        generation = len(segments)
        if stop > start or fresh:
            ids = self.rows.ids[start:stop]
            if start == 0:  # every row is new: the segment is the index itself
                segment = self.index
                vectors = self.rows.vectors_f16()
            else:
                exact = np.concatenate(self.rows.unsaved)
                segment = faiss.clone_index(self.template)
                _add_rows(segment, exact, start)
                vectors = exact.astype(np.float16)
            _append_exactly(target / IDS, ids, start * 8)
            _append_exactly(target / VECTORS, vectors, start * 2 * self.rows.dim)
            crcs = _crc32(ids), _crc32(vectors)
            segments = [*segments, _segment(target, generation, segment, start, stop, *crcs, self._in_rows)]
            segments[-1]["topup"] = topup
        self._commit(target, segments, covers)
        if fresh:
            _replace_directory(directory, target)
        self.saved_rows = stop
        self.rows = _open_rows(directory, self.rows.dim, stop)  # the saved rows, memory-mapped again
        return segments

    @property
    def _in_rows(self) -> bool:
        return self.vectors_in_rows and self.kind == "flat"

    def _commit(self, target: Path, segments: list[dict], covers: dict) -> None:
        """The mask, then ``meta.json`` (atomically): what readers trust is written last."""
        dead_name = f"dead-{secrets.token_hex(6)}.npy"  # a new name each time: meta.json switches atomically
        np.save(target / dead_name, np.flatnonzero(self.dead))
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "dim": self.rows.dim,
            "rows": len(self.rows),
            "count": len(self),
            "cfg": asdict(self.cfg),
            "trained_crc32": self.trained_crc32,
            "segments": segments,
            "dead": dead_name,
            "dead_crc32": _file_crc32(target / dead_name),
            "vectors_in_rows": self.vectors_in_rows,
            **covers,
        }
        tmp = target / (META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, target / META)
        for stale in target.glob("dead-*.npy"):
            if stale.name != dead_name:
                stale.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path, cfg: IndexCfg | None = None, verify: bool = False) -> tuple[VectorIndex, dict]:
        """Open an index directory, checking every file against ``meta.json``. The re-rank vectors (the bulk
        of the bytes) are checked once per process for each version of the file (``verify``: every time):
        a damaged page of them would silently rank wrong, so searches check them too."""
        faiss = _faiss()
        directory = Path(directory)
        meta = read_meta(directory)
        identity = _identity(directory / VECTORS, meta)
        verify = verify or identity not in _VERIFIED
        try:
            _expect_crc32(directory / TRAINED, meta["trained_crc32"])
            _expect_crc32(directory / meta["dead"], meta["dead_crc32"])
            template = faiss.read_index(str(directory / TRAINED))
            index = faiss.clone_index(template)
            rows = _open_rows(directory, meta["dim"], meta["rows"])
            for segment in meta["segments"]:
                _expect_crc32(directory / segment["file"], segment["crc32"])
                part = faiss.read_index(str(directory / segment["file"]))
                start, stop = segment["rows"]
                if segment.get("in_rows"):  # a flat segment kept as its float16 rows
                    part.add(_to_float32(rows.vector_parts[0][start:stop]))
                if part.ntotal != stop - start or index.ntotal != start:
                    raise SearchIndexError(
                        f"{directory / segment['file']}: holds {part.ntotal} rows, not {stop - start}"
                    )
                index.merge_from(part, 0)
            for segment in meta["segments"]:
                start, stop = segment["rows"]
                if _crc32(rows.ids_parts[0][start:stop]) != segment["ids_crc32"]:
                    raise SearchIndexError(f"{directory / IDS}: rows {start}-{stop} differ from their checksum")
                if verify and _crc32(rows.vector_parts[0][start:stop]) != segment["vectors_crc32"]:
                    raise SearchIndexError(f"{directory / VECTORS}: rows {start}-{stop} differ from their checksum")
            dead = np.zeros(meta["rows"], bool)
            dead[np.load(directory / meta["dead"])] = True
            if verify and identity is not None:
                _VERIFIED.add(identity)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
            raise SearchIndexError(f"{directory}: unreadable index ({str(exc).splitlines()[0]})") from None
        stored_cfg = IndexCfg(**{f.name: meta["cfg"][f.name] for f in fields(IndexCfg) if f.name in meta["cfg"]})
        out = cls(index, template, rows, dead, meta["kind"], cfg or stored_cfg)
        out.saved_rows, out.trained_crc32 = meta["rows"], meta["trained_crc32"]
        out.vectors_in_rows = bool(meta.get("vectors_in_rows"))
        out._tune(len(out))
        return out, meta


_VERIFIED: set[tuple] = set()  # re-rank vector files whose checksums this process has checked


def _identity(path: Path, meta: dict) -> tuple | None:
    """A vectors file as it is now: path, size, mtime, inode and the checksums it must match."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    checksums = tuple(segment.get("vectors_crc32") for segment in meta.get("segments", []))
    return (str(path), info.st_size, info.st_mtime_ns, info.st_ino, checksums)


def _write_trained(template, target: Path) -> int:
    _faiss().write_index(template, str(target / TRAINED))
    return _file_crc32(target / TRAINED)


def _segment(
    target: Path, generation: int, index, start: int, stop: int, ids_crc32: int, vectors_crc32: int, in_rows: bool
) -> dict:
    """Write a segment's FAISS file (for a flat index kept in its rows, an empty one) and describe it."""
    name = f"seg-{generation}.faiss"
    _faiss().write_index(_faiss().IndexFlatIP(index.d) if in_rows else index, str(target / name))
    return {"file": name, "rows": [start, stop], "crc32": _file_crc32(target / name),
            "ids_crc32": ids_crc32, "vectors_crc32": vectors_crc32, "in_rows": in_rows}  # fmt: skip


class _RowFiles:
    """Rows written straight to ``rows.ids`` / ``rows.f16`` while a build adds them (hashed as they go)."""

    def __init__(self, directory: Path):
        self.ids, self.vectors = open(directory / IDS, "wb"), open(directory / VECTORS, "wb")
        self.ids_crc32 = self.vectors_crc32 = 0
        self.count = 0

    def write(self, ids: np.ndarray, vectors16: np.ndarray) -> None:
        self.ids.write(memoryview(np.ascontiguousarray(ids)).cast("B"))
        self.vectors.write(memoryview(np.ascontiguousarray(vectors16)).cast("B"))
        self.ids_crc32 = _crc32(ids, self.ids_crc32)
        self.vectors_crc32 = _crc32(vectors16, self.vectors_crc32)
        self.count += len(ids)

    def close(self) -> None:
        for handle in (self.ids, self.vectors):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


def _replace_directory(directory: Path, new: Path) -> None:
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


def _expect_crc32(path: Path, expected: int) -> None:
    if _file_crc32(path) != expected:
        raise SearchIndexError(f"{path}: contents differ from the checksum in {META}")


def _append_exactly(path: Path, array: np.ndarray, offset: int) -> None:
    """Write ``array`` at ``offset``, dropping anything after it (the tail of a top-up that was killed)."""
    with open(path, "r+b" if path.exists() else "wb") as handle:
        handle.truncate(offset)
        handle.seek(offset)
        handle.write(memoryview(np.ascontiguousarray(array)).cast("B"))
        handle.flush()
        os.fsync(handle.fileno())


def _open_rows(directory: Path, dim: int, count: int) -> _Rows:
    """The first ``count`` saved rows, memory-mapped (files longer than that hold a killed top-up's tail)."""
    need = {IDS: count * 8, VECTORS: count * 2 * dim}
    for name, size in need.items():
        have = (directory / name).stat().st_size
        if have < size:
            raise SearchIndexError(f"{directory / name}: {have} bytes, {META} expects at least {size}")
    if count == 0:
        return _Rows(dim, np.empty(0, np.int64), np.empty((0, dim), np.float16))
    ids = np.memmap(directory / IDS, np.int64, "r", shape=(count,))
    vectors = np.memmap(directory / VECTORS, np.float16, "r", shape=(count, dim))
    return _Rows(dim, ids, vectors)


def _add_rows(index, vectors: np.ndarray, first_row: int) -> None:
    """Add vectors labelled with their row numbers. A flat index labels by position: rows are added in
    order, and its segments are merged in order, so the position is the row."""
    if isinstance(index, _faiss().IndexFlat):
        index.add(vectors)
    else:
        index.add_with_ids(vectors, np.arange(first_row, first_row + len(vectors), dtype=np.int64))


def _train_size(n: int, cfg: IndexCfg) -> int:
    if cfg.train_size:
        return cfg.train_size
    nlist = cfg.nlist or search_defaults(n)[0]
    return min(50 * nlist, 100_000)  # memory: 400 MB of samples at 1024-d, and as much for PQ's residuals


def _train_ivfpq(sample: np.ndarray, n: int, cfg: IndexCfg, clustering=None):
    """The empty trained IVF-PQ fast-scan index: one recipe on every machine, so that files built on a GPU
    server are searched on a laptop and the reverse. A GPU, when there is one, does the expensive and
    portable part, the k-means of the IVF centroids (FAISS's ``clustering_index``, as its ``bench_all_ivf``
    does); ``clustering`` names another index for that (tests). The PQ codes are trained and added on the
    CPU: FAISS's GPU IVF-PQ has no fast-scan and caps 1024-d codes at 64 bytes (recall 0.785 where this
    recipe reaches 0.906, measured on an H200)."""
    faiss = _faiss()
    d = sample.shape[1]
    nlist = cfg.nlist or search_defaults(n)[0]
    nlist = min(nlist, max(len(sample) // 39, 1))
    m = max(1, int(d * cfg.pq_bytes_per_dim * 2))  # 4-bit codes: two sub-quantisers per byte
    spec = f"IVF{nlist},PQ{m}x4fs"
    index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    clustering = clustering if clustering is not None else _gpu_clustering_index(d, cfg)
    if clustering is not None:
        ivf.clustering_index = clustering  # k-means assigns there; the centroids land in the CPU quantiser
    try:
        index.train(sample)
    finally:
        ivf.clustering_index = None  # no GPU object in what is saved; ``clustering`` lives until here
    return index, spec


def _gpu_clustering_index(d: int, cfg: IndexCfg):
    """An exact inner-product index on GPU 0 for k-means assignments, or ``None`` without a GPU."""
    if not (gpu_available() if cfg.use_gpu is None else cfg.use_gpu):
        return None
    faiss = _faiss()
    config = faiss.GpuIndexFlatConfig()
    config.device = 0
    return faiss.GpuIndexFlatIP(_gpu_resources(), d, config)


def _gpu_quantizer(index, cfg: IndexCfg):
    """The IVF centroids of ``index`` in an exact index on GPU 0, for a build to assign its rows to lists
    there; ``None`` for a flat index or without a GPU."""
    if isinstance(index, _faiss().IndexFlat) or not (gpu_available() if cfg.use_gpu is None else cfg.use_gpu):
        return None
    faiss = _faiss()
    return faiss.index_cpu_to_gpu(_gpu_resources(), 0, faiss.extract_index_ivf(index).quantizer)


@contextlib.contextmanager
def assigned_by(index, quantizer):
    """Rows added inside are assigned to their IVF lists by ``quantizer`` (the same centroids, held where
    the nearest one is found faster: a GPU); the index's own quantiser is back when done, so what is saved
    is the CPU recipe. ``quantizer=None``: the index's own. The PQ codes are made on the CPU either way
    (fast-scan codes have no GPU encoder, and FAISS's ``add_core`` with precomputed lists fails on their
    block inverted lists in faiss 1.15.1), so this is the one part of adding a GPU can take."""
    if quantizer is None:
        yield
        return
    ivf = _faiss().extract_index_ivf(index)
    own = ivf.quantizer
    ivf.quantizer = quantizer
    try:
        yield
    finally:
        ivf.quantizer = own


@functools.lru_cache(maxsize=1)
def _gpu_resources():
    """FAISS's GPU memory and streams, made once per process (they are costly) and kept alive."""
    return _faiss().StandardGpuResources()


class IndexSet:
    """The per-modality indices of one store, kept next to it in ``<db>/faiss/<modality>/`` (those of its
    moments, ``store.moments()``, in ``<db>/faiss-moments/<modality>/``)."""

    def __init__(self, store, cfg: IndexCfg = IndexCfg()):
        self.store = store
        self.cfg = cfg
        table = getattr(store, "table", "items")
        self.root = Path(store.path) / ("faiss" if table == "items" else f"faiss-{table}")
        self.vectors_in_rows = table != "items"  # moments are float16 at the source: rows.f16 loses nothing

    def directory(self, modality: Modality) -> Path:
        return self.root / str(modality)

    def _covers(self, modality: Modality, version: int) -> dict:
        return {
            "table_version": version,
            "version_key": self.store.version_key(version),
            "model_id": self.store.model_id,
            "modality": str(modality),
            # Rows re-embedded in place keep their id; their newer ``indexed_at`` is how a top-up finds them.
            "indexed_until": self.store.last_indexed_at(version),
        }

    def _is_current(self, meta: dict, modality: Modality, version: int) -> bool:
        return (
            meta.get("version_key") == self.store.version_key(version)
            and meta.get("model_id") == self.store.model_id
            and meta.get("modality") == str(modality)
        )

    def status(self, modality: Modality, check: bool = False) -> dict:
        """What is on disk for ``modality``: kind, count, covered version, whether it is fresh or damaged.
        ``check`` reads every file against its checksum (the re-rank vectors too), not only ``meta.json``."""
        directory = self.directory(modality)
        if not (directory / META).exists():
            return {"modality": str(modality), "exists": False, "fresh": False}
        try:
            meta = VectorIndex.load(directory, self.cfg, verify=True)[1] if check else read_meta(directory)
        except SearchIndexError as exc:
            return {"modality": str(modality), "exists": True, "fresh": False, "damaged": str(exc)}
        fresh = self._is_current(meta, modality, self.store.version)
        return {**meta, "modality": str(modality), "exists": True, "fresh": fresh}

    def build(self, modality: Modality, persist: bool = True) -> VectorIndex:
        """A new index from the store, streamed: a training sample first, then batches of rows."""
        version = self.store.version
        where = ItemFilter(modality=modality)
        n = self.store.count(modality, version=version)
        sample = None
        if n >= self.cfg.flat_threshold:
            sample = self._sample(where, version, n, _train_size(n, self.cfg))
        index = VectorIndex.empty(self.store.embed_dim, n, self.cfg, sample)
        del sample
        batches = self.store.iter_vectors(where, version, self.cfg.chunk_rows)
        if not persist:
            with assigned_by(index.index, _gpu_quantizer(index.index, self.cfg)):
                for ids, vectors in batches:
                    index.add(ids, vectors)
            return index
        # Rows go straight to files as they are added: RAM holds the index codes and one batch, never every
        # vector. The directory is built beside the old one and renamed over it when complete.
        directory = self.directory(modality)
        building = directory.with_name(directory.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        files = _RowFiles(building)
        try:
            with assigned_by(index.index, _gpu_quantizer(index.index, self.cfg)):
                for ids, vectors in batches:
                    vectors = _normalise(vectors)
                    _add_rows(index.index, vectors, files.count)
                    files.write(np.asarray(ids, np.int64), vectors.astype(np.float16))
        finally:
            files.close()
        index.rows = _open_rows(building, self.store.embed_dim, files.count)
        index.dead = np.zeros(files.count, bool)
        index.saved_rows = files.count
        index.trained_crc32 = _write_trained(index.template, building)
        index.vectors_in_rows = self.vectors_in_rows
        crcs = files.ids_crc32, files.vectors_crc32
        segment = _segment(building, 0, index.index, 0, files.count, *crcs, index._in_rows)
        index._commit(building, [segment], self._covers(modality, version))
        _replace_directory(directory, building)
        index.rows = _open_rows(directory, self.store.embed_dim, files.count)
        log.info("%s index: built %s of %d vectors", modality, index.kind, len(index))
        return index

    def _sample(self, where: ItemFilter, version: int, n: int, size: int) -> np.ndarray:
        """``size`` vectors at seeded random positions among the ``n`` rows, read in one streaming pass."""
        picks = np.sort(np.random.default_rng(0).choice(n, size=min(n, size), replace=False))
        out = np.empty((len(picks), self.store.embed_dim), np.float32)  # filled in place: no second copy
        seen = taken = 0
        for _, vectors in self.store.iter_vectors(where, version, self.cfg.chunk_rows):
            inside = picks[(picks >= seen) & (picks < seen + len(vectors))] - seen
            out[taken : taken + len(inside)] = vectors[inside]
            taken += len(inside)
            seen += len(vectors)
        return out[:taken]

    def fresh(self, modality: Modality, persist: bool = True) -> VectorIndex:
        """The index for ``modality``, brought up to date with the store first (add / mask / rebuild).

        ``persist=False`` (searches) brings it up to date in memory only and writes nothing. Damaged files
        are rebuilt (in memory only for a search).
        """
        return self.current(modality, persist)[0]

    def current(
        self, modality: Modality, persist: bool = True, previous: tuple[VectorIndex, dict] | None = None
    ) -> tuple[VectorIndex, dict]:
        """``fresh``, with what the index covers now (its ``meta``). ``previous``: an index already in memory
        and its meta (a search engine's, from an earlier snapshot) to top up instead of loading the files."""
        directory = self.directory(modality)
        if previous is not None:
            index, meta = previous
        elif not (directory / META).exists():
            if not persist:
                log.info("%s index: none on disk; built in memory for this search", modality)
            return self.rebuild(modality, persist)
        else:
            try:
                index, meta = VectorIndex.load(directory, self.cfg, verify=persist)
            except SearchIndexError as exc:
                log.warning("%s; rebuilding%s", exc, "" if persist else " in memory (run xsearch index to repair)")
                return self.rebuild(modality, persist)
        version = self.store.version
        if meta.get("model_id") != self.store.model_id or meta.get("modality") != str(modality):
            return self.rebuild(modality, persist)
        if self._is_current(meta, modality, version):
            return index, meta
        if meta.get("indexed_until") is None or meta.get("table_version", -1) > version:
            return self.rebuild(modality, persist)  # covers a version the table no longer has
        # Ids are unique on both sides: ``assume_unique`` skips numpy's hashing unique(), seconds at 1M rows.
        current = np.sort(self.store.ids(modality, version=version))
        live = index.ids
        added = np.setdiff1d(current, live, assume_unique=True)
        removed = np.setdiff1d(live, current, assume_unique=True)
        after = np.sort(self.store.ids_indexed_after(meta["indexed_until"], modality, version))
        updated = np.intersect1d(after, live, assume_unique=True)
        index.remove(np.union1d(removed, updated))
        found, vectors = self.store.vectors(np.union1d(added, updated))
        index.add(found, vectors)
        reason = index.needs_rebuild(sum(1 for s in meta["segments"] if s.get("topup")) + 1)
        if reason:
            log.info("%s index: rebuilding (%s)", modality, reason)
            return self.rebuild(modality, persist)
        where = "saved" if persist else "in memory only; xsearch index saves it"
        log.info("%s index: topped up (%d rows added, %d masked; %s)", modality, len(found), len(removed), where)
        covers = self._covers(modality, version)
        if persist:
            segments = index.save(directory, covers, meta["segments"], topup=True)
        else:
            segments = [*meta["segments"], {"topup": True}]  # counted towards the next rebuild, as on disk
        return index, {**covers, "segments": segments}

    def rebuild(self, modality: Modality, persist: bool = True) -> tuple[VectorIndex, dict]:
        """A new index from the store, and what it covers (``build``, with the meta ``current`` returns)."""
        index = self.build(modality, persist)
        return index, {**self._covers(modality, self.store.version), "segments": []}
