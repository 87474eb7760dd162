"""The search engine: embeds a query, picks a strategy per target modality, and ranks the hits.

Strategy: with no filter, the modality's FAISS index answers. With a filter (``where``, ``path``), the
matching ids are read from the store; up to ``exact_filter_limit`` of them are scored exactly against
their stored vectors, more than that over-fetch the index and keep the matches.

Moments (``SearchOptions.moments``): the same machinery over the store's ``moments`` table, seen as a store
of its own (``Store.moments``) with its own indices and calibration samples; a moment whose file's row is
gone or holds other bytes (a run killed between the two commits) is never returned, duplicates fold on
the same seconds of the same bytes, and each file gives at most ``per_file`` moments.

One snapshot per version: everything a search reads (indices, calibration samples, the hashes held by
several rows, counts, rows) comes from the store frozen at one version (``Store.snapshot``), so an answer
never mixes the commits of a concurrent ``xsearch index``. The snapshot is kept while the store's
``version_key`` is unchanged; the next one tops up the previous one's indices in memory rather than
reading their files again. Indices are never written from here (``IndexSet.current(persist=False)``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from xsearch.errors import ModelMismatchError, QueryError, SearchIndexError
from xsearch.modalities import Modality
from xsearch.options import SearchOptions
from xsearch.paths import glob_mask
from xsearch.query.algebra import Query, QueryInput, combine
from xsearch.query.ranking import Calibration, Hit, cut, fold_duplicates, lead, sample_ids
from xsearch.query.results import METADATA_COLUMNS, Result, Results
from xsearch.store import ItemFilter, ReaderLease

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["uri", "modality", "sha256", *METADATA_COLUMNS]
MOMENT_COLUMNS = ["item_id", "uri", "modality", "sha256", "start", "end"]
# With a filter, up to this many matching items are scored exactly; above it the ANN index is over-fetched.
EXACT_FILTER_LIMIT = 200_000
FILTER_OVERFETCH = 20  # candidates per wanted hit when the index is searched under a large filter


@dataclass
class Snapshot:
    """The store at one version and what the engine derived from it: each modality's index (with what it
    covers, for the next snapshot's top-up), calibration sample, and the sha256s several rows hold."""

    store: object  # a ``Store`` pinned at one version
    indices: object  # the ``IndexSet`` over it
    loaded: dict[Modality, tuple[object, dict]] = field(default_factory=dict)
    samples: dict[Modality, np.ndarray] = field(default_factory=dict)
    shared: set[str] | None = None

    @property
    def key(self) -> str:
        return self.store.key


