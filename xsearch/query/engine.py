"""The search engine: embeds a query, picks a strategy per target modality, and ranks the hits.

Strategy: with no filter, the modality's FAISS index answers. With a filter (``where``, ``path``), the
matching ids are read from the table; up to ``exact_filter_limit`` of them are scored exactly (a few
against their stored vectors; more by a flat index restricted to them, or against the float16 rows an
IVF index keeps for its re-rank), more than that over-fetch the index and keep the matches.

Moments (``SearchOptions.moments``): the same loop over the ``moments`` table, with its own indices and
calibration samples; what differs is a small policy (``xsearch.query.targets``).

One snapshot per version: everything a search reads (indices, calibration samples, the hashes held by
several rows, counts, rows) comes from views of the database pinned at one version each
(``Database.snapshot``), so an answer never mixes the commits of a concurrent ``xsearch index``. The
snapshot is kept while nothing is committed (a check of the latest version numbers, no read); the next one
tops up copies of the previous one's indices in memory rather than reading their files again. Indices are
never written from here (``IndexSet.current(persist=False)``).

Searches run side by side: a snapshot, its views and the indices it publishes never change once made
(a top-up changes a copy), so the engine's lock covers only making them; the model has its own lock.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from xsearch.capture import distance_km
from xsearch.errors import ModelMismatchError, QueryError, SearchIndexError
from xsearch.index import IndexSet
from xsearch.index.faiss_ops import one_openmp_thread
from xsearch.modalities import Modality
from xsearch.options import EngineSettings, SearchOptions, Selection
from xsearch.paths import glob_mask
from xsearch.query.algebra import Query, combine
from xsearch.query.ranking import Calibration, Hit, by_date, cut, fold_duplicates, lead, sample_ids
from xsearch.query.results import Results
from xsearch.query.targets import ITEMS_TARGET, MOMENTS_TARGET
from xsearch.store import ITEMS, MOMENTS, ItemFilter, ReaderLease, TableView
from xsearch.store import Snapshot as Pinned

log = logging.getLogger(__name__)

FILTER_OVERFETCH = 20  # candidates per wanted hit when the index is searched under a large filter
# Up to this many filtered rows are scored from their stored vectors (read by position); more, by a flat
# index searching only those rows (exact, and without reading every vector from the table).
EXACT_FROM_ROWS = 4096


@dataclass
class ViewState:
    """One table view and what the engine derived from it: each modality's index (with what it covers,
    for the next view's top-up), calibration sample, and the sha256s several rows hold."""

    view: TableView
    indices: IndexSet
    loaded: dict[Modality, tuple[object, dict]] = field(default_factory=dict)
    samples: dict[Modality, np.ndarray] = field(default_factory=dict)
    shared: set[str] | None = None

    @property
    def key(self) -> str:
        return self.view.key


@dataclass
class Snapshot:
    """The database at one version, as the engine searches it: its items and its moments (when kept)."""

    pinned: Pinned
    items: ViewState
    moments: ViewState | None


