"""``Database``: an xsearch database, opened to read its latest state and to write.

Reads go through views (``items()``, ``moments()``, ``errors()``: each table at its latest version;
``snapshot()``: items and moments pinned together). Every write is one Lance commit (a new table version
written after its data files), so a writer killed at any moment leaves the previous version intact and
readers never see half a batch. The files beside the tables go through ``SideFiles``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from xsearch.errors import DatabaseDamaged, StoreError, UsageError
from xsearch.objects import ObjectUri, location
from xsearch.store import ids as id_marks
from xsearch.store.filters import ItemFilter, any_of, one_of
from xsearch.store.lance_errors import guarded, translated
from xsearch.store.leases import ReaderLease, unleased_keep
from xsearch.store.opening import connect
from xsearch.store.schema import (
    ERRORS,
    ERRORS_SCHEMA,
    ITEMS,
    MOMENTS,
    ItemRecord,
    items_schema,
    items_table,
    moments_schema,
    moments_table,
    now,
)
from xsearch.store.side_files import SideFiles
from xsearch.store.upkeep import compact_tables, kept_for
from xsearch.store.view import TableView

log = logging.getLogger(__name__)

MOMENT_SETTINGS = "moments.json"  # the database's ``MomentCfg``: present once moments are on
ASSIGNMENTS = "assignments.json"  # the ``--as MODALITY=PATH`` of earlier runs: {path: modality}
INDEX_FOLDERS = {ITEMS: "faiss", MOMENTS: "faiss-moments"}  # each table's FAISS indices, one folder each


@dataclass(frozen=True)
class Snapshot:
    """A database's items and moments, each pinned at one version (moments never older than the items)."""

    items: TableView
    moments: TableView | None

    def is_latest(self, db: Database) -> bool:
        """Whether ``db`` has committed nothing since (its moments table, when new, counts)."""
        if self.moments is None:
            return self.items.is_latest() and not db.has_moments()
        return self.items.is_latest() and self.moments.is_latest()


