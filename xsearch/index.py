"""FAISS indices over the store's embeddings, one per modality, with exact re-ranking.

Below ``IndexCfg.flat_threshold`` vectors an index is exact (``IndexFlatIP``). Above it, IVF-PQ: ``nlist``
about ``4 * sqrt(N)`` lists, PQ with ``d / 8`` sub-quantisers of 4 bits (fast-scan) on the CPU, or 8-bit PQ
on the GPU (FAISS's GPU IVF-PQ has no fast-scan), trained on a sample. IVF-PQ scores are approximate, so
``search`` takes ``k * refine_factor`` candidates and re-ranks them exactly against a float16 copy of the
vectors kept beside the index (inner product of unit vectors = cosine).

An index directory records the ``items`` table version it covers. ``IndexSet.fresh`` compares that with
the store: new rows are added, deleted rows removed, and a flat index that outgrew the threshold is
rebuilt, so a stale index is never served silently. Only a writer (``persist=True``, the indexer) saves
the result; a search tops up a copy in memory and leaves the database untouched, so read-only databases
can be searched and a search beside a running ``xsearch index`` writes nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xsearch.errors import SearchIndexError
from xsearch.modalities import Modality
from xsearch.store import ItemFilter, embeddings_to_numpy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexCfg:
    flat_threshold: int = 50_000  # exact search below this many vectors
    nlist: int | None = None  # IVF lists; None: about 4 * sqrt(N)
    pq_bytes_per_dim: float = 1 / 16  # PQ code size: d/8 sub-quantisers of 4 bits = d/16 bytes
    refine_factor: int = 20  # candidates re-ranked exactly: k * refine_factor
    nprobe: int | None = None  # lists visited per query; None: nlist / 16, at least 16
    train_size: int = 100_000  # training sample (at most)
    use_gpu: bool | None = None  # None: when faiss sees a GPU


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    try:
        return _faiss().get_num_gpus() > 0
    except Exception:  # a faiss build without GPU support
        return False


def choose_nlist(n: int, cfg: IndexCfg) -> int:
    if cfg.nlist:
        return cfg.nlist
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 16)))
    return int(min(nlist, max(n // 39, 16)))  # FAISS wants ~39 training points per list


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


_RERANK_CHUNK = 32  # queries re-ranked together (bounds the [q, candidates, d] float32 gather)


class VectorIndex:
    """One modality's FAISS index + the float16 vectors used for re-ranking."""

    def __init__(self, index, ids: np.ndarray, vectors: np.ndarray, kind: str, cfg: IndexCfg):
        self.index = index  # a CPU index; searched on the GPU through a temporary clone when asked
        self.ids = ids  # sorted int64 ids held by the index
        self.vectors = vectors  # float16 [len(ids), d], rows aligned with self.ids
        self.kind = kind
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.ids)

    # ---- building --------------------------------------------------------------------------------------

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, cfg: IndexCfg = IndexCfg()) -> VectorIndex:
        faiss = _faiss()
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids)
        ids, vectors = ids[order], _normalise(vectors[order])
        n, d = vectors.shape
        if n < cfg.flat_threshold:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
            kind = "flat"
        else:
            index, kind = cls._train_ivfpq(vectors, cfg)
        if n:
            index.add_with_ids(vectors, ids)
        log.info("built %s index of %d vectors", kind, n)
        return cls(index, ids, vectors.astype(np.float16), kind, cfg)

    @staticmethod
    def _train_ivfpq(vectors: np.ndarray, cfg: IndexCfg):
        faiss = _faiss()
        n, d = vectors.shape
        nlist = choose_nlist(n, cfg)
        use_gpu = gpu_available() if cfg.use_gpu is None else cfg.use_gpu
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(n, size=min(n, cfg.train_size), replace=False)]
        if use_gpu:
            m = max(m for m in (8, 16, 32, 48, 64, 96) if d % m == 0 and m <= d // 8)
            spec = f"IVF{nlist},PQ{m}"
            cpu_index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
            options = faiss.GpuClonerOptions()
            options.useFloat16LookupTables = True
            gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu_index, options)
            gpu_index.train(sample)
            index = faiss.index_gpu_to_cpu(gpu_index)
        else:
            m = max(1, int(d * cfg.pq_bytes_per_dim * 2))  # 4-bit codes: two sub-quantisers per byte
            spec = f"IVF{nlist},PQ{m}x4fs"
            index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
            index.train(sample)
        faiss.extract_index_ivf(index).nprobe = cfg.nprobe or max(16, nlist // 16)
        return index, spec

    # ---- updates ---------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.asarray(ids, dtype=np.int64)
        if np.isin(ids, self.ids).any():
            raise SearchIndexError("ids already in the index: " + ", ".join(map(str, ids[np.isin(ids, self.ids)][:5])))
        vectors = _normalise(vectors)
        self.index.add_with_ids(vectors, ids)
        all_ids = np.concatenate([self.ids, ids])
        order = np.argsort(all_ids)
        self.ids = all_ids[order]
        self.vectors = np.concatenate([self.vectors, vectors.astype(np.float16)])[order]

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        self.index.remove_ids(_faiss().IDSelectorBatch(ids))
        keep = ~np.isin(self.ids, ids)
        self.ids, self.vectors = self.ids[keep], self.vectors[keep]

    # ---- search ----------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [q, k], ids [q, k])``, best first; ids are -1 and scores -inf where fewer than k exist."""
        queries = _normalise(np.atleast_2d(queries))
        k_eff = min(k, len(self.ids))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        if k_eff == 0:
            return scores, out_ids
        if self.kind == "flat":
            s, i = self.index.search(queries, k_eff)
            scores[:, :k_eff], out_ids[:, :k_eff] = s, i
            return scores, out_ids
        candidates = min(len(self.ids), k_eff * self.cfg.refine_factor)
        _, cand = self.index.search(queries, candidates)
        for start in range(0, len(queries), _RERANK_CHUNK):
            block = cand[start : start + _RERANK_CHUNK]
            valid = block >= 0
            positions = np.searchsorted(self.ids, np.where(valid, block, self.ids[0]))
            # Exact scores of all candidates of a block of queries at once: [q, c, d] @ [q, d] -> [q, c].
            exact = np.einsum(
                "qcd,qd->qc", self.vectors[positions].astype(np.float32), queries[start : start + _RERANK_CHUNK]
            )
            exact[~valid] = -np.inf
            top = np.argsort(-exact, axis=1)[:, :k_eff]
            top_scores = np.take_along_axis(exact, top, 1)
            top_ids = np.where(np.isfinite(top_scores), np.take_along_axis(block, top, 1), -1)
            scores[start : start + len(block), :k_eff] = top_scores
            out_ids[start : start + len(block), :k_eff] = top_ids
        return scores, out_ids

    # ---- files -----------------------------------------------------------------------------------------

    def save(self, directory: Path, covers: dict) -> None:
        """Write atomically: a temporary directory renamed over the old one."""
        faiss = _faiss()
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        faiss.write_index(self.index, str(tmp / "index.faiss"))
        np.save(tmp / "ids.npy", self.ids)
        np.save(tmp / "vectors.f16.npy", self.vectors)
        meta = {"kind": self.kind, "count": int(len(self.ids)), "cfg": asdict(self.cfg), **covers}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path, cfg: IndexCfg | None = None) -> tuple[VectorIndex, dict]:
        faiss = _faiss()
        directory = Path(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text())
            index = faiss.read_index(str(directory / "index.faiss"))
            ids = np.load(directory / "ids.npy")
            vectors = np.load(directory / "vectors.f16.npy", mmap_mode="r")
        except (OSError, ValueError, RuntimeError) as exc:
            raise SearchIndexError(f"{directory}: unreadable index ({str(exc).splitlines()[0]})") from None
        if index.ntotal != len(ids) or len(vectors) != len(ids):
            raise SearchIndexError(f"{directory}: index files disagree ({index.ntotal} vectors, {len(ids)} ids)")
        stored_cfg = IndexCfg(**meta["cfg"]) if cfg is None else cfg
        if meta["kind"] != "flat":
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = stored_cfg.nprobe or max(16, ivf.nlist // 16)
        return cls(index, ids, np.asarray(vectors), meta["kind"], stored_cfg), meta


class IndexSet:
    """The per-modality indices of one store, kept next to it in ``<db>/faiss/<modality>/``."""

    def __init__(self, store, cfg: IndexCfg = IndexCfg()):
        self.store = store
        self.cfg = cfg
        self.root = Path(store.path) / "faiss"

    def directory(self, modality: Modality) -> Path:
        return self.root / str(modality)

    def status(self, modality: Modality) -> dict:
        """What is on disk for ``modality``: kind, count, covered version, and whether it is fresh."""
        meta_path = self.directory(modality) / "meta.json"
        if not meta_path.exists():
            return {"modality": str(modality), "exists": False, "fresh": False}
        meta = json.loads(meta_path.read_text())
        fresh = meta.get("table_version") == self.store.version and meta.get("model_id") == self.store.model_id
        return {"modality": str(modality), "exists": True, "fresh": fresh, **meta}

    def build(self, modality: Modality, persist: bool = True) -> VectorIndex:
        version = self.store.version
        table = self.store.scan(["id", "embedding"], ItemFilter(modality=modality), version=version)
        index = VectorIndex.build(table["id"].to_numpy(), embeddings_to_numpy(table["embedding"]), self.cfg)
        if persist:
            self._save(index, modality, version)
        return index

    def _save(self, index: VectorIndex, modality: Modality, version: int) -> None:
        covers = {
            "table_version": version,
            "model_id": self.store.model_id,
            "modality": str(modality),
            # Rows re-embedded in place keep their id; their newer ``indexed_at`` is how a top-up finds them.
            "indexed_until": self.store.last_indexed_at(version),
        }
        index.save(self.directory(modality), covers)

    def fresh(self, modality: Modality, persist: bool = True) -> VectorIndex:
        """The index for ``modality``, brought up to date with the store first (add / remove / rebuild).

        ``persist=False`` (searches) brings it up to date in memory only and writes nothing.
        """
        directory = self.directory(modality)
        if not (directory / "meta.json").exists():
            if not persist:
                log.info("%s index: none on disk; built in memory for this search", modality)
            return self.build(modality, persist)
        try:
            index, meta = VectorIndex.load(directory, self.cfg)
        except SearchIndexError as exc:
            log.warning("%s; rebuilding%s", exc, "" if persist else " in memory (run xsearch index to repair)")
            return self.build(modality, persist)
        version = self.store.version
        if meta.get("model_id") != self.store.model_id:
            return self.build(modality, persist)
        if meta.get("table_version") == version:
            return index
        if meta.get("indexed_until") is None:  # written before re-embedded rows were tracked
            return self.build(modality, persist)
        current = self.store.ids(modality, version=version)
        added = np.setdiff1d(current, index.ids)
        removed = np.setdiff1d(index.ids, current)
        updated = np.intersect1d(self.store.ids_indexed_after(meta["indexed_until"], modality, version), index.ids)
        removed = np.union1d(removed, updated)
        added = np.union1d(added, updated)
        outgrown = index.kind == "flat" and len(current) >= self.cfg.flat_threshold
        if outgrown or len(removed) > len(index.ids) // 2:
            log.info("%s index: rebuilding (%d added, %d removed)", modality, len(added), len(removed))
            return self.build(modality, persist)
        index.vectors = np.array(index.vectors)  # from the read-only memory map to a writable copy
        index.remove(removed)
        if len(added):
            found, vectors = self.store.vectors(added)
            index.add(found, vectors)
        where = "saved" if persist else "in memory only; xsearch index saves it"
        log.info("%s index: topped up (%d added, %d removed; %s)", modality, len(added), len(removed), where)
        if persist:
            self._save(index, modality, version)
        return index