class Engine:
    """Search one store. The model is loaded only when a query has files or text to embed.

    ``encoder`` is an ``Encoder`` or a zero-argument function returning one (called on first need), so a
    search of stored items never loads a model.
    """

    def __init__(
        self,
        store,
        encoder=None,
        index_cfg=None,
        exact_filter_limit: int = EXACT_FILTER_LIMIT,
        decoder=None,
        exact_device=None,
        exact_budget_bytes: int | None = None,
    ):
        """``decoder(path, modality, cfg) -> Outcome`` decodes query files (default: ``xsearch.decode`` in
        this process; ``Collection`` passes one that decodes in a supervised worker under the indexer's
        limits, so a hostile upload costs a worker, never the server). ``exact_device``: a GPU on which
        each modality's vectors are kept and searched exactly, where they fit ``exact_budget_bytes``
        (default: half its free memory), else re-ranked there (``VectorIndex.use_exact``)."""
        from xsearch.index import IndexCfg

        self.store = store
        self.index_cfg = index_cfg or IndexCfg()
        self.exact_filter_limit = exact_filter_limit
        self.decoder = decoder
        self.exact_device = exact_device
        self.exact_budget_bytes = exact_budget_bytes
        self._exact_tried: weakref.WeakSet = weakref.WeakSet()  # indices already offered the device
        self._lease = ReaderLease(store.path)  # the version this engine reads, kept by writers' compaction
        self._snapshot: Snapshot | None = None
        self._moments: Snapshot | None = None  # the moments of ``_snapshot``'s version, once searched
        self._lock = threading.RLock()  # snapshots and their indices change only under it
        self._encoder = encoder if encoder is None or not callable(encoder) else None
        self._make_encoder = encoder if callable(encoder) else None
        if self._encoder is not None:
            self.check_model(self._encoder.model_id)

    def __repr__(self) -> str:
        return f"Engine({str(self.store.path)!r}, model={self.store.model_id!r})"

    def close(self) -> None:
        """Let writers' compaction reclaim the version this engine held."""
        self._lease.release()

    def check_model(self, model_id: str) -> None:
        ModelMismatchError.check(self.store.path, self.store.model_id, model_id, argument="checkpoint")

    @property
    def encoder(self):
        if self._encoder is None:
            if self._make_encoder is None:
                raise QueryError("this query has files or text to embed, but no model was given")
            encoder = self._make_encoder()
            self.check_model(encoder.model_id)
            self._encoder = encoder
        return self._encoder

    # ---- snapshots ------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The store's current version, frozen (the one already held while its ``version_key`` holds)."""
        with self._lock:
            self._snapshot = self._renewed(self._snapshot, self.store.snapshot(self._lease))
            return self._snapshot

    def moments(self, snapshot: Snapshot) -> Snapshot:
        """The moments pinned with ``snapshot`` (``Store.snapshot``), with their indices and samples."""
        with self._lock:
            self._moments = self._renewed(self._moments, snapshot.store.moments())
            return self._moments

    def _renewed(self, previous: Snapshot | None, pinned) -> Snapshot:
        """``previous`` while ``pinned`` is the same version, else a snapshot of ``pinned`` that tops up the
        indices ``previous`` had loaded, in memory, on first use."""
        from xsearch.index import IndexSet

        if previous is not None and previous.key == pinned.key:
            return previous
        renewed = Snapshot(pinned, IndexSet(pinned, self.index_cfg))
        if previous is not None:
            renewed.loaded = dict(previous.loaded)
        return renewed

    def index(self, modality: Modality, snapshot: Snapshot | None = None):
        """The modality's FAISS index at ``snapshot``'s version (default: the current one), brought up to
        date in memory (only ``xsearch index`` writes index files)."""
        snapshot = snapshot or self.snapshot()
        with self._lock:
            cached = snapshot.loaded.get(modality)
            if cached is None or cached[1].get("version_key") != snapshot.key:
                cached = snapshot.loaded[modality] = snapshot.indices.current(modality, persist=False, previous=cached)
            index = cached[0]
            if self.exact_device is not None and index not in self._exact_tried:
                self._exact_tried.add(index)
                index.use_exact(self.exact_device, self.exact_budget_bytes)
            return index

    # ---- embedding ------------------------------------------------------------------------------------

    def embed_inputs(self, query: Query) -> tuple[np.ndarray, list[QueryInput]]:
        """The query's unit vector ``float32 [dim]`` and what each input turned out to be (stored items are
        read at the store's newest version; the search that follows takes its one snapshot)."""
        context = _Context(self, self.store)
        embedded = [term.embed(context) for term in query.terms]
        vectors = np.stack([np.asarray(v, dtype=np.float64) for v, _ in embedded])
        return combine(vectors, [t.weight for t in query.terms]), [info for _, info in embedded]

    def embed(self, query: Query) -> np.ndarray:
        return self.embed_inputs(query)[0]

    # ---- search ---------------------------------------------------------------------------------------

    def targets(self, target, snapshot: Snapshot | None = None) -> list[Modality]:
        """The modalities ``target`` names (a ``SearchOptions.target``, or anything it accepts); ``None``
        or ``"all"``: those the store holds."""
        named = target if isinstance(target, tuple) else SearchOptions(target=target).target
        return list(named) if named is not None else (snapshot or self.snapshot()).store.modalities()

    def search(self, query: Query | str, options: SearchOptions | None = None, **overrides) -> Results:
        """The items nearest to ``query`` (a ``Query``, or a text), best first, as ``options``
        (``SearchOptions``, or its fields as keywords) say. One target is ranked by raw cosine; several are
        merged by calibrated score (``ranking``); then duplicates are folded and the cut-offs applied."""
        query = Query.of(query)
        options = SearchOptions.of(options, **overrides)  # a typo fails here, before any model is loaded
        vector, inputs = self.embed_inputs(query)
        if options.moments:
            return self._search_moments(query, options, vector, inputs)
        with self._lock:  # one version for everything below
            snapshot = self.snapshot()
            targets = self.targets(options.target, snapshot)
            by_calibrated = len(targets) > 1
            k = min(options.k, snapshot.store.count())  # never allocate for more results than there are items
            # The query's own stored items (added, not subtracted) and their copies lead, or are left out.
            own = {i.item_id for i in inputs if i.item_id is not None and i.term.weight > 0}
            fetch, hits, rows, leading = k, [], {}, set()
            while k:
                hits, exhausted = self._gather(snapshot, vector, targets, fetch, options, by_calibrated)
                rows = snapshot.store.rows([h.id for h in hits], RESULT_COLUMNS)  # serves dedup and results
                leading = _same_bytes(own, rows)
                if options.dedup:
                    hits = self._deduplicated(snapshot, hits, rows, own)
                hits = lead(hits, leading, options.exclude_query_items)
                if len(hits) >= k or exhausted:
                    break
                fetch *= 2  # duplicates took places: look further down each modality's list
            hits = cut(hits[:k], options, by_calibrated, kept=leading)
            results = _results(hits, rows)
        return Results(results, query, targets, inputs, _thumbnail_loader(snapshot.store), snapshot.store.model_id)

    def _search_moments(self, query: Query, options: SearchOptions, vector, inputs) -> Results:
        """``search`` for moments: hits are segments; at most ``per_file`` per file (default 1)."""
        with self._lock:
            snapshot = self.snapshot()
            moments = self.moments(snapshot)
            held = moments.store.modalities()
            targets = [m for m in self.targets(options.target, moments) if m in held]
            by_calibrated = len(targets) > 1
            k = min(options.k, moments.store.count())
            per_file = options.per_file or 1
            own = {i.moment_id for i in inputs if i.moment_id is not None and i.term.weight > 0}
            fetch, hits, rows, items, leading = k * per_file, [], {}, {}, set()
            while k:
                hits, exhausted = self._gather(moments, vector, targets, fetch, options, by_calibrated)
                rows = moments.store.rows([h.id for h in hits], MOMENT_COLUMNS)
                items = snapshot.store.rows(sorted({r["item_id"] for r in rows.values()}), RESULT_COLUMNS)
                hits = [h for h in hits if _current(rows.get(h.id), items)]
                leading = own & set(rows)
                if options.dedup:
                    hits = self._moments_deduplicated(snapshot, moments, hits, rows, own)
                hits = _per_file(lead(hits, leading, options.exclude_query_items), rows, per_file, leading)
                if len(hits) >= k or exhausted:
                    break
                fetch *= 2
            hits = cut(hits[:k], options, by_calibrated, kept=leading)
            results = _moment_results(hits, rows, items)
        return Results(results, query, targets, inputs, _thumbnail_loader(snapshot.store), snapshot.store.model_id)

    def _moments_deduplicated(self, snapshot, moments, hits, rows, own) -> list[Hit]:
        """One hit per moment of the same bytes (files with the same sha256) at the same seconds."""

        def digest(row: dict) -> str:
            return f"{row['sha256']}|{row['modality']}|{row['start']:g}"

        hashes = {i: digest(row) for i, row in rows.items() if row["sha256"]}
        shared = sorted({row["sha256"] for row in rows.values()} & self._shared_hashes(snapshot))
        paths: dict[str, list[tuple[int, str]]] = {}
        if shared:
            columns = ["id", "uri", "sha256", "modality", "start"]
            for row in moments.store.scan(columns, ItemFilter(sha256s=shared)).to_pylist():
                paths.setdefault(digest(row), []).append((row["id"], row["uri"]))
        return fold_duplicates(hits, hashes, paths, preferred=own)

    def _gather(self, snapshot, vector, targets, fetch, options, by_calibrated) -> tuple[list[Hit], bool]:
        """Each target's best ``fetch`` hits with raw and calibrated scores, merged; and whether every
        target ran out of items."""
        hits, exhausted = [], True
        for modality in targets:
            calibration = self.calibration(modality, vector, snapshot)
            found = self._search_modality(snapshot, vector[None], modality, fetch, options)
            exhausted &= len(found) < fetch
            hits += [Hit(i, s, calibration(s)) for s, i in found]
        hits.sort(key=(lambda h: -h.calibrated) if by_calibrated else (lambda h: -h.score))  # stable
        return hits, exhausted

    def _deduplicated(self, snapshot: Snapshot, hits: list[Hit], rows: dict[int, dict], own: set[int]) -> list[Hit]:
        hashes = {i: row["sha256"] for i, row in rows.items()}
        shared = self._shared_hashes(snapshot)
        known = sorted({h for h in hashes.values() if h in shared})
        paths: dict[str, list[tuple[int, str]]] = {}
        if known:
            for row in snapshot.store.scan(["id", "uri", "sha256"], ItemFilter(sha256s=known)).to_pylist():
                paths.setdefault(row["sha256"], []).append((row["id"], row["uri"]))
        return fold_duplicates(hits, hashes, paths, preferred=own)

    def calibration(self, modality: Modality, vector: np.ndarray, snapshot: Snapshot | None = None) -> Calibration:
        """The query's baseline against ``modality``: its cosines to a fixed sample of the stored vectors."""
        snapshot = snapshot or self.snapshot()
        sample = snapshot.samples.get(modality)
        if sample is None:
            store = snapshot.store
            sample = snapshot.samples[modality] = store.vectors(sample_ids(store.ids(modality)))[1]
        return Calibration.from_sample(vector, sample)

    def _allowed_ids(self, store, modality: Modality, options: SearchOptions) -> np.ndarray | None:
        if options.where is None and options.path is None:
            return None
        table = store.scan(["id", "uri"], ItemFilter(modality=modality, where=options.where))
        ids = table["id"].to_numpy()
        if options.path is not None and len(ids):
            ids = ids[np.asarray(glob_mask(table["uri"].to_pylist(), options.path), dtype=bool)]
        return ids

    def _search_modality(self, snapshot, vector, modality, k, options) -> list[tuple[float, int]]:
        allowed = self._allowed_ids(snapshot.store, modality, options)
        if allowed is not None and len(allowed) == 0:
            return []
        if allowed is not None and len(allowed) <= self.exact_filter_limit:
            ids, vectors = snapshot.store.vectors(allowed)
            scores = vectors @ vector[0]
            top = np.argsort(-scores)[:k]
            return [(float(scores[i]), int(ids[i])) for i in top]
        index = self.index(modality, snapshot)
        if len(index) == 0:
            return []
        fetch = k if allowed is None else min(len(index), k * FILTER_OVERFETCH)
        try:
            scores, ids = index.search(vector, fetch)
        except SearchIndexError as exc:  # damaged files that passed the load checks: rebuild, in memory only
            log.warning("%s; %s index rebuilt in memory for this search (run xsearch index to repair)", exc, modality)
            snapshot.loaded[modality] = snapshot.indices.rebuild(modality, persist=False)
            index = snapshot.loaded[modality][0]
            scores, ids = index.search(vector, fetch)
        keep = np.ones(len(ids[0]), bool) if allowed is None else np.isin(ids[0], allowed)
        keep &= ids[0] >= 0
        return [(float(s), int(i)) for s, i in zip(scores[0][keep], ids[0][keep])][:k]

    def _shared_hashes(self, snapshot: Snapshot) -> set[str]:
        """The sha256s that more than one row holds, read once per snapshot (most hits have none)."""
        if snapshot.shared is None:
            digests = pc.value_counts(snapshot.store.scan(["sha256"])["sha256"].drop_null().combine_chunks())
            repeated = digests.filter(pc.greater(digests.field("counts"), 1)).field("values").to_pylist()
            snapshot.shared = set(repeated)
        return snapshot.shared


