"""``TableView``: one table of a database at one version, read-only.

A view is built from a Lance dataset handed to it, which is fixed at its version: every read through the
view (counts, rows, vectors, ids, the indices built from it) sees that version and no later commit. It has
no write method; writes go through ``Database``, and the next view sees them.

Because a view never changes, what it learns once holds for its life: the position of each id among its
rows (rows by id are then read by position, ``take``, never by a filtered scan), the modalities it holds
and their counts. Views are shared by concurrent searches; these caches are filled once, under a lock.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xsearch.errors import StoreError, UsageError
from xsearch.modalities import Modality
from xsearch.objects import location
from xsearch.store.filters import ItemFilter, filter_problem
from xsearch.store.lance_errors import guarded, one_line, storage_problem, translated
from xsearch.store.resident import LARGE_COLUMNS, ResidentColumns
from xsearch.store.schema import NOT_FILTERABLE, embeddings_to_numpy

log = logging.getLogger(__name__)


class TableView:
    """``dataset`` (a ``lance.LanceDataset`` at one version) of the table ``name`` in the database at
    ``path``, whose embeddings are ``model_id``'s, ``embed_dim`` wide.

    Example
    -------
    >>> view = database.items()  # doctest: +SKIP
    >>> view.count(Modality.IMAGE), view.version  # doctest: +SKIP
    """

    def __init__(self, dataset, path: Path, name: str, model_id: str, embed_dim: int, origin=None):
        self._dataset = dataset
        self._origin = origin if origin is not None else dataset  # where commits land (a copy reads elsewhere)
        self.path = location(path)  # the database, for messages
        self.name = name  # for messages only
        self.model_id = model_id
        self.embed_dim = embed_dim
        self._fill = threading.Lock()  # the caches below are filled once, by one thread
        self._positions: tuple[np.ndarray, np.ndarray] | None = None  # sorted ids, and each one's row position
        self._held: list[Modality] | None = None
        self._counts: dict[Modality | None, int] = {}
        self._names = frozenset(dataset.schema.names)  # asked at every read: the schema is rebuilt per call
        self._resident: ResidentColumns | None = None

    def __repr__(self) -> str:
        return f"TableView({str(self.path)!r}, {self.name!r}, version={self.version})"

    @property
    def storage_path(self) -> Path:
        return self.path / f"{self.name}.lance"

    # ---- what version -----------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The table version this view reads: what an index built from it records as covered."""
        return self._dataset.version

    def is_latest(self) -> bool:
        """Whether no commit came after this view's version (a cheap check: no manifest is read)."""
        with translated(self.storage_path):
            return self._origin.latest_version == self.version

    @functools.cached_property
    def key(self) -> str:
        """The version and its commit time: unlike the number alone, it cannot come back (a lost newest
        manifest makes the next commit reuse its number)."""
        with translated(self.storage_path):
            moment = next(v["timestamp"] for v in reversed(self.versions()) if v["version"] == self.version)
        return f"{self.version}@{moment.isoformat()}"

    def versions(self) -> list[dict]:
        """Every version the table keeps (``version``, ``timestamp``...), as Lance lists them."""
        return self._origin.versions()

    @property
    def schema(self) -> pa.Schema:
        return self._dataset.schema

    @property
    def half_vectors(self) -> bool:
        """Whether the table keeps its embeddings as float16 (so float16 copies of them lose nothing)."""
        return self._dataset.schema.field("embedding").type.value_type == pa.float16()

    def has_column(self, name: str) -> bool:
        return name in self._names

    def hold_in_memory(self) -> None:
        """Keep this view's small columns in memory from now on (read in the background; ``resident``):
        rows are then read from there. For a process that searches this version many times."""
        if self._resident is None:
            self._resident = ResidentColumns(self._dataset, f"{self.path} ({self.name})")
        self._resident.start()

    def wait_held(self, timeout: float | None = None) -> bool:
        """Wait until the held columns are in (or their read failed; reads then go to Lance): ``True``
        when done, ``False`` on ``timeout`` or when nothing is held."""
        return self._resident is not None and self._resident.ready.wait(timeout)

    @property
    def held_bytes(self) -> int:
        """The memory the view's held columns take (0 when none are held, or not yet)."""
        return self._resident.nbytes if self._resident is not None else 0

    # ---- reads ----------------------------------------------------------------------------------------

    @guarded
    def count(self, modality: Modality | None = None) -> int:
        if modality not in self._counts:
            self._counts[modality] = self._dataset.count_rows(ItemFilter(modality=modality).sql())
        return self._counts[modality]

    def scan(self, columns: Sequence[str], where: ItemFilter | None = None) -> pa.Table:
        """``columns`` of the rows ``where`` selects (all when ``None``) as an Arrow table."""
        sql = where.sql() if where is not None else None
        # Belt and braces: rows a caller's predicate selects are re-checked against the modality asked for.
        recheck = where is not None and where.where is not None and where.modality is not None
        read = list(columns) + (["modality"] if recheck and "modality" not in columns else [])
        try:
            table = self._dataset.to_table(columns=read, filter=sql)
        except Exception as exc:  # lance raises ValueError / OSError / its own errors for bad SQL
            if where is None or not where.where:
                problem = storage_problem(self.storage_path, exc)
                raise problem or StoreError(f"{self.path}: reading {self.name} failed ({one_line(str(exc))})") from None
            filterable = ", ".join(n for n in self._dataset.schema.names if n not in NOT_FILTERABLE)
            raise UsageError(
                f"bad filter {where.where!r}: {filter_problem(str(exc))} (columns: {filterable})", argument="where"
            ) from None
        if recheck:
            table = table.filter(pc.equal(table["modality"], str(where.modality))).select(list(columns))
        return table

    @guarded
    def modalities(self) -> list[Modality]:
        """The modalities that have rows, in the table's order (names no longer registered are skipped)."""
        with self._fill:
            if self._held is None:
                names = set(self.scan(["modality"])["modality"].unique().to_pylist())
                unknown = names - {m.value for m in Modality}
                if unknown:
                    log.warning("%s: rows of unregistered modalities %s are not searched", self.path, sorted(unknown))
                self._held = [m for m in Modality if m.value in names]
        return list(self._held)

    def ids(self, modality: Modality | None = None) -> np.ndarray:
        return self.scan(["id"], ItemFilter(modality=modality))["id"].to_numpy()

    def lookup(self, key: int | str, columns: Sequence[str]) -> dict | None:
        """One row's ``columns`` by id (an int) or uri (a str), or ``None`` when there is none."""
        if isinstance(key, int):
            return self.rows([key], columns).get(key)
        absent = self._absent(columns)
        rows = self.scan([c for c in columns if c not in absent], ItemFilter.item(key)).to_pylist()
        return {**absent, **rows[0]} if rows else None

    @guarded
    def rows(self, ids: Sequence[int], columns: Sequence[str]) -> dict[int, dict]:
        """``{id: row}`` of ``columns`` for the ids that exist (read by position)."""
        absent = self._absent(columns)
        found = self._taken(ids, ["id", *[c for c in columns if c != "id" and c not in absent]])
        return {row["id"]: {**absent, **row} for row in found.to_pylist()}

    def _absent(self, columns: Sequence[str]) -> dict[str, None]:
        """The ``columns`` this table lacks (added by a later xsearch to a database not written since), as
        nulls: a reader does not migrate a database, it reads around the columns it has not got."""
        return dict.fromkeys(c for c in columns if not self.has_column(c))

    @guarded
    def vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, float32 [n, dim])`` for the requested ids that exist, in ascending id order."""
        table = self._taken(np.unique(np.asarray(ids, np.int64)), ["id", "embedding"])
        if table.num_rows == 0:
            return np.empty(0, np.int64), np.empty((0, self.embed_dim), np.float32)
        return table["id"].to_numpy(), embeddings_to_numpy(table["embedding"])

    def _taken(self, ids: Sequence[int], columns: list[str]) -> pa.Table:
        """``columns`` of the rows of ``ids`` that exist, in the order of ``ids``, read by position."""
        sorted_ids, positions = self._id_positions()
        wanted = np.asarray(ids, np.int64).reshape(-1)
        at = np.searchsorted(sorted_ids, wanted)
        there = at < len(sorted_ids)
        there[there] = sorted_ids[at[there]] == wanted[there]
        found = positions[at[there]]
        large = [c for c in columns if c in LARGE_COLUMNS]
        held = self._resident.take(found, [c for c in columns if c not in large]) if self._resident else None
        if held is None:
            return self._dataset.take(found, columns=columns)
        if large:  # the embedding or the thumbnail, from disk, beside the rest from memory
            read = self._dataset.take(found, columns=large)
            for name in large:
                held = held.append_column(name, read[name])
        return held.select(columns)

    def _id_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every id of the view, sorted, and the row position of each: read once per view (8 bytes a row)."""
        with self._fill:
            if self._positions is None:
                with translated(self.storage_path):
                    ids = self._dataset.to_table(columns=["id"])["id"].to_numpy()
                order = np.argsort(ids, kind="stable")
                self._positions = ids[order], order
        return self._positions

    def iter_vectors(self, where: ItemFilter, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, float32 [n, dim])`` batches of the rows ``where`` selects, streamed from disk."""
        batches = self._dataset.to_batches(columns=["id", "embedding"], filter=where.sql(), batch_size=batch_rows)
        with translated(self.storage_path):
            for batch in batches:
                if batch.num_rows:
                    yield batch.column("id").to_numpy(), embeddings_to_numpy(batch.column("embedding"))

    def last_indexed_at(self) -> str | None:
        """The newest ``indexed_at`` (ISO, UTC): what an index records as covered."""
        column = self.scan(["indexed_at"])["indexed_at"]
        newest = pc.max(column).as_py() if len(column) else None
        return newest.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if newest else None

    def ids_indexed_after(self, moment: str, modality: Modality | None = None) -> np.ndarray:
        """Ids whose row was (re)written after ``moment`` (as returned by ``last_indexed_at``)."""
        return self.scan(["id"], ItemFilter(modality=modality, indexed_after=moment))["id"].to_numpy()

    def check(self, batch_rows: int = 8192) -> int:
        """Read every row of every column (what ``info`` vouches for); returns the rows read."""
        rows = 0
        with translated(self.storage_path):
            for batch in self._dataset.to_batches(batch_size=batch_rows):
                rows += batch.num_rows
        return rows
