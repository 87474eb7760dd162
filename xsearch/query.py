"""The query layer: cross-modal search and weighted embedding arithmetic over an indexed database.

A ``Query`` is a weighted sum of terms (files of any modality, text, raw vectors, stored items); each term
is embedded to a unit vector, the weighted sum is re-normalised, and the result is searched in the FAISS
indices of the target modalities. Because ImageBind puts every modality in one space, "this bird photo +
the sound of waves" is ``Query.image("bird.jpg") * 0.6 + Query.audio("waves.wav") * 0.4``.

Example
-------
>>> engine = Engine.open("media.db")  # doctest: +SKIP
>>> engine.search(Query.audio("rain.wav"), target="image", k=5).to_pandas()  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from xsearch.errors import QueryError
from xsearch.modalities import Modality, parse_modalities
from xsearch.store import in_list, sql_string

RESULT_COLUMNS = ["id", "uri", "modality", "width", "height", "duration", "sample_rate"]
# With a filter, up to this many matching items are scored exactly; above it the ANN index is over-fetched.
EXACT_FILTER_LIMIT = 200_000


@dataclass(frozen=True)
class Term:
    """One input of a query: what it is (``kind``), its value, and its weight."""

    kind: str  # file, text, vector, item
    value: object  # path, text, np.ndarray, id or uri
    modality: Modality | None = None  # for files
    weight: float = 1.0

    def describe(self) -> dict:
        value = self.value if self.kind != "vector" else f"<vector of {len(self.value)}>"
        out = {"kind": self.kind, "value": value if not isinstance(value, Path) else str(value), "weight": self.weight}
        if self.modality is not None:
            out["modality"] = self.modality.value
        return out


class Query:
    """A weighted sum of inputs. Build with the class methods; combine with ``+``, ``-`` and scalar ``*``."""

    def __init__(self, terms: Iterable[Term]):
        self.terms = tuple(terms)
        if not self.terms:
            raise QueryError("a query needs at least one input")
        for term in self.terms:
            if not math.isfinite(term.weight):
                raise QueryError(f"weight {term.weight} of {term.kind} {term.value!r} is not a finite number")

    # ---- constructors ------------------------------------------------------------------------------------

    @classmethod
    def file(cls, path: str | os.PathLike, modality: Modality | str, weight: float = 1.0) -> Query:
        return cls([Term("file", os.fspath(path), Modality.parse(modality), float(weight))])

    @classmethod
    def image(cls, path, weight: float = 1.0) -> Query:
        return cls.file(path, Modality.IMAGE, weight)

    @classmethod
    def video(cls, path, weight: float = 1.0) -> Query:
        return cls.file(path, Modality.VIDEO, weight)

    @classmethod
    def audio(cls, path, weight: float = 1.0) -> Query:
        return cls.file(path, Modality.AUDIO, weight)

    @classmethod
    def depth(cls, path, weight: float = 1.0) -> Query:
        return cls.file(path, Modality.DEPTH, weight)

    @classmethod
    def thermal(cls, path, weight: float = 1.0) -> Query:
        return cls.file(path, Modality.THERMAL, weight)

    @classmethod
    def imu(cls, path, weight: float = 1.0) -> Query:
        return cls.file(path, Modality.IMU, weight)

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Query:
        if not str(text).strip():
            raise QueryError("text query is empty")
        return cls([Term("text", str(text), Modality.TEXT, float(weight))])

    @classmethod
    def vector(cls, vector, weight: float = 1.0) -> Query:
        array = np.asarray(vector, dtype=np.float32).reshape(-1)
        return cls([Term("vector", array, None, float(weight))])

    @classmethod
    def item(cls, id_or_uri: int | str, weight: float = 1.0) -> Query:
        """A stored item's embedding, by id or uri: no model run."""
        return cls([Term("item", id_or_uri, None, float(weight))])

    # ---- algebra ---------------------------------------------------------------------------------------

    def __add__(self, other: Query) -> Query:
        if not isinstance(other, Query):
            return NotImplemented
        return Query(self.terms + other.terms)

    def __sub__(self, other: Query) -> Query:
        if not isinstance(other, Query):
            return NotImplemented
        return self + other * -1.0

    def __mul__(self, scalar: float) -> Query:
        if isinstance(scalar, Query) or not isinstance(scalar, (int, float, np.floating, np.integer)):
            return NotImplemented
        return Query(Term(t.kind, t.value, t.modality, t.weight * float(scalar)) for t in self.terms)

    __rmul__ = __mul__

    def __neg__(self) -> Query:
        return self * -1.0

    def __repr__(self) -> str:
        return " + ".join(f"{t.weight:g} * {t.kind}({t.value!r})" for t in self.terms)

    @property
    def needs_model(self) -> bool:
        return any(t.kind in ("file", "text") for t in self.terms)