class Database:
    """An xsearch database directory.

    Example
    -------
    >>> db = Database.open("my.db", model_id="imagebind_huge", embed_dim=1024)  # doctest: +SKIP
    >>> db.add_items([ItemRecord("a.jpg", "image", vector)])  # doctest: +SKIP
    >>> db.items().count()  # doctest: +SKIP
    """

    def __init__(self, path: Path | ObjectUri, connection, model_id: str, embed_dim: int, files: SideFiles):
        self.path = path
        self._connection = connection
        self.model_id = model_id
        self.embed_dim = embed_dim
        self.files = files
        self._checked_at = -float("inf")  # when a snapshot was last checked against the latest versions

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r}, model={self.model_id!r})"

    @property
    def storage_path(self) -> Path | ObjectUri:
        return self.path

    # ---- opening -------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike, model_id: str | None = None, *, embed_dim: int | None = None, create: bool = True
    ) -> Database:
        """Open (or create) the database at ``path``.

        ``model_id`` must match the model that wrote the existing embeddings; embeddings of different
        models live in different spaces and are never mixed. ``None`` accepts whatever the database holds
        (a reader). A new database takes ``embed_dim`` from the encoder that will fill it.
        """
        path = location(path)
        with translated(path):
            files = SideFiles.at(path)
            connection, model_id, embed_dim = connect(path, files, model_id, embed_dim, create)
            return cls(path, connection, model_id, embed_dim, files)

    # ---- views --------------------------------------------------------------------------------------

    def _table(self, name: str):
        """The LanceTable ``name`` at its latest version (writes go through it)."""
        with translated(self.path / f"{name}.lance"):
            return self._connection.open_table(name)

    def _view(self, name: str, local: bool = False) -> TableView:
        """Table ``name`` at its latest version; ``local``: read from this machine's copy of it when the
        database is in an object store (``TableCopies``: searches read rows by position, a few at a time)."""
        with translated(self.path / f"{name}.lance"):
            dataset = self._connection.open_table(name).to_lance()
            copies = self.files.table_copies() if local else None
            if copies is not None:
                return TableView(copies.dataset(name, dataset), self.path, name, self.model_id, self.embed_dim, dataset)
        return TableView(dataset, self.path, name, self.model_id, self.embed_dim)

    def items(self) -> TableView:
        """The ``items`` table at its latest version."""
        return self._view(ITEMS)

    def errors(self) -> TableView:
        """The ``errors`` table at its latest version."""
        return self._view(ERRORS)

    def has_moments(self) -> bool:
        return self.files.exists(f"{MOMENTS}.lance")

    def moments(self) -> TableView:
        """The ``moments`` table at its latest version (``StoreError`` when the database keeps none)."""
        if not self.has_moments():
            raise StoreError(f"{self.path}: no moments indexed here (run xsearch index --moments)")
        return self._view(MOMENTS)

    def view(self, name: str) -> TableView:
        """``items()`` or ``moments()`` by the table's name."""
        return self.moments() if name == MOMENTS else self._view(name)

    @guarded
    def snapshot(self, lease: ReaderLease | None = None) -> Snapshot:
        """Items and moments frozen at their current versions: every read through the snapshot sees those
        versions and no later commit. ``lease`` records them, so that a writer's compaction keeps them
        while the lease lives (taken before the versions are read: no gap). ``unchanged`` says when to
        take the next one."""
        if lease is not None:
            lease.hold(None)  # "the newest version as of now", until the numbers are known
        items = self._view(ITEMS, local=True)
        moments = self._view(MOMENTS, local=True) if self.has_moments() else None  # never older than the items
        if lease is not None:
            lease.hold(items.version, moments.version if moments is not None else None)
        return Snapshot(items, moments)

    def unchanged(self, previous: Snapshot, lease: ReaderLease) -> bool:
        """Whether nothing was committed since ``previous`` (the latest version numbers; in an object store,
        two requests, so at most every ``files.recheck_seconds``). Renews ``lease``'s note, never to a newer
        version: safe from any thread."""
        lease.hold(None)
        if time.monotonic() - self._checked_at < self.files.recheck_seconds:
            return True
        self._checked_at = time.monotonic()
        return previous.is_latest(self)

    def index_folder(self, name: str) -> Path:
        """The folder of the FAISS indices over table ``name`` (``faiss/``, ``faiss-moments/``)."""
        return self.files.local_folder(INDEX_FOLDERS[name])

    def index_objects(self, name: str):
        """Where the indices of table ``name`` are published, when the database is not on this disk
        (``IndexObjects``), else ``None``."""
        return self.files.index_objects(INDEX_FOLDERS[name])

    @contextlib.contextmanager
    def leased(self) -> Iterator[Snapshot]:
        """A snapshot whose versions a reader's lease holds until the block ends: what a one-off reader
        (``info``, ``classify``) reads, so that a writer's compaction, which keeps nothing for readers
        without a lease, never removes a file under it."""
        lease = ReaderLease(self.files)
        try:
            yield self.snapshot(lease)
        finally:
            lease.release()

    def check(self, snapshot: Snapshot, batch_rows: int = 8192) -> int:
        """Read every row of every table of ``snapshot`` (what ``info`` vouches for); returns the items read."""
        rows = snapshot.items.check(batch_rows)
        self.errors().check(batch_rows)
        if snapshot.moments is not None:
            snapshot.moments.check(batch_rows)
        return rows

    # ---- items --------------------------------------------------------------------------------------

    def _with_ids(self, records: Sequence[ItemRecord]) -> pa.Table:
        """``records`` as rows, new ones given ids above every id handed out (reserved before the commit
        that uses them: a crash then only skips some)."""
        next_id = id_marks.next_id(self.files, self.items())
        for record in records:
            if record.id is None:
                record.id, next_id = next_id, next_id + 1
        table = items_table(records, self.model_id, self.embed_dim)
        id_marks.reserve(self.files, next_id)
        return table

    @guarded
    def add_items(self, records: Sequence[ItemRecord]) -> int:
        """Append ``records`` in one commit; returns the new table version."""
        table = self._table(ITEMS)
        if records:
            table.add(self._with_ids(records))
        return table.version

    @guarded
    def upsert_items(self, records: Sequence[ItemRecord]) -> int:
        """Insert new uris and replace the rows of known ones, in one commit (ids of replaced uris are kept).

        Example: a file that changed on disk is re-embedded and its row replaced, atomically.
        """
        table = self._table(ITEMS)
        if not records:
            return table.version
        known = self.lookup_uris([r.uri for r in records])
        known_ids = dict(zip(known["uri"].to_pylist(), known["id"].to_pylist()))
        for record in records:
            if record.uri in known_ids:
                record.id = known_ids[record.uri]
        rows = self._with_ids(records)
        table.merge_insert("uri").when_matched_update_all().when_not_matched_insert_all().execute(rows)
        return table.version

    @guarded
    def update_columns(self, values: dict[str, dict]) -> int:
        """Set columns of known uris, ``{uri: {column: value}}`` (a touched file's ``size`` and ``mtime``, a
        photo's capture tags), in one commit; the rows' other columns stay as they are."""
        table = self._table(ITEMS)
        if not values:
            return table.version
        rows = self.items().scan(items_schema(self.embed_dim).names, ItemFilter(uris=list(values)))
        uris = rows["uri"].to_pylist()
        for name in sorted({column for given in values.values() for column in given}):
            old = rows[name].to_pylist()
            new = [values[uri].get(name, was) for uri, was in zip(uris, old)]
            rows = rows.set_column(rows.schema.get_field_index(name), name, pa.array(new, rows.schema.field(name).type))
        table.merge_insert("uri").when_matched_update_all().execute(rows)
        return table.version

    @guarded
    def delete_items(self, *, ids: Sequence[int] = (), uris: Sequence[str] = ()) -> int:
        """Delete rows by id and/or uri, and their moments, in one commit each; returns the items version."""
        where = any_of([one_of("id", ids) if len(ids) else None, one_of("uri", uris) if len(uris) else None])
        table = self._table(ITEMS)
        if where:
            doomed = []
            if self.has_moments():
                doomed = table.to_lance().to_table(columns=["id"], filter=where)["id"].to_pylist()
            table.delete(where)
            if doomed:  # after the rows: a kill between the two leaves moments that ``sweep_moments`` removes
                self._table(MOMENTS).delete(one_of("item_id", doomed))
        return table.version

    def lookup_uris(self, uris: Sequence[str]) -> pa.Table:
        """Rows (without embeddings) of the given uris, at the latest version."""
        columns = ["id", "uri", "modality", "sha256", "size", "mtime"]
        if not uris:
            return pa.table({c: [] for c in columns})
        return self.items().scan(columns, ItemFilter(uris=list(uris)))

    # ---- errors -------------------------------------------------------------------------------------

    @guarded
    def record_errors(self, errors: Sequence[tuple[str, str | None, str, str]]) -> None:
        """Replace the error rows of these uris with ``(uri, modality, stage, message)``, one commit."""
        if not errors:
            return
        stamp = now()
        columns = zip(*errors)
        data = dict(zip(["uri", "modality", "stage", "message"], map(list, columns)))
        data = pa.table({**data, "at": [stamp] * len(errors)}, schema=ERRORS_SCHEMA)
        self._table(ERRORS).merge_insert("uri").when_matched_update_all().when_not_matched_insert_all().execute(data)

    @guarded
    def clear_errors(self, uris: Sequence[str]) -> None:
        table = self._table(ERRORS)
        if uris and table.count_rows(one_of("uri", uris)):  # a delete matching nothing still commits
            table.delete(one_of("uri", uris))

    def error_rows(self) -> pa.Table:
        return self.errors().scan(ERRORS_SCHEMA.names)

    # ---- moments ------------------------------------------------------------------------------------

    def assignments(self) -> dict[str, str]:
        """The folders and files earlier runs assigned a modality (``--as``): later runs keep them."""
        try:
            text = self.files.read_text(ASSIGNMENTS)
            held = {} if text is None else json.loads(text)
        except (OSError, ValueError) as exc:
            raise DatabaseDamaged(self.files.where(ASSIGNMENTS), f"unreadable ({exc})") from None
        if not isinstance(held, dict) or not all(isinstance(v, str) for v in held.values()):
            raise DatabaseDamaged(self.files.where(ASSIGNMENTS), "not a map of paths to modalities")
        return held

    def remember_assignments(self, assigned: dict[str, str]) -> None:
        self.files.write_text(ASSIGNMENTS, json.dumps(dict(sorted(assigned.items())), indent=1))

    def moment_cfg(self):
        """How this database cuts files into moments (a ``MomentCfg``), or ``None`` when it keeps none."""
        from xsearch.moments import MomentCfg

        try:
            text = self.files.read_text(MOMENT_SETTINGS)
            return None if text is None else MomentCfg.from_json(json.loads(text))
        except (OSError, ValueError, KeyError, TypeError, UsageError) as exc:
            raise DatabaseDamaged(self.files.where(MOMENT_SETTINGS), f"unreadable ({exc})") from None

    @guarded
    def keep_moments(self, cfg) -> None:
        """From now on, keep moments cut as ``cfg`` says (the table first, then the settings that say so).
        A database keeps one way of cutting: another one is refused rather than mixed."""
        held = self.moment_cfg()
        if held is not None and held != cfg:
            raise UsageError(
                f"{self.path} keeps moments of {held.seconds:g} s every {held.stride:g} s; it cannot mix in "
                f"{cfg.seconds:g} s every {cfg.stride:g} s (index into a new database to change them)",
                argument="moment_seconds",
            )
        self._connection.create_table(MOMENTS, schema=moments_schema(self.embed_dim), exist_ok=True)
        if held is None:
            self.files.write_text(MOMENT_SETTINGS, json.dumps(cfg.as_json()))

    @guarded
    def replace_moments(self, records: Sequence[ItemRecord]) -> None:
        """Each record's moments replace whatever its item had, all in one commit (a file's moments are
        one set, old or new, never both). Records need their ``id`` (``upsert_items`` sets it)."""
        from xsearch.moments import MAX_ITEM_ID, moment_id

        records = [r for r in records if r.moments is not None]
        if not records:
            return
        if any(r.id is None or r.id >= MAX_ITEM_ID for r in records):
            raise StoreError(f"{self.path}: item ids past {MAX_ITEM_ID} cannot hold moments; index into a new database")
        rows = moments_table(records, self.model_id, self.embed_dim, moment_id)
        table = self._table(MOMENTS)
        owners = one_of("item_id", [r.id for r in records])
        if not rows.num_rows:
            if table.count_rows(owners):
                table.delete(owners)
            return
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(owners)
            .execute(rows)
        )

    def moment_sets(self) -> dict[int, set[str | None]]:
        """``{item id: the sha256s its moments were made from}``: one each, unless a run was killed between
        the item's commit and its moments'."""
        if not self.has_moments():
            return {}
        table = self.moments().scan(["item_id", "sha256"])
        sets: dict[int, set[str | None]] = {}
        for pair in table.group_by(["item_id", "sha256"]).aggregate([]).to_pylist():
            sets.setdefault(pair["item_id"], set()).add(pair["sha256"])
        return sets

    @guarded
    def sweep_moments(self) -> int:
        """Delete moments whose file's row is gone or holds other bytes (left by a killed run): one commit
        when there are any. Returns how many."""
        if not self.has_moments():
            return 0
        current = {row["id"]: row["sha256"] for row in self.items().scan(["id", "sha256"]).to_pylist()}
        stale = [i for i, hashes in self.moment_sets().items() if i not in current or hashes != {current[i]}]
        if not stale:
            return 0
        table = self._table(MOMENTS)
        doomed = one_of("item_id", stale)
        count = table.count_rows(doomed)
        table.delete(doomed)
        return count

    # ---- upkeep -------------------------------------------------------------------------------------

    @guarded
    def compact(self, min_keep: dt.timedelta | None = None, merge: bool = True) -> None:
        """Merge small data files and delete the versions no reader holds.

        Every commit adds a version and a touched file rewrites its row (Lance updates are copy-on-write),
        so without this a database grows with every run. A reader holding a version says so in a lease
        (``ReaderLease``): every version from the oldest one held on is kept, and otherwise those of the last
        ``min_keep`` (default ``unleased_keep()``: none, unless ``$XSEARCH_KEEP_SECONDS`` asks for some for
        other tools that read the tables without a lease), so a table sits at its live size between runs.
        ``merge=False`` (a run that committed nothing) only deletes.
        """
        min_keep = unleased_keep() if min_keep is None else min_keep
        items = self._table(ITEMS)
        kept_items = kept_for(self.files, items, "version", min_keep)
        plan = [(items, kept_items), (self._table(ERRORS), kept_items)]  # nobody reads errors at a version
        if self.has_moments():
            moments = self._table(MOMENTS)
            plan.append((moments, kept_for(self.files, moments, "moments", min_keep)))
        compact_tables(self.path, plan, merge)
        for folder in INDEX_FOLDERS.values():
            published = self.files.index_objects(folder)
            if published is not None:
                published.sweep()