class Engine:
    """Search one database. The model is loaded only when a query has files or text to embed.

    ``encoder`` is an ``Encoder`` or a zero-argument function returning one (called on first need), so a
    search of stored items never loads a model.
    """

    def __init__(
        self,
        db,
        encoder=None,
        index_cfg=None,
        decoder=None,
        settings: EngineSettings = EngineSettings(),
    ):
        """``decoder(path, modality, cfg) -> Decoded`` decodes query files (default: ``xsearch.decode`` in
        this process; ``Collection`` passes one that decodes in a supervised worker under the indexer's
        limits, so a hostile upload costs a worker, never the server). ``settings``: what it keeps in
        memory, and on which device it searches exactly (``EngineSettings``)."""
        from xsearch.index import IndexCfg

        self.db = db
        self.index_cfg = index_cfg or IndexCfg()
        self.decoder = decoder
        self.settings = settings
        self._exact_tried: weakref.WeakSet = weakref.WeakSet()  # indices already offered the device
        self._lease = ReaderLease(db.files)  # the versions this engine reads, kept by writers' compaction
        self._snapshot: Snapshot | None = None
        self._lock = threading.RLock()  # snapshots and their indices change only under it
        self._encoder = encoder if encoder is None or not callable(encoder) else None
        self._make_encoder = encoder if callable(encoder) else None
        if self._encoder is not None:
            self.check_model(self._encoder.model_id)

    def __repr__(self) -> str:
        return f"Engine({str(self.db.path)!r}, model={self.db.model_id!r})"

    def close(self) -> None:
        """Let writers' compaction reclaim the versions this engine held."""
        self._lease.release()

    def check_model(self, model_id: str) -> None:
        ModelMismatchError.check(self.db.path, self.db.model_id, model_id, argument="checkpoint")

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
        """The database's current versions, frozen (the one held while nothing was committed since)."""
        seen = self._snapshot
        if seen is not None and self.db.unchanged(seen.pinned, self._lease):
            return seen  # the common case, without the lock: searches never queue here
        with self._lock:
            previous = self._snapshot
            if previous is not seen:  # another search renewed it meanwhile
                return previous
            pinned = self.db.snapshot(self._lease)  # a commit came since ``seen``
            items = self._renewed(previous and previous.items, pinned.items, ITEMS)
            moments = None
            if pinned.moments is not None:
                moments = self._renewed(previous and previous.moments, pinned.moments, MOMENTS)
            self._snapshot = Snapshot(pinned, items, moments)
            return self._snapshot

    def _renewed(self, previous: ViewState | None, view: TableView, table: str) -> ViewState:
        """``previous`` while ``view`` is the same version, else the state of ``view`` that tops up the
        indices ``previous`` had loaded, in memory, on first use."""
        if previous is not None and previous.key == view.key:
            return previous
        if self.settings.hold_rows:
            view.hold_in_memory()
        renewed = ViewState(view, IndexSet.over(self.db, view, table, self.index_cfg))
        if previous is not None:
            renewed.loaded = dict(previous.loaded)
        return renewed

    def index(self, modality: Modality, state: ViewState | None = None):
        """The modality's FAISS index over ``state``'s view (default: the current items), brought up to date
        in memory (only ``xsearch index`` writes index files) and ready to be searched from any thread: it
        does not change afterwards."""
        state = state or self.snapshot().items
        cached = state.loaded.get(modality)
        if cached is not None and cached[1].get("version_key") == state.key:
            return cached[0]  # published, never changed: no lock
        with self._lock:
            cached = state.loaded.get(modality)
            if cached is None or cached[1].get("version_key") != state.key:
                cached = state.indices.current(modality, persist=False, previous=cached)
                self._publish(state, modality, cached)
            return cached[0]

    def _publish(self, state: ViewState, modality: Modality, loaded: tuple) -> None:
        """An index made ready (on the device where asked), then offered to searches."""
        index = loaded[0]
        device = self.settings.exact_device
        if device is not None and index not in self._exact_tried:
            self._exact_tried.add(index)
            index.use_exact(device, self.settings.exact_budget_bytes)
        index.prepare()
        state.loaded[modality] = loaded

    # ---- embedding ------------------------------------------------------------------------------------

    def embed_inputs(self, query: Query, snapshot: Snapshot | None = None) -> tuple[np.ndarray, list]:
        """The query's unit vector ``float32 [dim]`` and what each input turned out to be (stored items are
        read from ``snapshot``, default: the current one)."""
        context = _Context(self, snapshot or self.snapshot())
        embedded = [term.embed(context) for term in query.terms]
        vectors = np.stack([np.asarray(v, dtype=np.float64) for v, _ in embedded])
        return combine(vectors, [t.weight for t in query.terms]), [info for _, info in embedded]

    def embed(self, query: Query) -> np.ndarray:
        return self.embed_inputs(query)[0]

    # ---- search ---------------------------------------------------------------------------------------

    def targets(self, target, state: ViewState | None = None) -> list[Modality]:
        """The modalities ``target`` names (a ``Selection.target``, or anything it accepts); ``None`` or
        ``"all"``: those the view holds (default: the current items)."""
        named = target if isinstance(target, tuple) else Selection(target=target).target
        return list(named) if named is not None else (state or self.snapshot().items).view.modalities()

    def search(self, query: Query | str, options: SearchOptions | None = None, **overrides) -> Results:
        """The items (or moments) nearest to ``query`` (a ``Query``, or a text), best first, as ``options``
        (``SearchOptions``, or its fields as keywords) say. One target is ranked by raw cosine; several are
        merged by calibrated score (``ranking``); then duplicates are folded and the cut-offs applied."""
        query = Query.of(query)
        options = SearchOptions.of(options, **overrides)  # a typo fails here, before any model is loaded
        with one_openmp_thread():
            return self._search(query, options)

    def _search(self, query: Query, options: SearchOptions) -> Results:
        target = MOMENTS_TARGET if options.moments else ITEMS_TARGET
        snapshot = self.snapshot()  # one version for everything below
        vector, inputs = self.embed_inputs(query, snapshot)
        state = target.state(snapshot)
        modalities = target.searched(self.targets(options.target, state), state)
        by_calibrated = len(modalities) > 1
        k = min(options.k, state.view.count())  # never allocate for more results than there are rows
        own = target.own(inputs)
        fetch, hits, rows, leading = target.fetch(k, options), [], {}, set()
        while k:
            hits, exhausted = self._gather(state, vector, modalities, fetch, options, by_calibrated)
            rows = target.rows(snapshot, [h.id for h in hits])  # serves dedup and results
            hits = [h for h in hits if h.id in rows]
            leading = target.leading(own, rows)
            if options.dedup:
                hits = self._deduplicated(snapshot, state, target, hits, rows, own)
            hits = target.per_file(lead(hits, leading, options.exclude_query_items), rows, options, leading)
            if len(hits) >= k or exhausted:
                break
            fetch *= 2  # duplicates took places: look further down each modality's list
        hits = cut(hits[:k], options, by_calibrated, kept=leading)
        results = [target.result(rank, hit, rows[hit.id]) for rank, hit in enumerate(hits, start=1)]
        if options.sort != "relevance":  # after the cut-offs: only relevant hits are put in date order
            results = by_date(results, newest_first=options.sort == "-date")
        items = snapshot.items.view
        return Results(results, query, modalities, inputs, _thumbnail_loader(items), items.model_id)

    def _gather(self, state, vector, modalities, fetch, options, by_calibrated) -> tuple[list[Hit], bool]:
        """Each modality's best ``fetch`` hits with raw and calibrated scores, merged; and whether every
        modality ran out of rows."""
        hits, exhausted = [], True
        for modality in modalities:
            calibration = self.calibration(modality, vector, state)
            found = self._search_modality(state, vector[None], modality, fetch, options)
            exhausted &= len(found) < fetch
            hits += [Hit(i, s, calibration(s)) for s, i in found]
        # Merged by calibrated score; an exact tie (two hits each at its modality's median, say) goes to the
        # nearer cosine. Stable: one modality's equal scores keep the index's order.
        hits.sort(key=(lambda h: (-h.calibrated, -h.score)) if by_calibrated else (lambda h: -h.score))
        return hits, exhausted

    def _deduplicated(self, snapshot, state, target, hits: list[Hit], rows: dict[int, dict], own) -> list[Hit]:
        """One hit per digest (the same bytes; of moments, the same seconds of the same bytes)."""
        hashes = {i: target.digest(row) for i, row in rows.items()}
        shared = sorted({row["sha256"] for row in rows.values()} & self._shared_hashes(snapshot.items))
        paths: dict[str, list[tuple[int, str]]] = {}
        if shared:
            columns = ["id", "uri", *target.digest_columns]
            for row in state.view.scan(columns, ItemFilter(sha256s=shared)).to_pylist():
                paths.setdefault(target.digest(row), []).append((row["id"], row["uri"]))
        return fold_duplicates(hits, hashes, paths, preferred=own)

    def calibration(self, modality: Modality, vector: np.ndarray, state: ViewState | None = None) -> Calibration:
        """The query's baseline against ``modality``: its cosines to a fixed sample of the stored vectors."""
        state = state or self.snapshot().items
        sample = state.samples.get(modality)
        if sample is None:
            with self._lock:  # drawn once per view and modality
                sample = state.samples.get(modality)
                if sample is None:
                    view = state.view
                    sample = state.samples[modality] = view.vectors(sample_ids(view.ids(modality)))[1]
        return Calibration.from_sample(vector, sample)

    def _allowed_ids(self, view: TableView, modality: Modality, options: SearchOptions) -> np.ndarray | None:
        if options.where is None and options.path is None and options.near is None:
            return None
        columns = ["id", "uri", *(("latitude", "longitude") if options.near else ())]
        table = view.scan(columns, ItemFilter(modality=modality, where=options.where, near=options.near))
        keep = np.ones(table.num_rows, dtype=bool)
        if options.path is not None and table.num_rows:
            keep &= glob_mask(table["uri"], options.path)
        if options.near is not None and table.num_rows:  # the box, then the circle
            latitude, longitude, km = options.near
            found = [table[c].to_numpy(zero_copy_only=False) for c in ("latitude", "longitude")]
            keep &= distance_km(latitude, longitude, *found) <= km
        return table["id"].to_numpy()[keep]

    def _search_modality(self, state, vector, modality, k, options) -> list[tuple[float, int]]:
        allowed = self._allowed_ids(state.view, modality, options)
        if allowed is not None and len(allowed) == 0:
            return []
        within = None
        if allowed is not None and len(allowed) <= self.settings.exact_filter_limit:
            index = self.index(modality, state) if len(allowed) > EXACT_FROM_ROWS else None
            if index is None or not index.scores_exactly:  # the rows' vectors, scored here
                ids, scores = self._scored_among(state.view, index, vector[0], allowed)
                top = np.argsort(-scores)[:k]
                return [(float(scores[i]), int(ids[i])) for i in top]
            within = allowed  # a flat index scores exactly: searched only over those rows
        else:
            index = self.index(modality, state)
        if len(index) == 0:
            return []
        fetch = k if allowed is None or within is not None else min(len(index), k * FILTER_OVERFETCH)
        try:
            scores, ids = index.search(vector, fetch, within)
        except SearchIndexError as exc:  # damaged files that passed the load checks: rebuild, in memory only
            log.warning("%s; %s index rebuilt in memory for this search (run xsearch index to repair)", exc, modality)
            with self._lock:
                if state.loaded.get(modality, (None,))[0] is index:  # not rebuilt by another search meanwhile
                    self._publish(state, modality, state.indices.rebuild(modality, persist=False))
                index = state.loaded[modality][0]
            scores, ids = index.search(vector, fetch, within)
        keep = np.ones(len(ids[0]), bool) if allowed is None else np.isin(ids[0], allowed)
        keep &= ids[0] >= 0
        return [(float(s), int(i)) for s, i in zip(scores[0][keep], ids[0][keep])][:k]

    @staticmethod
    def _scored_among(view: TableView, index, vector: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids ascending, exact scores)`` of the rows of ``ids``: from the float16 rows an index holds for
        its re-rank (no table read, and the precision an unfiltered search of it gives), else from the
        table's vectors."""
        scored = index.scores_among(vector, ids) if index is not None else None
        if scored is not None:
            return scored
        found, vectors = view.vectors(ids)
        return found, vectors @ vector

    def _shared_hashes(self, items: ViewState) -> set[str]:
        """The sha256s that more than one file's row holds, read once per items view (most hits have none)."""
        if items.shared is None:
            with self._lock:
                if items.shared is None:
                    digests = pc.value_counts(items.view.scan(["sha256"])["sha256"].drop_null().combine_chunks())
                    repeated = digests.filter(pc.greater(digests.field("counts"), 1)).field("values").to_pylist()
                    items.shared = set(repeated)
        return items.shared


class _Context:
    """What query terms embed against: the engine's encoder (loaded on first need), its decoder and the
    stored rows of the snapshot the search reads."""

    def __init__(self, engine: Engine, snapshot: Snapshot):
        self._engine = engine
        self.items = snapshot.items.view
        self.moments = snapshot.moments.view if snapshot.moments is not None else None
        self.embed_dim = self.items.embed_dim

    @property
    def encoder(self):
        return self._engine.encoder

    def embed_file(self, path: str, modality: Modality):
        from xsearch.decode import decode_query_file  # decoders import torch: only when a query has files

        encoder = self.encoder
        decoded = (self._engine.decoder or decode_query_file)(path, modality, encoder.preprocess)
        return encoder.encode_decoded([decoded])[0]


def _thumbnail_loader(items: TableView):
    """The hits' stored previews, read from the same version as the hits."""

    def load(ids: list[int]) -> dict[int, bytes | None]:
        return {i: row["thumbnail"] for i, row in items.rows(ids, ["thumbnail"]).items()}

    return load