@dataclass
class Result:
    rank: int
    score: float
    id: int
    uri: str
    modality: str
    metadata: dict = field(default_factory=dict)  # width, height, duration, sample_rate (when known)

    def as_json(self) -> dict:
        return asdict(self)


class Results(list):
    """A list of ``Result`` best first, with the query it answers; ``to_arrow()`` / ``to_pandas()``."""

    def __init__(self, results: Sequence[Result], query: Query | None = None, targets: Sequence[str] = ()):
        super().__init__(results)
        self.query = query
        self.targets = list(targets)

    def to_arrow(self) -> pa.Table:
        columns = {
            "rank": pa.array([r.rank for r in self], pa.int32()),
            "score": pa.array([r.score for r in self], pa.float32()),
            "id": pa.array([r.id for r in self], pa.int64()),
            "uri": pa.array([r.uri for r in self], pa.string()),
            "modality": pa.array([r.modality for r in self], pa.string()),
        }
        for key, kind in (("width", pa.int32()), ("height", pa.int32()), ("duration", pa.float64())):
            columns[key] = pa.array([r.metadata.get(key) for r in self], kind)
        columns["sample_rate"] = pa.array([r.metadata.get("sample_rate") for r in self], pa.int32())
        return pa.table(columns)

    def to_pandas(self):
        return self.to_arrow().to_pandas()

    def as_json(self) -> dict:
        return {
            "query": [t.describe() for t in self.query.terms] if self.query else [],
            "targets": self.targets,
            "results": [r.as_json() for r in self],
        }


def item_where(key: int | str) -> str:
    """The ``items`` predicate for a stored item named by id, or by uri as given or made absolute."""
    if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit()):
        return f"id = {int(key)}"
    uris = {str(key), os.path.abspath(str(key))}
    return " OR ".join(f"uri = {sql_string(u)}" for u in sorted(uris))


