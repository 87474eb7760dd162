"""Compaction: merging a table's small data files and deleting the versions no reader holds, without ever
needing room that a full disk does not have."""

from __future__ import annotations

import datetime as dt
import logging
import warnings

from xsearch.store.lance_errors import storage_problem
from xsearch.store.leases import held_since
from xsearch.store.schema import now

log = logging.getLogger("xsearch.store.database")


def kept_for(files, table, held_as: str, min_keep: dt.timedelta) -> dt.timedelta:
    """How far back ``table``'s versions are kept: from the oldest one a live reader's lease names (its
    field ``held_as``), and at least ``min_keep``."""
    held = held_since(files, table.to_lance().versions(), held_as)
    return min_keep if held is None else max(min_keep, now() - held + dt.timedelta(seconds=1))


def compact_tables(where, plan: list[tuple[object, dt.timedelta]], merge: bool) -> None:
    """For each ``(LanceTable, kept)``: delete what no version of the last ``kept`` needs, then (``merge``)
    merge small data files and delete again. ``where``: the database, for messages."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(cleanup_older_than|compact_files|cleanup_old_versions)")
        for table, kept in plan:
            # Under the writer lock no other writer is mid-commit, so files no version references are a killed
            # run's leftovers (on an object store: uploaded data files never committed). Deleting writes
            # nothing, so it comes first: on a full disk it is what makes room for the merge.
            table.cleanup_old_versions(kept, delete_unverified=True)
            if not merge:
                continue
            try:
                table.compact_files()
            except Exception as exc:
                problem = storage_problem(where, exc)
                if problem is None or "disk full" not in str(problem):
                    raise
                log.warning("%s: not compacted (disk full); old versions were removed, the next run retries", where)
                continue
            table.cleanup_old_versions(kept, delete_unverified=True)
