"""The search engine: embeds a query, picks a strategy per target modality, and ranks the hits.

Strategy: with no filter, the modality's FAISS index answers. With a filter (``where``, ``path``), the
matching ids are read from the store; up to ``exact_filter_limit`` of them are scored exactly against
their stored vectors, more than that over-fetch the index and keep the matches. Indices are kept in memory
while the store's version is unchanged, and are never written from here (see ``IndexSet.fresh``).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Sequence

import numpy as np
import pyarrow.compute as pc

from xsearch.errors import QueryError, SearchIndexError, UsageError
from xsearch.modalities import Modality, parse_modalities
from xsearch.query.algebra import Query, QueryInput, combine
from xsearch.query.ranking import Calibration, autocut, sample_ids
from xsearch.query.results import METADATA_COLUMNS, Result, Results
from xsearch.store import ItemFilter

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["uri", "modality", "sha256", *METADATA_COLUMNS]
# With a filter, up to this many matching items are scored exactly; above it the ANN index is over-fetched.
EXACT_FILTER_LIMIT = 200_000
FILTER_OVERFETCH = 20  # candidates per wanted hit when the index is searched under a large filter


def absolute_glob(pattern: str) -> str:
    """A path glob as it matches stored (absolute) paths: ``~`` expanded, a relative one from the current
    folder; one that starts with a wildcard is left as it is (``*/2024/*``)."""
    pattern = os.path.expanduser(pattern)
    if os.path.isabs(pattern) or pattern[:1] in ("*", "?", "["):
        return pattern
    return os.path.join(os.getcwd(), pattern)


class Engine:
    """Search one store. The model is loaded only when a query has files or text to embed.

    ``encoder`` is an ``Encoder`` or a zero-argument function returning one (called on first need), so a
    search of stored items never loads a model.
    """

    def __init__(self, store, encoder=None, index_cfg=None, exact_filter_limit: int = EXACT_FILTER_LIMIT):
        from xsearch.index import IndexCfg, IndexSet

        self.store = store
        self.indices = IndexSet(store, index_cfg or IndexCfg())
        self.exact_filter_limit = exact_filter_limit
        self._loaded: dict[Modality, tuple[int, object]] = {}  # modality -> (store version, VectorIndex)
        self._samples: dict[Modality, tuple[int, np.ndarray]] = {}  # modality -> (version, calibration sample)
        self._shared: tuple[int, set[str]] | None = None  # (version, sha256s held by several rows)
        self._encoder = encoder if encoder is None or not callable(encoder) else None
        self._make_encoder = encoder if callable(encoder) else None
        if self._encoder is not None:
            self.check_model(self._encoder.model_id)

    def __repr__(self) -> str:
        return f"Engine({str(self.store.path)!r}, model={self.store.model_id!r})"

    def check_model(self, model_id: str) -> None:
        if model_id != self.store.model_id:
            raise QueryError(
                f"{self.store.path} holds embeddings of model '{self.store.model_id}'; queries embedded with "
                f"'{model_id}' live in another space (load the model the database was made with)"
            )

    @property
    def encoder(self):
        if self._encoder is None:
            if self._make_encoder is None:
                raise QueryError("this query has files or text to embed, but no model was given")
            encoder = self._make_encoder()
            self.check_model(encoder.model_id)
            self._encoder = encoder
        return self._encoder

    # ---- embedding ------------------------------------------------------------------------------------

    def embed_inputs(self, query: Query) -> tuple[np.ndarray, list[QueryInput]]:
        """The query's unit vector ``float32 [dim]`` and what each input turned out to be."""
        embedded = [term.embed(self) for term in query.terms]
        vectors = np.stack([np.asarray(v, dtype=np.float64) for v, _ in embedded])
        return combine(vectors, [t.weight for t in query.terms]), [info for _, info in embedded]

    def embed(self, query: Query) -> np.ndarray:
        return self.embed_inputs(query)[0]

    # ---- search ---------------------------------------------------------------------------------------

    def targets(self, target: str | Modality | Sequence | None) -> list[Modality]:
        """``None``/``"all"``: the modalities the store holds; else the named ones (``UsageError`` on a typo)."""
        if target is None or (isinstance(target, str) and target.strip().lower() == "all"):
            return self.store.modalities()
        try:
            return parse_modalities([target] if isinstance(target, Modality) else target)
        except UsageError as exc:
            raise exc.for_argument("target") from None

    def search(
        self,
        query: Query,
        target: str | Sequence | None = None,
        k: int = 10,
        where: str | None = None,
        path: str | None = None,
        *,
        min_score: float | None = None,
        min_calibrated: float | None = None,
        autocut: int | None = None,
        dedup: bool = True,
    ) -> Results:
        """The ``k`` items nearest to ``query`` among ``target`` modalities (default: all), best first.

        ``where`` is a Lance SQL predicate on the items table (``"width >= 1024"``); ``path`` a glob on
        the file path (``"*/holidays/*"``; a relative glob such as ``"photos/*"`` is taken from the current
        folder, as stored paths are absolute).

        One target is ranked by raw cosine; several are merged by calibrated score (``ranking``). Cut-offs,
        all off by default: ``min_score`` (raw cosine), ``min_calibrated``, and ``autocut`` (keep what comes
        before the N-th jump in the ranking scores). With ``dedup``, files with the same bytes come back once,
        the other paths in ``Result.duplicates``.
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}", argument="k")
        if autocut is not None and autocut < 1:
            raise UsageError(f"autocut must be at least 1 (jumps), got {autocut}", argument="autocut")
        targets = self.targets(target)  # a typo fails here, before any model is loaded
        vector, inputs = self.embed_inputs(query)
        by_calibrated = len(targets) > 1
        k = min(k, self.store.count())  # never allocate for more results than there are items
        fetch, hits, rows = k, [], {}
        while k:
            hits, exhausted = self._gather(vector, targets, fetch, where, path, by_calibrated)
            rows = self.store.rows([h["id"] for h in hits], RESULT_COLUMNS)  # one read serves dedup and results
            if dedup:
                hits = self._deduplicated(hits, rows)
            if len(hits) >= k or exhausted:
                break
            fetch *= 2  # duplicates took places: look further down each modality's list
        hits = self._cut(hits[:k], min_score, min_calibrated, autocut, by_calibrated)
        return Results(self._results(hits, rows), query, targets, inputs, self._thumbnails)

    def _gather(self, vector, targets, fetch, where, path, by_calibrated) -> tuple[list[dict], bool]:
        """Each target's best ``fetch`` hits with raw and calibrated scores, merged; and whether every
        target ran out of items."""
        hits, exhausted = [], True
        for modality in targets:
            calibration = self.calibration(modality, vector)
            found = self._search_modality(vector[None], modality, fetch, where, path)
            exhausted &= len(found) < fetch
            hits += [{"score": s, "calibrated": calibration(s), "id": i, "duplicates": []} for s, i in found]
        key = "calibrated" if by_calibrated else "score"
        hits.sort(key=lambda h: -h[key])  # stable: one target keeps the index's own order
        return hits, exhausted

    def _deduplicated(self, hits: list[dict], rows: dict[int, dict]) -> list[dict]:
        """The first hit of each distinct sha256, listing every other path of the same bytes."""
        hashes = {i: row["sha256"] for i, row in rows.items()}
        shared = self._shared_hashes()
        known = sorted({h for h in hashes.values() if h in shared})
        paths: dict[str, list[str]] = {}
        if known:
            for row in self.store.scan(["id", "uri", "sha256"], ItemFilter(sha256s=known)).to_pylist():
                paths.setdefault(row["sha256"], []).append((row["id"], row["uri"]))
        kept, seen = [], set()
        for hit in hits:
            digest = hashes.get(hit["id"])
            if digest and digest in seen:
                continue
            if digest:
                seen.add(digest)
                hit["duplicates"] = sorted(uri for i, uri in paths.get(digest, []) if i != hit["id"])
            kept.append(hit)
        return kept

    @staticmethod
    def _cut(hits, min_score, min_calibrated, jumps, by_calibrated) -> list[dict]:
        if min_score is not None:
            hits = [h for h in hits if h["score"] >= min_score]
        if min_calibrated is not None:
            hits = [h for h in hits if h["calibrated"] >= min_calibrated]
        if jumps is not None:
            hits = hits[: autocut([h["calibrated" if by_calibrated else "score"] for h in hits], jumps)]
        return hits

    def calibration(self, modality: Modality, vector: np.ndarray) -> Calibration:
        """The query's baseline against ``modality``: its cosines to a fixed sample of the stored vectors."""
        version = self.store.version
        cached = self._samples.get(modality)
        if cached is None or cached[0] != version:
            _, sample = self.store.vectors(sample_ids(self.store.ids(modality)))
            cached = self._samples[modality] = (version, sample)
        return Calibration.from_sample(vector, cached[1])

    def _allowed_ids(self, modality: Modality, where: str | None, path: str | None) -> np.ndarray | None:
        if where is None and path is None:
            return None
        table = self.store.scan(["id", "uri"], ItemFilter(modality=modality, where=where))
        ids = table["id"].to_numpy()
        if path is not None and len(ids):
            pattern = absolute_glob(path)
            keep = [fnmatch.fnmatch(u, pattern) for u in table["uri"].to_pylist()]
            ids = ids[np.asarray(keep, dtype=bool)]
        return ids

    def _search_modality(self, vector, modality, k, where, path) -> list[tuple[float, int]]:
        allowed = self._allowed_ids(modality, where, path)
        if allowed is not None and len(allowed) == 0:
            return []
        if allowed is not None and len(allowed) <= self.exact_filter_limit:
            ids, vectors = self.store.vectors(allowed)
            scores = vectors @ vector[0]
            top = np.argsort(-scores)[:k]
            return [(float(scores[i]), int(ids[i])) for i in top]
        index = self.index(modality)
        if len(index) == 0:
            return []
        fetch = k if allowed is None else min(len(index), k * FILTER_OVERFETCH)
        try:
            scores, ids = index.search(vector, fetch)
        except SearchIndexError as exc:  # damaged files that passed the load checks: rebuild, in memory only
            log.warning("%s; %s index rebuilt in memory for this search (run xsearch index to repair)", exc, modality)
            index = self.indices.build(modality, persist=False)
            self._loaded[modality] = (self.store.version, index)
            scores, ids = index.search(vector, fetch)
        keep = np.ones(len(ids[0]), bool) if allowed is None else np.isin(ids[0], allowed)
        keep &= ids[0] >= 0
        return [(float(s), int(i)) for s, i in zip(scores[0][keep], ids[0][keep])][:k]

    def index(self, modality: Modality):
        """The modality's FAISS index, kept in memory while the store's version is unchanged; a stale one
        is brought up to date in memory (only ``xsearch index`` writes index files)."""
        version = self.store.version
        cached = self._loaded.get(modality)
        if cached is None or cached[0] != version:
            cached = self._loaded[modality] = (version, self.indices.fresh(modality, persist=False))
        return cached[1]

    def _shared_hashes(self) -> set[str]:
        """The sha256s that more than one row holds, read once per store version (most hits have none)."""
        version = self.store.version
        if self._shared is None or self._shared[0] != version:
            digests = pc.value_counts(self.store.scan(["sha256"])["sha256"].drop_null().combine_chunks())
            repeated = digests.filter(pc.greater(digests.field("counts"), 1)).field("values").to_pylist()
            self._shared = (version, set(repeated))
        return self._shared[1]

    def _results(self, hits: list[dict], rows: dict[int, dict]) -> list[Result]:
        results = []
        for rank, hit in enumerate(hits, start=1):
            row = rows[hit["id"]]
            metadata = {key: row[key] for key in METADATA_COLUMNS if row[key] is not None}
            modality = Modality(row["modality"])
            results.append(
                Result(
                    rank,
                    hit["score"],
                    hit["id"],
                    row["uri"],
                    modality,
                    metadata,
                    hit["calibrated"],
                    hit["duplicates"],
                )
            )
        return results

    def _thumbnails(self, ids: list[int]) -> dict[int, bytes | None]:
        return {i: row["thumbnail"] for i, row in self.store.rows(ids, ["thumbnail"]).items()}
