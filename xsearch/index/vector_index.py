"""``VectorIndex``: one modality's FAISS index (labels are row numbers), its rows and the rows masked out;
exact below the flat threshold, IVF-PQ re-ranked exactly against float16 rows above it."""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from xsearch.errors import SearchIndexError
from xsearch.index.faiss_ops import (
    add_rows,
    faiss_module,
    inner_products,
    normalise,
    to_float32,
    train_ivfpq,
    train_size,
)
from xsearch.index.files import (
    FORMAT,
    IDS,
    META,
    TRAINED,
    VECTORS,
    VERIFIED,
    Rows,
    append_exactly,
    crc32,
    expect_crc32,
    file_crc32,
    identity,
    open_rows,
    read_meta,
    replace_directory,
    write_segment,
    write_trained,
)
from xsearch.index.gpu import assigned_by, free_bytes, gpu_quantizer, torch_device
from xsearch.index.params import IndexCfg, default_nprobe, search_defaults

log = logging.getLogger(__name__)

_RERANK_CHUNK = 32  # queries re-ranked together (bounds the [q, candidates, d] float32 gather)
_SCORE_SLACK = 1e-2  # float16 vectors: a cosine may round a little past 1


class VectorIndex:
    """One modality's FAISS index (labels are row numbers), its rows and the rows masked out."""

    def __init__(self, index, template, rows: Rows, dead: np.ndarray, kind: str, cfg: IndexCfg):
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
        self._live: int | None = None  # rows not masked
        self._prepared = False
        self._live_ids = None
        self._exact = None  # an ExactSearcher holding the rows on a GPU (``use_exact``)
        self._rerank_device = None  # past the exact budget: IVF candidates re-ranked there (``use_exact``)
        self._exact_stale = True
        # A flat index over float16 vectors (moments) keeps them only in ``rows.f16``: its segment files are
        # empty and filled from the rows when loaded (the float32 copy would hold nothing more).
        self.vectors_in_rows = False

    def __len__(self) -> int:
        if self._live is None:
            self._live = int(len(self.dead) - self.dead.sum())
        return self._live

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
        faiss = faiss_module()
        if n_expected < cfg.flat_threshold:
            template, kind = faiss.IndexFlatIP(dim), "flat"
        else:
            template, kind = train_ivfpq(normalise(sample), n_expected, cfg)
        index = faiss.clone_index(template)
        out = cls(index, template, Rows(dim), np.zeros(0, bool), kind, cfg)
        out._tune(n_expected)
        return out

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, cfg: IndexCfg = IndexCfg()) -> VectorIndex:
        """An index of vectors held in memory (tests, benchmarks); ``IndexSet`` builds from the store."""
        ids = np.asarray(ids, np.int64)
        sample = None
        if len(ids) >= cfg.flat_threshold:
            picks = np.random.default_rng(0).choice(len(ids), min(len(ids), train_size(len(ids), cfg)), False)
            sample = vectors[np.sort(picks)]
        index = cls.empty(vectors.shape[1], len(ids), cfg, sample)
        with assigned_by(index.index, gpu_quantizer(index.index, cfg)):
            for start in range(0, len(ids), cfg.chunk_rows):
                index.add(ids[start : start + cfg.chunk_rows], vectors[start : start + cfg.chunk_rows])
        log.info("built %s index of %d vectors", index.kind, len(ids))
        return index

    def _tune(self, n: int) -> None:
        if self.kind == "flat":
            return
        ivf = faiss_module().extract_index_ivf(self.index)
        self.nprobe = ivf.nprobe = self.cfg.nprobe or default_nprobe(ivf.nlist)
        self.refine = self.cfg.refine_factor or search_defaults(n)[2]

    # ---- updates ---------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append rows (a re-embedded item's old row must be removed first)."""
        if len(ids) == 0:
            return
        vectors = normalise(vectors)
        add_rows(self.index, vectors, len(self.rows))
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
        self._selector = self._live_ids = self._live = None
        self._exact_stale, self._prepared = True, False

    def copy(self) -> VectorIndex:
        """A copy that a top-up may change while searches still read this one: the FAISS index cloned, the
        rows' arrays shared (they are never written in place), the mask copied; not prepared, and not on a
        device until offered one."""
        out = copy.copy(self)
        out.index = faiss_module().clone_index(self.index)
        out.rows, out.dead, out._exact = self.rows.copy(), self.dead.copy(), None
        out._changed()
        return out

    def prepare(self) -> None:
        """Make what searches read (the mask's selector, the device copy, the live ids and count) before
        threads share the index: ``search`` then changes nothing, so several may run at once."""
        if self._prepared:
            return
        if self.dead.any() and self._selector is None:
            bits = np.packbits(~self.dead, bitorder="little")
            faiss = faiss_module()
            self._selector = (faiss.IDSelectorBitmap(len(self.dead), faiss.swig_ptr(bits)), bits)  # bits kept alive
        if self._exact is not None and self._exact_stale:
            self._exact.refresh(self.rows.vectors_f16(start=len(self._exact)), self.dead)
            self._exact_stale = False
        len(self), self.ids  # noqa: B018  (cached)
        self._prepared = True

    def use_exact(self, device, budget_bytes: int | None = None) -> bool:
        """Answer searches exactly on ``device`` (a GPU) from the rows' float16 vectors, when they fit
        ``budget_bytes`` (default: half the device's free memory). Returns whether it does; the index files
        are unchanged. Past the budget, the IVF index proposes candidates and the device re-ranks them."""
        from xsearch.exact import ExactSearcher

        device = torch_device(device)
        if budget_bytes is None:
            budget_bytes = free_bytes(device) // 2
        if ExactSearcher.bytes_for(len(self.rows), self.rows.dim) > budget_bytes:
            log.info("%d vectors exceed the exact-search budget on %s: IVF, re-ranked there", len(self.rows), device)
            self._exact, self._rerank_device = None, device
            return False
        self._exact, self._rerank_device = ExactSearcher(device), None
        self._exact_stale, self._prepared = True, False
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

    @property
    def scores_exactly(self) -> bool:
        """Whether ``search`` scores every row it may return exactly on the CPU (a flat index), so that a
        search ``within`` some ids is an exact search of those."""
        return self.kind == "flat" and self._exact is None

    def _params(self, within: np.ndarray | None = None):
        faiss = faiss_module()
        selector = self._selector[0] if self._selector is not None else None
        if within is not None:  # this search's own selector: the live rows of those ids
            bits = np.packbits(~self.dead & np.isin(self.rows.ids, within), bitorder="little")
            selector = faiss.IDSelectorBitmap(len(self.dead), faiss.swig_ptr(bits))
            selector.referenced_objects = [bits]  # FAISS's keep-alive: the bits live as long as the selector
        if self.kind == "flat":
            return faiss.SearchParameters(sel=selector) if selector is not None else None
        return faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)

    def search(self, queries: np.ndarray, k: int, within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [q, k], ids [q, k])``, best first; ids are -1 and scores -inf where fewer than k exist.
        ``within``: only rows of these ids (not on a device: there every row is scored)."""
        self.prepare()  # a no-op for an index the engine published
        queries = normalise(np.atleast_2d(queries))
        k_eff = min(k, len(self))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        if k_eff == 0:
            return scores, out_ids
        if self._exact is not None and within is None:
            s, rows = self._exact.search(queries, k_eff)
            self._check(s)
            scores[:, :k_eff] = s
            out_ids[:, :k_eff] = np.where(rows >= 0, self.rows.ids[np.maximum(rows, 0)], -1)
            return scores, out_ids
        params = self._params(within)
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

    def scores_among(self, query: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids ascending, exact scores of query [d])`` of the live rows of ``ids`` from the float16 rows the
        re-rank reads (no table read); ``None`` when some of ``ids`` are not live rows here."""
        wanted = np.unique(np.asarray(ids, np.int64))
        positions = np.flatnonzero(~self.dead & np.isin(self.rows.ids, wanted))
        if len(positions) != len(wanted):
            return None
        positions = positions[np.argsort(self.rows.ids[positions], kind="stable")]
        return self.rows.ids[positions], self.rows.scores(positions, query)

    def _rerank(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Exact scores ``[q, c]`` of each query against its candidate rows ``[q, c]``: on the CPU, or on the
        re-rank device past the exact budget (``use_exact``)."""
        if self._rerank_device is not None:
            from xsearch.exact import rerank

            return rerank(self.rows.vectors(rows, half=True), queries, self._rerank_device)
        return np.stack([inner_products(self.rows.vectors(r), q) for r, q in zip(rows, queries)])

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
        faiss = faiss_module()
        directory = Path(directory)
        fresh = segments is None
        target = directory.with_name(directory.name + ".tmp") if fresh else directory
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            self.trained_crc32 = write_trained(self.template, target)
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
                add_rows(segment, exact, start)
                vectors = exact.astype(np.float16)
            append_exactly(target / IDS, ids, start * 8)
            append_exactly(target / VECTORS, vectors, start * 2 * self.rows.dim)
            crcs = crc32(ids), crc32(vectors)
            segments = [*segments, write_segment(target, generation, segment, start, stop, *crcs, self._in_rows)]
            segments[-1]["topup"] = topup
        self._commit(target, segments, covers)
        if fresh:
            replace_directory(directory, target)
        self.saved_rows = stop
        self.rows = open_rows(directory, self.rows.dim, stop)  # the saved rows, memory-mapped again
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
            "dead_crc32": file_crc32(target / dead_name),
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
        faiss = faiss_module()
        directory = Path(directory)
        meta = read_meta(directory)
        current = identity(directory / VECTORS, meta)
        verify = verify or current not in VERIFIED
        try:
            expect_crc32(directory / TRAINED, meta["trained_crc32"])
            expect_crc32(directory / meta["dead"], meta["dead_crc32"])
            template = faiss.read_index(str(directory / TRAINED))
            index = faiss.clone_index(template)
            rows = open_rows(directory, meta["dim"], meta["rows"])
            for segment in meta["segments"]:
                expect_crc32(directory / segment["file"], segment["crc32"])
                part = faiss.read_index(str(directory / segment["file"]))
                start, stop = segment["rows"]
                if segment.get("in_rows"):  # a flat segment kept as its float16 rows
                    part.add(to_float32(rows.vector_parts[0][start:stop]))
                if part.ntotal != stop - start or index.ntotal != start:
                    raise SearchIndexError(
                        f"{directory / segment['file']}: holds {part.ntotal} rows, not {stop - start}"
                    )
                index.merge_from(part, 0)
            for segment in meta["segments"]:
                start, stop = segment["rows"]
                if crc32(rows.ids_parts[0][start:stop]) != segment["ids_crc32"]:
                    raise SearchIndexError(f"{directory / IDS}: rows {start}-{stop} differ from their checksum")
                if verify and crc32(rows.vector_parts[0][start:stop]) != segment["vectors_crc32"]:
                    raise SearchIndexError(f"{directory / VECTORS}: rows {start}-{stop} differ from their checksum")
            dead = np.zeros(meta["rows"], bool)
            dead[np.load(directory / meta["dead"])] = True
            if verify and current is not None:
                VERIFIED.add(current)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
            raise SearchIndexError(f"{directory}: unreadable index ({str(exc).splitlines()[0]})") from None
        stored_cfg = IndexCfg(**{f.name: meta["cfg"][f.name] for f in fields(IndexCfg) if f.name in meta["cfg"]})
        out = cls(index, template, rows, dead, meta["kind"], cfg or stored_cfg)
        out.saved_rows, out.trained_crc32 = meta["rows"], meta["trained_crc32"]
        out.vectors_in_rows = bool(meta.get("vectors_in_rows"))
        out._tune(len(out))
        return out, meta