def modality_where(modality: str, where: str | None = None) -> str:
    """``modality = ...`` and, when given, the user's predicate."""
    return f"modality = {sql_string(modality)}" + (f" AND ({where})" if where else "")


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors, re-normalised; a zero or non-finite result is a ``QueryError``."""
    units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    total = (np.asarray(weights, dtype=np.float64)[:, None] * units).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm):
        raise QueryError("the query vector is not finite (NaN or infinite input)")
    if norm < 1e-6:
        raise QueryError("the query's weighted inputs cancel out (the combined vector is zero)")
    return (total / norm).astype(np.float32)


class Engine:
    """Search an xsearch database. The model is loaded only when a query has files or text to embed.

    ``encoder`` may be given (tests, notebooks that already hold one); otherwise ``checkpoint`` and
    ``architecture`` are resolved like ``load_pretrained`` on first need.
    """

    def __init__(self, store, encoder=None, checkpoint=None, architecture: str | None = None, device: str = "auto"):
        from xsearch.index import IndexSet

        self.store = store
        self.indices = IndexSet(store)
        self._loaded: dict[str, tuple[int, object]] = {}  # modality -> (store version, VectorIndex)
        self._encoder = encoder
        self._checkpoint, self._architecture, self._device = checkpoint, architecture, device
        if encoder is not None:
            self._check_model(encoder.model_id)

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs) -> Engine:
        from xsearch.store import Store

        return cls(Store.open(path, create=False), **kwargs)

    def _check_model(self, model_id: str) -> None:
        if model_id != self.store.model_id:
            raise QueryError(
                f"{self.store.path} holds embeddings of model '{self.store.model_id}'; queries embedded with "
                f"'{model_id}' live in another space (use the same --model/--checkpoint as for indexing)"
            )

    @property
    def encoder(self):
        if self._encoder is None:
            from xsearch.encoder import Encoder

            architecture = self._architecture or self.store.model_id
            encoder = Encoder.from_pretrained(self._checkpoint, architecture, self._device)
            self._check_model(encoder.model_id)
            self._encoder = encoder
        return self._encoder

    # ---- embedding ------------------------------------------------------------------------------------

    def _item_vector(self, key: int | str) -> np.ndarray:
        from xsearch.store import embeddings_to_numpy

        table = self.store.scan(["embedding"], item_where(key))
        if table.num_rows == 0:
            raise QueryError(f"no indexed item {key!r} in {self.store.path}")
        return embeddings_to_numpy(table["embedding"])[0]

    def embed_term(self, term: Term) -> np.ndarray:
        if term.kind == "vector":
            if term.value.shape[0] != self.store.embed_dim:
                raise QueryError(f"query vector has {term.value.shape[0]} values, expected {self.store.embed_dim}")
            return term.value
        if term.kind == "item":
            return self._item_vector(term.value)
        if term.kind == "text":
            return self.encoder.encode_text([term.value]).numpy()[0]
        result = self.encoder.encode_files([term.value], modality=term.modality)[0]
        if result.error is not None:
            raise QueryError(f"query input {result.error}")
        return result.embedding

    def embed(self, query: Query) -> np.ndarray:
        """The query's unit vector ``float32 [dim]``."""
        vectors = np.stack([self.embed_term(t) for t in query.terms]).astype(np.float64)
        return combine(vectors, [t.weight for t in query.terms])

    # ---- search ---------------------------------------------------------------------------------------

    def modalities(self) -> list[str]:
        """The modalities the database holds, in a stable order."""
        present = self.store.modalities()
        return [m.value for m in Modality if m.value in present]

    def _targets(self, target) -> list[str]:
        if target is None or target == "all":
            return self.modalities()
        try:
            return [m.value for m in parse_modalities(target)]
        except ValueError as exc:
            raise QueryError(f"target: {exc}") from None

    def search(
        self,
        query: Query,
        target: str | Sequence[str] | None = None,
        k: int = 10,
        where: str | None = None,
        path: str | None = None,
    ) -> Results:
        """The ``k`` items nearest to ``query`` among ``target`` modalities (default: all), best first.

        ``where`` is a Lance SQL predicate on the items table (``"width >= 1024"``); ``path`` a glob on
        the file path (``"*/holidays/*"``).
        """
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        targets = self._targets(target)
        vector = self.embed(query)[None]
        hits: list[tuple[float, int]] = []
        for modality in targets:
            hits.extend(self._search_modality(vector, modality, k, where, path))
        hits.sort(key=lambda h: -h[0])
        return Results(self._results(hits[:k]), query, targets)

    def _allowed_ids(self, modality: str, where: str | None, path: str | None) -> np.ndarray | None:
        if where is None and path is None:
            return None
        table = self.store.scan(["id", "uri"], modality_where(modality, where))
        ids = table["id"].to_numpy()
        if path is not None:
            keep = [fnmatch.fnmatch(u, path) for u in table["uri"].to_pylist()]
            ids = ids[np.asarray(keep, dtype=bool)] if len(ids) else ids
        return ids

    def _search_modality(self, vector, modality, k, where, path) -> list[tuple[float, int]]:
        allowed = self._allowed_ids(modality, where, path)
        if allowed is not None and len(allowed) == 0:
            return []
        if allowed is not None and len(allowed) <= EXACT_FILTER_LIMIT:
            ids, vectors = self.store.vectors(allowed)
            scores = vectors @ vector[0]
            top = np.argsort(-scores)[:k]
            return [(float(scores[i]), int(ids[i])) for i in top]
        index = self._index(modality)
        if len(index) == 0:
            return []
        fetch = k if allowed is None else min(len(index), k * 20)
        scores, ids = index.search(vector, fetch)
        keep = np.ones(len(ids[0]), bool) if allowed is None else np.isin(ids[0], allowed)
        keep &= ids[0] >= 0
        return [(float(s), int(i)) for s, i in zip(scores[0][keep], ids[0][keep])][:k]

    def _index(self, modality: str):
        """The modality's FAISS index, kept in memory while the store's version is unchanged."""
        version = self.store.version
        cached = self._loaded.get(modality)
        if cached is None or cached[0] != version:
            cached = self._loaded[modality] = (version, self.indices.fresh(modality))
        return cached[1]

    def _results(self, hits: list[tuple[float, int]]) -> list[Result]:
        if not hits:
            return []
        ids = [i for _, i in hits]
        rows = {r["id"]: r for r in self.store.scan(RESULT_COLUMNS, in_list("id", ids)).to_pylist()}
        results = []
        for rank, (score, item_id) in enumerate(hits, start=1):
            row = rows[item_id]
            metadata = {k: row[k] for k in RESULT_COLUMNS[3:] if row[k] is not None}
            results.append(Result(rank, score, item_id, row["uri"], row["modality"], metadata))
        return results

    # ---- zero-shot classification and info ---------------------------------------------------------------

    def classify(self, labels: Sequence[str], target: str | Sequence[str] | None = None, where: str | None = None):
        """Each item's best text label (ImageBind's emergent zero-shot): an Arrow table with
        ``id, uri, modality, label, score`` (score: softmax over the labels of cosine x 100, as CLIP does).
        """
        labels = [label.strip() for label in labels if label.strip()]
        if len(labels) < 2:
            raise QueryError("classify needs at least two labels")
        label_vectors = self.encoder.encode_text(labels).numpy()
        from xsearch.store import embeddings_to_numpy

        tables = []
        for modality in self._targets(target):
            table = self.store.scan(["id", "uri", "modality", "embedding"], modality_where(modality, where))
            if table.num_rows == 0:
                continue
            logits = embeddings_to_numpy(table["embedding"]) @ label_vectors.T * 100.0
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            best = probs.argmax(axis=1)
            tables.append(
                pa.table(
                    {
                        "id": table["id"],
                        "uri": table["uri"],
                        "modality": table["modality"],
                        "label": pa.array([labels[i] for i in best], pa.string()),
                        "score": pa.array(probs[np.arange(len(best)), best], pa.float32()),
                    }
                )
            )
        if not tables:
            return pa.table({"id": [], "uri": [], "modality": [], "label": [], "score": []})
        return pa.concat_tables(tables).sort_by("id")

    def info(self) -> dict:
        """Counts per modality, model id, index kind and freshness, errors, size on disk."""
        counts = {m: self.store.count(m) for m in self.modalities()}
        indices = {}
        for modality in counts:
            status = self.indices.status(modality)
            indices[modality] = {
                "kind": status.get("kind"),
                "count": status.get("count"),
                "fresh": status["fresh"],
            }
        size = sum(p.stat().st_size for p in Path(self.store.path).rglob("*") if p.is_file())
        return {
            "db": str(self.store.path),
            "model_id": self.store.model_id,
            "items": sum(counts.values()),
            "by_modality": counts,
            "errors": self.store.errors().count_rows(),
            "indices": indices,
            "bytes": size,
        }
