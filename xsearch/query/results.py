"""Search results: ``Result`` rows best first, the query they answer, and what a results page needs.

A ``Results`` carries the inputs as the engine embedded them (``inputs``: modality, file, preview made
from the decoded pixels) and an accessor for the stored thumbnails of its hits, so presenting results
never runs a query of its own nor decodes an input twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import pyarrow as pa

from xsearch.capture import CAPTURE_COLUMNS
from xsearch.modalities import Modality
from xsearch.query.algebra import Query, QueryInput

RANDOM_WEIGHTS_NOTE = "a random-weights trial model made these embeddings: the results are meaningless"

# The metadata columns a result carries (when known), with their Arrow types.
METADATA_COLUMNS = {
    "width": pa.int32(),
    "height": pa.int32(),
    "duration": pa.float64(),
    "sample_rate": pa.int32(),
    **{name: getattr(pa, kind)() for name, kind in CAPTURE_COLUMNS.items()},  # when, where and with what
}


@dataclass
class Result:
    """One hit. ``score`` is the raw cosine; ``calibrated`` how far it stands above what the query scores
    against its modality at random (a robust z-score, comparable across modalities; see ``ranking``)."""

    rank: int
    score: float
    id: int
    uri: str
    modality: Modality
    metadata: dict = field(default_factory=dict)  # the METADATA_COLUMNS known of the file
    calibrated: float | None = None
    duplicates: list[str] = field(default_factory=list)  # other paths of the same bytes (same sha256)
    start: float | None = None  # a moment's seconds in its file (``SearchOptions.moments``)
    end: float | None = None
    # The file's size and mtime as indexed: what a preview checks before it reads the file (not in JSON).
    indexed: tuple[int, float] | None = field(default=None, repr=False, compare=False)

    @property
    def is_moment(self) -> bool:
        return self.start is not None

    @property
    def fragment(self) -> str:
        """The media fragment a player starts from (``#t=12,18``), or ``""`` for a whole file."""
        return f"#t={self.start:g},{self.end:g}" if self.is_moment else ""

    def as_json(self) -> dict:
        # Shallow: ``asdict`` deep-copies every value (5% of a served search, by py-spy) for JSON that needs none.
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "indexed"}
        out["metadata"], out["duplicates"] = dict(self.metadata), list(self.duplicates)
        if not self.is_moment:
            del out["start"], out["end"]
        return out


class Results(list):
    """A list of ``Result`` best first, with the query it answers; ``to_arrow()`` / ``to_pandas()``.

    ``thumbnails()`` returns ``{id: JPEG bytes or None}`` for the hits (read once, on first call).
    """

    def __init__(
        self,
        results: Sequence[Result],
        query: Query | None = None,
        targets: Sequence[Modality] = (),
        inputs: Sequence[QueryInput] = (),
        thumbnail_loader: Callable[[list[int]], dict[int, bytes | None]] | None = None,
        model_id: str | None = None,
    ):
        super().__init__(results)
        self.model_id = model_id  # of the embeddings searched: exports and pages say when it is a trial model
        self.query = query
        self.targets = list(targets)
        self.inputs = list(inputs)
        self._thumbnail_loader = thumbnail_loader
        self._thumbnails: dict[int, bytes | None] | None = None

    def thumbnails(self) -> dict[int, bytes | None]:
        """The stored previews of the hits and of the stored items the query named (read on first call:
        a search itself never reads them)."""
        if self._thumbnails is None:
            named = [given.item_id for given in self.inputs if given.item_id is not None and given.thumbnail is None]
            ids = list(dict.fromkeys([*(r.id for r in self), *named]))
            self._thumbnails = self._thumbnail_loader(ids) if self._thumbnail_loader and ids else {}
        return self._thumbnails

    def to_arrow(self) -> pa.Table:
        columns = {
            "rank": pa.array([r.rank for r in self], pa.int32()),
            "score": pa.array([r.score for r in self], pa.float32()),
            "calibrated": pa.array([r.calibrated for r in self], pa.float32()),
            "id": pa.array([r.id for r in self], pa.int64()),
            "uri": pa.array([r.uri for r in self], pa.string()),
            "modality": pa.array([r.modality.value for r in self], pa.string()),
        }
        if any(r.is_moment for r in self):
            columns["start"] = pa.array([r.start for r in self], pa.float64())
            columns["end"] = pa.array([r.end for r in self], pa.float64())
        for key, kind in METADATA_COLUMNS.items():
            columns[key] = pa.array([r.metadata.get(key) for r in self], kind)
        columns["duplicates"] = pa.array([r.duplicates for r in self], pa.list_(pa.string()))
        return pa.table(columns)

    def to_pandas(self):
        return self.to_arrow().to_pandas()

    @property
    def random_weights(self) -> bool:
        """Whether the embeddings come from a random-weights trial model (the ranking means nothing)."""
        from xsearch.model.config import is_random_weights

        return self.model_id is not None and is_random_weights(self.model_id)

    def as_json(self) -> dict:
        out = {
            "model_id": self.model_id,
            "query": self.query.describe() if self.query else [],
            "targets": [t.value for t in self.targets],
            "results": [r.as_json() for r in self],
        }
        if self.random_weights:
            out["note"] = RANDOM_WEIGHTS_NOTE
        return out
