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

from xsearch.errors import QueryError, UsageError
from xsearch.modalities import Modality, parse_modalities
from xsearch.query.algebra import Query, QueryInput, combine
from xsearch.query.results import METADATA_COLUMNS, Result, Results
from xsearch.store import ItemFilter

log = logging.getLogger(__name__)

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
    ) -> Results:
        """The ``k`` items nearest to ``query`` among ``target`` modalities (default: all), best first.

        ``where`` is a Lance SQL predicate on the items table (``"width >= 1024"``); ``path`` a glob on
        the file path (``"*/holidays/*"``; a relative glob such as ``"photos/*"`` is taken from the current
        folder, as stored paths are absolute).
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}", argument="k")
        targets = self.targets(target)  # a typo fails here, before any model is loaded
        vector, inputs = self.embed_inputs(query)
        hits: list[tuple[float, int]] = []
        for modality in targets:
            hits.extend(self._search_modality(vector[None], modality, k, where, path))
        hits.sort(key=lambda h: -h[0])
        return Results(self._results(hits[:k]), query, targets, inputs, self._thumbnails)

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

    def _results(self, hits: list[tuple[float, int]]) -> list[Result]:
        columns = ["uri", "modality", *METADATA_COLUMNS]
        rows = self.store.rows([i for _, i in hits], columns)
        results = []
        for rank, (score, item_id) in enumerate(hits, start=1):
            row = rows[item_id]
            metadata = {key: row[key] for key in METADATA_COLUMNS if row[key] is not None}
            results.append(Result(rank, score, item_id, row["uri"], Modality(row["modality"]), metadata))
        return results

    def _thumbnails(self, ids: list[int]) -> dict[int, bytes | None]:
        return {i: row["thumbnail"] for i, row in self.store.rows(ids, ["thumbnail"]).items()}
