"""A view's small columns held in memory, for a process that searches the same version many times.

Reading ten hits' rows by position from Lance (``take``) costs a fixed price plus a price per column: with
the fifteen columns a result shows, more than the index search itself (BENCHMARKS.md, "Warm search against
its index"). A server keeps them in memory instead, as Qdrant keeps payloads: every column of the view but the
large ones (embeddings, thumbnails), read once, in a background thread, on the view's first read by
position. Until they are in, reads go to Lance; after, ``take`` is an Arrow gather of a few rows.

Memory is the price: the uris, hashes and metadata of every row (BENCHMARKS.md has the warm benchmark's
figures; real paths and camera names take more than its synthetic ones). A one-shot CLI
search never pays it (``hold_rows`` off).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

LARGE_COLUMNS = frozenset({"embedding", "thumbnail"})  # read by position when asked for, never held


class ResidentColumns:
    """The small columns of ``dataset`` (a ``lance.LanceDataset`` at one version), in row position order,
    once ``start()`` has read them."""

    def __init__(self, dataset, where: str):
        self._dataset = dataset
        self._where = where  # the table, for messages
        self.columns = frozenset(n for n in dataset.schema.names if n not in LARGE_COLUMNS)
        self._table: pa.Table | None = None
        self._started = False
        self._lock = threading.Lock()
        self.ready = threading.Event()  # set once the columns are in, or the read failed

    def start(self) -> None:
        """Read the columns in a background thread (once; later calls do nothing)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._fill, name="xsearch-resident-columns", daemon=True).start()

    def _fill(self) -> None:
        try:
            table = self._dataset.to_table(columns=sorted(self.columns))  # the scan's order: row positions
            self._table = table.combine_chunks()
        except Exception as exc:  # an unreadable table is reported by the reads that go to Lance
            log.warning("%s: its columns were not held in memory (%s); rows are read from disk", self._where, exc)
        finally:
            self.ready.set()

    def take(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table | None:
        """``columns`` (small ones) of the rows at ``positions``, from memory; ``None`` while they are not in."""
        table = self._table
        if table is None or not self.columns.issuperset(columns):
            return None
        return table.select(list(columns)).take(pa.array(positions, pa.int64()))

    @property
    def nbytes(self) -> int:
        """What the held columns take in memory (0 before they are in)."""
        table = self._table
        return table.nbytes if table is not None else 0
