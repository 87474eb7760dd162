"""``IndexSet``: the per-modality indices over one table view, brought up to date with it (build, top up,
mask, rebuild) and saved in the folder they own."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from xsearch.errors import SearchIndexError
from xsearch.index.faiss_ops import add_rows, normalise
from xsearch.index.files import META, RowFiles, open_rows, read_meta, replace_directory, write_segment, write_trained
from xsearch.index.gpu import assigned_by, gpu_quantizer
from xsearch.index.params import IndexCfg
from xsearch.index.vector_index import VectorIndex, train_size
from xsearch.modalities import Modality
from xsearch.store import ITEMS, ItemFilter

log = logging.getLogger(__name__)


class IndexSet:
    """The per-modality indices over one table view, kept in the folder they own (``root/<modality>/``).

    The database says which folder belongs to which table (``Database.index_folder``); an index set
    reads only its view: ``IndexSet(db.items(), db.index_folder(ITEMS))``."""

    def __init__(self, view, root: Path, cfg: IndexCfg = IndexCfg(), published=None):
        self.view = view
        self.cfg = cfg
        self.root = Path(root)
        self.published = published  # ``IndexObjects`` of a database in an object store: root is its local copy
        self.vectors_in_rows = view.half_vectors  # float16 at the source: rows.f16 loses nothing

    @classmethod
    def latest(cls, db, table: str = ITEMS, cfg: IndexCfg = IndexCfg()) -> IndexSet:
        """The indices over ``db``'s ``table`` (``items`` or ``moments``) as it is now."""
        return cls.over(db, db.view(table), table, cfg)

    @classmethod
    def over(cls, db, view, table: str = ITEMS, cfg: IndexCfg = IndexCfg()) -> IndexSet:
        """The indices of ``db``'s ``table`` over ``view`` (a version of that table)."""
        return cls(view, db.index_folder(table), cfg, db.index_objects(table))

    def stored(self) -> set[Modality]:
        """The modalities that have an index saved (an index whose last rows went must be emptied too)."""
        names = set(self.published.modalities()) if self.published is not None else set()
        if self.root.exists():
            names |= {p.name for p in self.root.iterdir() if p.is_dir()}
        return {Modality(n) for n in names if n in Modality}

    def _pull(self, modality: Modality) -> None:
        if self.published is not None:
            self.published.pull(str(modality))

    def _publish(self, modality: Modality) -> None:
        if self.published is not None:
            self.published.push(str(modality))

    def directory(self, modality: Modality) -> Path:
        return self.root / str(modality)

    def _covers(self, modality: Modality) -> dict:
        return {
            "table_version": self.view.version,
            "version_key": self.view.key,
            "model_id": self.view.model_id,
            "modality": str(modality),
            # Rows re-embedded in place keep their id; their newer ``indexed_at`` is how a top-up finds them.
            "indexed_until": self.view.last_indexed_at(),
        }

    def _is_current(self, meta: dict, modality: Modality) -> bool:
        return (
            meta.get("version_key") == self.view.key
            and meta.get("model_id") == self.view.model_id
            and meta.get("modality") == str(modality)
        )

    def status(self, modality: Modality, check: bool = False) -> dict:
        """What is on disk for ``modality``: kind, count, covered version, whether it is fresh or damaged.
        ``check`` reads every file against its checksum (the re-rank vectors too), not only ``meta.json``."""
        self._pull(modality)
        directory = self.directory(modality)
        if not (directory / META).exists():
            return {"modality": str(modality), "exists": False, "fresh": False}
        try:
            meta = VectorIndex.load(directory, self.cfg, verify=True)[1] if check else read_meta(directory)
        except SearchIndexError as exc:
            return {"modality": str(modality), "exists": True, "fresh": False, "damaged": str(exc)}
        fresh = self._is_current(meta, modality) or self._same_rows(meta, modality)
        return {**meta, "modality": str(modality), "exists": True, "fresh": fresh}

    def _same_rows(self, meta: dict, modality: Modality) -> bool:
        """Whether ``modality``'s rows are those the index covers, though the table moved on (another
        modality's rows came): none written since, none gone (an addition shows in the first, a deletion in
        the count)."""
        if meta.get("model_id") != self.view.model_id or meta.get("indexed_until") is None:
            return False
        if meta.get("table_version", -1) > self.view.version or meta.get("count") != self.view.count(modality):
            return False
        return len(self.view.ids_indexed_after(meta["indexed_until"], modality)) == 0

    def build(self, modality: Modality, persist: bool = True) -> VectorIndex:
        """A new index from the view, streamed: a training sample first, then batches of rows."""
        where = ItemFilter(modality=modality)
        n = self.view.count(modality)
        sample = None
        if n >= self.cfg.flat_threshold:
            sample = self._sample(where, n, train_size(n, self.cfg))
        index = VectorIndex.empty(self.view.embed_dim, n, self.cfg, sample)
        del sample
        batches = self.view.iter_vectors(where, self.cfg.chunk_rows)
        if not persist:
            with assigned_by(index.index, gpu_quantizer(index.index, self.cfg)):
                for ids, vectors in batches:
                    index.add(ids, vectors)
            return index
        # Rows go straight to files as they are added: RAM holds the index codes and one batch, never every
        # vector. The directory is built beside the old one and renamed over it when complete.
        directory = self.directory(modality)
        building = directory.with_name(directory.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        files = RowFiles(building)
        try:
            with assigned_by(index.index, gpu_quantizer(index.index, self.cfg)):
                for ids, vectors in batches:
                    vectors = normalise(vectors)
                    add_rows(index.index, vectors, files.count)
                    files.write(np.asarray(ids, np.int64), vectors.astype(np.float16))
        finally:
            files.close()
        index.rows = open_rows(building, self.view.embed_dim, files.count)
        index.dead = np.zeros(files.count, bool)
        index.saved_rows = files.count
        index.trained_crc32 = write_trained(index.template, building)
        index.vectors_in_rows = self.vectors_in_rows
        crcs = files.ids_crc32, files.vectors_crc32
        segment = write_segment(building, 0, index.index, 0, files.count, *crcs, index._in_rows)
        index._commit(building, [segment], self._covers(modality))
        replace_directory(directory, building)
        index.rows = open_rows(directory, self.view.embed_dim, files.count)
        self._publish(modality)
        log.info("%s index: built %s of %d vectors", modality, index.kind, len(index))
        return index

    def _sample(self, where: ItemFilter, n: int, size: int) -> np.ndarray:
        """``size`` vectors at seeded random positions among the ``n`` rows, read in one streaming pass."""
        picks = np.sort(np.random.default_rng(0).choice(n, size=min(n, size), replace=False))
        out = np.empty((len(picks), self.view.embed_dim), np.float32)  # filled in place: no second copy
        seen = taken = 0
        for _, vectors in self.view.iter_vectors(where, self.cfg.chunk_rows):
            inside = picks[(picks >= seen) & (picks < seen + len(vectors))] - seen
            out[taken : taken + len(inside)] = vectors[inside]
            taken += len(inside)
            seen += len(vectors)
        return out[:taken]

    def current(
        self, modality: Modality, persist: bool = True, previous: tuple[VectorIndex, dict] | None = None
    ) -> tuple[VectorIndex, dict]:
        """The index for ``modality``, brought up to date with the view first (add / mask / rebuild), and what
        it covers now (its ``meta``). ``persist=False`` (searches) brings it up to date in memory only and
        writes nothing; damaged files are rebuilt (in memory only for a search). ``previous``: an index
        already in memory and its meta (a search engine's, from an earlier snapshot) to top up instead of
        loading the files."""
        directory = self.directory(modality)
        if previous is None:
            self._pull(modality)
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
        version = self.view.version
        if meta.get("model_id") != self.view.model_id or meta.get("modality") != str(modality):
            return self.rebuild(modality, persist)
        if self._is_current(meta, modality):
            return index, meta
        if self._same_rows(meta, modality):  # another modality's rows came: no top-up segment, new covers
            covers = self._covers(modality)
            if persist:
                index.save(directory, covers, meta["segments"])  # nothing new: meta.json alone is rewritten
                self._publish(modality)
            return index, {**meta, **covers}
        if meta.get("indexed_until") is None or meta.get("table_version", -1) > version:
            return self.rebuild(modality, persist)  # covers a version the table no longer has
        # Ids are unique on both sides: ``assume_unique`` skips numpy's hashing unique(), seconds at 1M rows.
        current = np.sort(self.view.ids(modality))
        live = index.ids
        added = np.setdiff1d(current, live, assume_unique=True)
        removed = np.setdiff1d(live, current, assume_unique=True)
        after = np.sort(self.view.ids_indexed_after(meta["indexed_until"], modality))
        updated = np.intersect1d(after, live, assume_unique=True)
        if previous is not None:  # searches may still read the one in memory: change a copy
            index = index.copy()
        index.remove(np.union1d(removed, updated))
        found, vectors = self.view.vectors(np.union1d(added, updated))
        index.add(found, vectors)
        reason = index.needs_rebuild(sum(1 for s in meta["segments"] if s.get("topup")) + 1)
        if reason:
            log.info("%s index: rebuilding (%s)", modality, reason)
            return self.rebuild(modality, persist)
        where = "saved" if persist else "in memory only; xsearch index saves it"
        log.info("%s index: topped up (%d rows added, %d masked; %s)", modality, len(found), len(removed), where)
        covers = self._covers(modality)
        if persist:
            segments = index.save(directory, covers, meta["segments"], topup=True)
            self._publish(modality)
        else:
            segments = [*meta["segments"], {"topup": True}]  # counted towards the next rebuild, as on disk
        return index, {**covers, "segments": segments}

    def rebuild(self, modality: Modality, persist: bool = True) -> tuple[VectorIndex, dict]:
        """A new index from the view, and what it covers (``build``, with the meta ``current`` returns)."""
        index = self.build(modality, persist)
        return index, {**self._covers(modality), "segments": []}