class _Context:
    """What query terms embed against: the engine's encoder (loaded on first need), its decoder and one
    snapshot."""

    def __init__(self, engine: Engine, store):
        self._engine, self.store = engine, store

    @property
    def encoder(self):
        return self._engine.encoder

    def embed_file(self, path: str, modality: Modality):
        from xsearch.decode import decode_query_file  # decoders import torch: only when a query has files

        encoder = self.encoder
        outcome = (self._engine.decoder or decode_query_file)(path, modality, encoder.preprocess)
        if outcome.ok:
            encoder.encode_outcomes([outcome])
        return outcome


def _same_bytes(ids: set[int], rows: dict[int, dict]) -> set[int]:
    """``ids`` and the rows holding the same bytes (sha256) as one of them."""
    digests = {rows[i]["sha256"] for i in ids if i in rows and rows[i]["sha256"]}
    return set(ids) | {i for i, row in rows.items() if row["sha256"] in digests}


def _results(hits: list[Hit], rows: dict[int, dict]) -> list[Result]:
    """Hits as results, ranked; a hit whose row is gone (an index damaged in a way its checks missed) is
    dropped rather than failing the search."""
    results = []
    for rank, hit in enumerate((h for h in hits if h.id in rows), start=1):
        row = rows[hit.id]
        metadata = {key: row[key] for key in METADATA_COLUMNS if row[key] is not None}
        results.append(
            Result(
                rank, hit.score, hit.id, row["uri"], Modality(row["modality"]), metadata, hit.calibrated, hit.duplicates
            )
        )
    return results


