"""Item ids: stable, never reused. The high-water mark ``next_id`` beside the tables remembers every id
handed out, so a row deleted by ``--prune`` never gives its id to another file (moments and indices name
rows by id)."""

from __future__ import annotations

import pyarrow.compute as pc

from xsearch.errors import DatabaseDamaged, StoreError
from xsearch.store.side_files import SideFiles
from xsearch.store.view import TableView

NEXT_ID = "next_id"
LAST_ID = 2**63 - 2**20  # moment ids are ``item id << 20 | n``: ids stop where those would overflow


def next_id(files: SideFiles, items: TableView) -> int:
    """The next unused id: above every id in ``items`` and every id handed out before."""
    highest = int(pc.max(items.scan(["id"])["id"]).as_py()) + 1 if items.count() else 0
    try:
        text = files.read_text(NEXT_ID)
    except OSError as exc:
        raise DatabaseDamaged(files.where(NEXT_ID), f"unreadable ({exc.strerror or exc})") from None
    text = "0" if text is None else text.strip()  # none: a database from before the mark was kept
    if not text.isdigit():
        raise DatabaseDamaged(files.where(NEXT_ID), f"holds {text[:40]!r}, not an id (it must not be guessed)")
    found = max(highest, int(text))
    if found >= LAST_ID:
        raise StoreError(f"{files.where()}: item ids are exhausted ({found}); index into a new database")
    return found


def reserve(files: SideFiles, next_free: int) -> None:
    """Record ids below ``next_free`` as handed out, before the commit that uses them (a crash then only
    skips some)."""
    files.write_text(NEXT_ID, str(next_free))
