"""The query algebra: a query is a weighted sum of inputs, each a ``Term`` type that embeds and describes itself.

Pure data: nothing here loads a model or opens a database. A term's ``embed(context)`` asks the context
(the search engine) for what it needs: ``context.encoder`` for files and text, ``context.items`` and
``context.moments`` (the stored rows the search reads) for stored items. Because ImageBind puts every
modality in one space, "this bird photo + the sound of waves" is
``Query.image("bird.jpg") * 0.6 + Query.audio("waves.wav") * 0.4``.

Example
-------
>>> q = Query.image("bird.jpg") * 0.6 + Query.audio("waves.wav") * 0.4 - Query.text("night") * 0.2
>>> [t.describe()["kind"] for t in q.terms]
['file', 'file', 'text']
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol

import numpy as np

from xsearch.errors import ItemNotFound, QueryError
from xsearch.modalities import Modality
from xsearch.options import item_key


class EmbedContext(Protocol):
    """What a term needs to become a vector (``xsearch.query.engine.Engine`` provides it)."""

    @property
    def encoder(self): ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def items(self):
        """The stored items (a ``TableView`` of the version the search reads)."""

    @property
    def moments(self):
        """The stored moments of that version (a ``TableView``), or ``None`` when none are kept."""

    def embed_file(self, path: str, modality: Modality):
        """The file decoded (under the same limits as indexed files) and encoded: an ``Outcome``."""


@dataclass(frozen=True)
class QueryInput:
    """What embedding a term learned about it, for a results page: its modality, file and preview."""

    term: Term
    modality: Modality | None = None
    uri: str | None = None
    thumbnail: bytes | None = None  # JPEG, from the pixels decoded for the model (a stored item's: Results)
    item_id: int | None = None  # the stored item an item input is
    moment_id: int | None = None  # the stored moment a ``Query.item(..., at=)`` input is


@dataclass(frozen=True)
class Term:
    """One input of a query and its weight. Subclasses say what the input is."""

    weight: float = field(default=1.0, kw_only=True)
    kind: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight):
            raise QueryError(f"weight {self.weight} of {self.kind} {self._shown()!r} is not a finite number")

    def embed(self, context: EmbedContext) -> tuple[np.ndarray, QueryInput]:
        """The input's vector (``float [dim]``) and what was learned about it on the way."""
        raise NotImplementedError

    def _shown(self):
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-ready description (``kind``, ``value``, ``weight``, and ``modality`` where known)."""
        return {"kind": self.kind, "value": self._shown(), "weight": self.weight}

    def reweighted(self, weight: float) -> Term:
        return replace(self, weight=weight)

    def constructor(self) -> str:
        """The ``Query`` call that makes this input (weight apart): ``Query.image('bird.jpg')``."""
        return f"Query.{self.kind}({self._shown()!r})"


@dataclass(frozen=True)
class FileTerm(Term):
    """A media file embedded with the tower of its modality."""

    path: str
    modality: Modality
    kind: ClassVar[str] = "file"
    needs_model: ClassVar[bool] = True

    def _shown(self):
        return self.path

    def describe(self) -> dict:
        return {**super().describe(), "modality": self.modality.value}

    def constructor(self) -> str:
        return f"Query.{self.modality.value}({self.path!r})"

    def embed(self, context: EmbedContext) -> tuple[np.ndarray, QueryInput]:
        result = context.embed_file(self.path, self.modality)
        if result.error is not None:
            raise QueryError(f"query input {result.message}")
        return result.embedding, QueryInput(self, self.modality, self.path, result.thumbnail)


@dataclass(frozen=True)
class TextTerm(Term):
    """A sentence embedded with the text tower."""

    text: str
    kind: ClassVar[str] = "text"
    needs_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise QueryError("text query is empty")
        super().__post_init__()

    def _shown(self):
        return self.text

    def describe(self) -> dict:
        return {**super().describe(), "modality": Modality.TEXT.value}

    def embed(self, context: EmbedContext) -> tuple[np.ndarray, QueryInput]:
        return context.encoder.encode_text([self.text]).numpy()[0], QueryInput(self, Modality.TEXT)


@dataclass(frozen=True, eq=False)
class VectorTerm(Term):
    """A raw vector in the embedding space (from another tool, or an earlier search)."""

    vector: np.ndarray
    kind: ClassVar[str] = "vector"

    def _shown(self):
        return f"<vector of {len(self.vector)}>"

    def constructor(self) -> str:
        return f"Query.vector({self._shown()})"

    def embed(self, context: EmbedContext) -> tuple[np.ndarray, QueryInput]:
        dim = context.embed_dim
        if self.vector.shape[0] != dim:
            raise QueryError(f"query vector has {self.vector.shape[0]} values, expected {dim}")
        return self.vector, QueryInput(self)


@dataclass(frozen=True)
class ItemTerm(Term):
    """An indexed item's stored embedding, by id or path: no model run. With ``at`` (seconds), the stored
    moment of the item that holds that second ("more like this moment")."""

    key: int | str
    at: float | None = None
    kind: ClassVar[str] = "item"

    def __post_init__(self) -> None:
        if self.at is not None and not (math.isfinite(self.at) and self.at >= 0):
            raise QueryError(f"item {self.key!r}: a moment is a time of 0 seconds or more, got {self.at!r}")
        super().__post_init__()

    def _shown(self):
        return self.key if self.at is None else f"{self.key}@{self.at:g}"

    def constructor(self) -> str:
        return f"Query.item({self.key!r})" if self.at is None else f"Query.item({self.key!r}, at={self.at:g})"

    def embed(self, context: EmbedContext) -> tuple[np.ndarray, QueryInput]:
        from xsearch.moments import clock, moment_at

        items, moments = context.items, context.moments
        row = items.lookup(self.key, ["id", "embedding", "uri", "modality"])  # its preview: Results.thumbnails
        if row is None:
            raise ItemNotFound(self.key, items.path)
        modality = Modality(row["modality"])
        if self.at is None:
            vector = np.asarray(row["embedding"], dtype=np.float32)
            return vector, QueryInput(self, modality, row["uri"], item_id=row["id"])
        moment = moment_at(moments, row["id"], self.at, prefer=modality) if moments is not None else None
        if moment is None:
            raise QueryError(
                f"item {self.key!r} ({row['uri']}) has no moment at {clock(self.at)}"
                + ("" if moments is not None else " (index it with --moments)")
            )
        vector = np.asarray(moment["embedding"], dtype=np.float32)
        shown = Modality(moment["modality"])
        return vector, QueryInput(self, shown, row["uri"], item_id=row["id"], moment_id=moment["id"])


class _QueryType(type):
    """``Query.<modality>(path)`` for a file modality registered after this module was written (the built-in
    ones are class methods of ``Query``)."""

    def __getattr__(cls, name: str):
        if not name.startswith("_") and name in Modality and Modality(name).spec.query_input == "file":
            modality = Modality(name)

            def constructor(path: str | os.PathLike, weight: float = 1.0) -> Query:
                return cls.file(path, modality, weight)

            constructor.__doc__ = f"A {modality.spec.help or modality.value} input."
            return constructor
        hint = ""
        if not name.startswith("_"):
            known = [m.value for m in Modality if m.spec.query_input == "file"] + ["text", "vector", "item"]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean Query.{close[0]}?)" if close else f" (inputs: {', '.join(known)})"
        raise AttributeError(f"type object 'Query' has no attribute {name!r}{hint}")


class Query(metaclass=_QueryType):
    """A weighted sum of inputs. Build with the class methods; combine with ``+``, ``-`` and scalar ``*``.

    ``Query.<modality>(path, weight)`` exists for every file modality in the table (``Query.image``,
    ``Query.audio``, ``Query.depth``...); ``Query.text``, ``Query.vector`` and ``Query.item`` take text, a
    vector and a stored item.
    """

    def __init__(self, terms: Iterable[Term]):
        self.terms = tuple(terms)
        if not self.terms:
            raise QueryError("a query needs at least one input")

    # ---- constructors ------------------------------------------------------------------------------------

    @classmethod
    def file(cls, path: str | os.PathLike, modality: Modality | str, weight: float = 1.0) -> Query:
        return cls([FileTerm(os.fspath(path), Modality(modality), weight=float(weight))])

    # The built-in file modalities, spelt out for readers and IDEs; a modality registered later gets its
    # constructor from ``_QueryType`` (``Query.swatch(path)``).
    @classmethod
    def image(cls, path: str | os.PathLike, weight: float = 1.0) -> Query:
        """A photo or picture input."""
        return cls.file(path, Modality.IMAGE, weight)

    @classmethod
    def video(cls, path: str | os.PathLike, weight: float = 1.0) -> Query:
        """A video input (5 clips of 2 s, averaged)."""
        return cls.file(path, Modality.VIDEO, weight)

    @classmethod
    def audio(cls, path: str | os.PathLike, weight: float = 1.0) -> Query:
        """A sound input (3 clips of 2 s, averaged)."""
        return cls.file(path, Modality.AUDIO, weight)

    @classmethod
    def depth(cls, path: str | os.PathLike, weight: float = 1.0) -> Query:
        """A depth (disparity) map input."""
        return cls.file(path, Modality.DEPTH, weight)

    @classmethod
    def thermal(cls, path: str | os.PathLike, weight: float = 1.0) -> Query:
        """A thermal image input."""
        return cls.file(path, Modality.THERMAL, weight)

    @classmethod
    def imu(cls, path: str | os.PathLike, weight: float = 1.0) -> Query:
        """An IMU recording input (.npy or .csv, 6 channels)."""
        return cls.file(path, Modality.IMU, weight)

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Query:
        return cls([TextTerm(str(text), weight=float(weight))])

    @classmethod
    def vector(cls, vector, weight: float = 1.0) -> Query:
        return cls([VectorTerm(np.asarray(vector, dtype=np.float32).reshape(-1), weight=float(weight))])

    @classmethod
    def item(cls, id_or_uri: int | str, weight: float = 1.0, *, at: float | None = None) -> Query:
        """A stored item's embedding, by id (``12`` or ``"12"``) or path: no model run. ``at``: the item's
        moment holding that second instead (``xsearch index --moments``)."""
        return cls([ItemTerm(item_key(id_or_uri), None if at is None else float(at), weight=float(weight))])

    @classmethod
    def input(cls, modality: Modality | str, value: str, weight: float = 1.0) -> Query:
        """An input as the modality table says it is given: the text itself, or a file path."""
        modality = Modality(modality)
        if modality.spec.query_input == "text":
            return cls.text(value, weight)
        return cls.file(value, modality, weight)

    @classmethod
    def of(cls, query: Query | str) -> Query:
        """``query`` as a ``Query``: a plain string is the text it says (``"a dog barking"``)."""
        if isinstance(query, Query):
            return query
        if isinstance(query, str):
            return cls.text(query)
        raise QueryError(f"a query is a Query or a text, not {type(query).__name__} (build one with Query.image(...))")

    @classmethod
    def sum(cls, queries: Sequence[Query]) -> Query:
        """All inputs of ``queries`` in one query."""
        return cls(term for query in queries for term in query.terms)

    # ---- algebra ---------------------------------------------------------------------------------------

    def __add__(self, other: Query) -> Query:
        if not isinstance(other, Query):
            return NotImplemented
        return Query(self.terms + other.terms)

    def __radd__(self, other) -> Query:
        if isinstance(other, (int, float)) and other == 0:  # sum([q1, q2]) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: Query) -> Query:
        if not isinstance(other, Query):
            return NotImplemented
        return self + other * -1.0

    def __mul__(self, scalar: float) -> Query:
        if isinstance(scalar, Query) or not isinstance(scalar, (int, float, np.floating, np.integer)):
            return NotImplemented
        return Query(t.reweighted(t.weight * float(scalar)) for t in self.terms)

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> Query:
        if isinstance(scalar, Query) or not isinstance(scalar, (int, float, np.floating, np.integer)):
            return NotImplemented
        if scalar == 0:
            raise QueryError("cannot divide a query's weights by zero")
        return self * (1.0 / float(scalar))

    def __neg__(self) -> Query:
        return self * -1.0

    def __repr__(self) -> str:
        """What would build this query: ``Query.image('bird.jpg') * 0.6 + Query.audio('waves.wav') * 0.4``."""
        return " + ".join(t.constructor() + ("" if t.weight == 1 else f" * {t.weight:g}") for t in self.terms)

    @property
    def needs_model(self) -> bool:
        return any(t.needs_model for t in self.terms)

    def describe(self) -> list[dict]:
        return [t.describe() for t in self.terms]


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