def _current(row: dict | None, items: dict[int, dict]) -> bool:
    """A moment whose file's row is there and holds the bytes it was cut from."""
    return row is not None and row["item_id"] in items and items[row["item_id"]]["sha256"] == row["sha256"]


def _per_file(hits: list[Hit], rows: dict[int, dict], per_file: int, kept: set[int]) -> list[Hit]:
    """At most ``per_file`` hits of each file (the ``kept`` ones apart), in order."""
    counts: dict[int, int] = {}
    out = []
    for hit in hits:
        owner = rows[hit.id]["item_id"]
        if hit.id not in kept:
            if counts.get(owner, 0) >= per_file:
                continue
            counts[owner] = counts.get(owner, 0) + 1
        out.append(hit)
    return out


def _moment_results(hits: list[Hit], rows: dict[int, dict], items: dict[int, dict]) -> list[Result]:
    """Moment hits as results: the file's id, uri and metadata, the moment's modality and seconds."""
    results = []
    for rank, hit in enumerate(hits, start=1):
        row = rows[hit.id]
        item = items[row["item_id"]]
        metadata = {key: item[key] for key in METADATA_COLUMNS if item[key] is not None}
        results.append(
            Result(
                rank,
                hit.score,
                row["item_id"],
                row["uri"],
                Modality(row["modality"]),
                metadata,
                hit.calibrated,
                hit.duplicates,
                start=row["start"],
                end=row["end"],
            )
        )
    return results


def _thumbnail_loader(store):
    """The hits' stored previews, read from the same version as the hits."""

    def load(ids: list[int]) -> dict[int, bytes | None]:
        return {i: row["thumbnail"] for i, row in store.rows(ids, ["thumbnail"]).items()}

    return load
