"""The LanceDB store: the source of truth for what is indexed.

Tables (plain Lance tables, readable with ``lancedb``, ``pyarrow`` or pandas without xsearch):

- ``items``: one row per indexed file: stable ``id``, ``uri``, ``modality``, ``sha256``, ``size``, ``mtime``,
  ``model_id``, ``embedding`` (``fixed_size_list<float32, 1024>``), ``indexed_at`` and optional metadata
  (``width``, ``height``, ``duration``, ``sample_rate``, ``thumbnail``).
- ``errors``: files that could not be indexed (``uri``, ``modality``, ``stage``, ``message``, ``at``).
- ``meta``: one row naming the model whose embeddings the database holds, and the schema version.
- ``moments`` (with ``xsearch index --moments``): one row per segment of an audio or video file: ``id``
  (``item_id << 20 | n``), ``item_id``, ``uri``, ``modality`` (a video's sound track is ``audio``),
  ``start`` and ``end`` in seconds, the file's ``sha256``, ``model_id``, ``embedding``
  (``fixed_size_list<float16, 1024>``: half the bytes, and the precision the re-rank reads anyway) and
  ``indexed_at``. How files are cut is in ``moments.json`` beside the tables (``xsearch.moments``).

Every write is one Lance commit (a new table version written after its data files), so a writer killed at
any moment leaves the previous version intact and readers never see half a batch.

Rows are selected with ``ItemFilter``: the one place in xsearch where filter SQL is written (and quoted).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import errno
import fcntl
import functools
import json
import logging
import os
import re
import secrets
import socket
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xsearch.errors import DatabaseDamaged, ModelMismatchError, StoreError, UsageError, XsearchError
from xsearch.modalities import Modality
from xsearch.options import item_key

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ITEMS, ERRORS, META, MOMENTS = "items", "errors", "meta", "moments"
MOMENT_SETTINGS = "moments.json"  # the database's ``MomentCfg``: present once moments are on
NEXT_ID = "next_id"  # the id high-water mark, beside the tables
WRITER_LOCK = "writer.lock"
READERS = "readers"  # one lease file per reader holding a version (``ReaderLease``)
LEASE_SECONDS = 900  # a lease not renewed for this long is a dead reader's (a killed process leaves one)
MIN_KEEP = dt.timedelta(seconds=60)  # old versions kept for readers that take no lease (other tools)


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the database's writer lock: one ``xsearch index`` at a time per database.

    An advisory ``flock`` on ``<db>/writer.lock``, which holds the owner's pid, host and start time for the
    message a second writer gets. The kernel drops the lock when its process dies, so a killed run never
    leaves a stale lock. Readers never take it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = open(path / WRITER_LOCK, "a+")
    except OSError as exc:  # a read-only database, a lock that is a folder: one line, not a traceback
        problem = _storage_problem(path / WRITER_LOCK, exc)
        raise problem or StoreError(
            f"{path / WRITER_LOCK}: cannot take the writer lock ({exc.strerror or exc})"
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(
                f"{path}: another xsearch is writing this database ({holder}); try again when it ends"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {_now():%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def items_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("sha256", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.float64()),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("duration", pa.float64()),
            pa.field("sample_rate", pa.int32()),
            pa.field("thumbnail", pa.binary()),
            pa.field("precision", pa.string()),  # fp32 / bf16: how the encoder ran (added after schema 1)
        ]
    )


def moments_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("item_id", pa.int64(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("start", pa.float64(), nullable=False),
            pa.field("end", pa.float64(), nullable=False),
            pa.field("sha256", pa.string()),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float16(), dim), nullable=False),
            pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
        ]
    )


ERRORS_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("modality", pa.string()),
        pa.field("stage", pa.string()),  # scan / read / decode / encode
        pa.field("message", pa.string()),
        pa.field("at", pa.timestamp("us", tz="UTC")),
    ]
)

META_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("embed_dim", pa.int32(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)


@dataclass
class ItemRecord:
    """One file's row in ``items`` (``id`` is assigned by the store when ``None``)."""

    uri: str
    modality: Modality
    embedding: np.ndarray
    sha256: str | None = None
    size: int | None = None
    mtime: float | None = None
    id: int | None = None
    metadata: dict = field(default_factory=dict)  # width, height, duration, sample_rate, thumbnail
    precision: str | None = None  # the encoder's: fp32 or bf16
    moments: list[Moment] | None = None  # its segments, when the database keeps moments (``None``: not cut)


@dataclass(frozen=True)
class Moment:
    """One segment of a file: ``[start, end)`` seconds of ``modality`` and its unit vector."""

    modality: Modality
    start: float
    end: float
    embedding: np.ndarray


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- filters: the only SQL text in xsearch ------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in(column: str, values: Iterable) -> str:
    values = list(values)
    if not values:
        return "false"
    if isinstance(values[0], str):
        return f"{column} IN ({', '.join(_quote(v) for v in values)})"
    return f"{column} IN ({', '.join(str(int(v)) for v in values)})"


def _and(clauses: Iterable[str | None]) -> str | None:
    clauses = [c for c in clauses if c]
    return " AND ".join(f"({c})" for c in clauses) if clauses else None


# Bounds of a caller's predicate: far above what a person writes (an ``IN (...)`` list takes many values in
# one term), far below what takes Lance's planner down (40,000 OR terms crashed the process).
MAX_FILTER_CHARS = 16_384
MAX_FILTER_TERMS = 256  # AND / OR / NOT
MAX_FILTER_DEPTH = 32  # nested parentheses
_BOOLEAN = re.compile(r"\b(AND|OR|NOT)\b", re.IGNORECASE)


def _check_one_expression(where: str) -> None:
    """A caller's predicate must be one bounded expression: parentheses balanced outside quotes and no SQL
    comment (which could hide a parenthesis), so that it cannot close the parentheses it is put in and
    escape the filters around it (``1=1) OR (modality = 'audio'``); and of a bounded size."""

    def refuse(why: str):
        shown = where if len(where) <= 200 else where[:200] + "..."
        raise UsageError(f"bad filter {shown!r}: {why}", argument="where")

    if len(where) > MAX_FILTER_CHARS:
        refuse(f"{len(where):,} characters, more than the {MAX_FILTER_CHARS:,} a filter may have")
    depth, deepest, quote, outside = 0, 0, None, []
    for i, char in enumerate(where):
        if quote:
            quote = None if char == quote else quote  # '' inside a string closes and reopens: same result
            continue
        if char in "'\"":
            quote = char
        elif where.startswith(("--", "/*", "*/"), i) or char == ";":
            refuse("comments and ';' are not allowed in a filter")
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
            if depth < 0:
                break
        outside.append(char if not quote else " ")
    if depth != 0 or quote:
        refuse("unbalanced parentheses or quotes")
    if deepest > MAX_FILTER_DEPTH:
        refuse(f"parentheses nested {deepest} deep, more than {MAX_FILTER_DEPTH}")
    terms = len(_BOOLEAN.findall("".join(outside)))
    if terms > MAX_FILTER_TERMS:
        refuse(f"{terms} AND/OR/NOT, more than {MAX_FILTER_TERMS} (a list of values is one term: x IN (...))")


@dataclass(frozen=True)
class ItemFilter:
    """Which ``items`` rows: every field given must hold (``None`` fields are ignored).

    ``where`` is a caller's own Lance SQL predicate (``"width >= 1024"``), kept in parentheses; everything
    else is built and quoted here, so no other module writes SQL.

    Example
    -------
    >>> ItemFilter(modality=Modality.IMAGE, uris=["it's.jpg"]).sql()
    "(modality = 'image') AND (uri IN ('it''s.jpg'))"
    """

    modality: Modality | None = None
    ids: Sequence[int] | None = None
    uris: Sequence[str] | None = None
    sha256s: Sequence[str] | None = None
    item_ids: Sequence[int] | None = None  # moments of these items (the ``moments`` table's ``item_id``)
    indexed_after: str | None = None  # as returned by ``Store.last_indexed_at``
    where: str | None = None

    @classmethod
    def item(cls, key: int | str) -> ItemFilter:
        """One stored item named by id, or by uri as given or made absolute."""
        key = item_key(key)
        if isinstance(key, int):
            return cls(ids=[key])
        return cls(uris=sorted({str(key), os.path.abspath(str(key))}))

    def sql(self) -> str | None:
        if self.where is not None:
            _check_one_expression(self.where)
        return _and(
            [
                f"modality = {_quote(self.modality)}" if self.modality is not None else None,
                _in("id", self.ids) if self.ids is not None else None,
                _in("uri", self.uris) if self.uris is not None else None,
                _in("sha256", self.sha256s) if self.sha256s is not None else None,
                _in("item_id", self.item_ids) if self.item_ids is not None else None,
                f"indexed_at > TIMESTAMP {_quote(self.indexed_after)}" if self.indexed_after else None,
                self.where,
            ]
        )


def _one_line(text: str) -> str:
    """Lance's message without its Rust source locations, first line only."""
    text = re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", text.strip().splitlines()[0] if text.strip() else "")
    return re.sub(r"^(External error: )?(lance error: )?LanceError\(\w+\): ", "", text).strip()


def _storage_problem(path: Path, exc: BaseException) -> StoreError | None:
    """What a storage failure means for the user, or ``None`` when it is not one (a bug: let it surface)."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space left on device" in text:
        return StoreError(f"{path}: disk full; nothing more was written (what was committed before is intact)")
    if code == errno.EROFS or "Read-only file system" in text:
        return StoreError(f"{path}: read-only file system; searching works, indexing needs a writable copy")
    if code == errno.EACCES or "Permission denied" in text:
        return StoreError(f"{path}: permission denied; searching works, indexing needs write access")
    gone = re.search(r"Not found: /?(\S+\.lance)\b", text)  # a data file of a table is missing
    if gone:
        return DatabaseDamaged("/" + gone.group(1).lstrip("/"), "missing")
    missing = re.search(r"Table '(\w+)' was not found", text)
    if missing:
        return DatabaseDamaged(path if path.suffix == ".lance" else path / f"{missing.group(1)}.lance", "missing")
    if "LanceError" in text or "lance error" in text or "Corrupt" in text:
        named = [p for p in re.findall(r"(/\S+?\.(?:lance|manifest|txn))\b", text) if str(path) in p]
        return DatabaseDamaged(named[0] if named else path, _one_line(text)[:200])
    return None


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    try:
        yield
    except XsearchError:
        raise
    except Exception as exc:
        problem = _storage_problem(path, exc)
        if problem is None:
            raise
        raise problem from None


def _guarded(method):
    """Storage failures inside a ``Store`` method become one-line errors (damage, disk full, read-only)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with _translated(self.path):
            return method(self, *args, **kwargs)

    return wrapper


class Store:
    """An xsearch database directory.

    Example
    -------
    >>> store = Store.open("my.db", model_id="imagebind_huge")  # doctest: +SKIP
    >>> store.add_items([ItemRecord("a.jpg", "image", vector)])  # doctest: +SKIP
    """

    def __init__(self, path: Path, db, model_id: str, embed_dim: int, table: str = ITEMS):
        self.path = path
        self._db = db
        self.model_id = model_id
        self.embed_dim = embed_dim
        # The table this object reads: ``items``, or ``moments`` for the view ``moments()`` returns, which
        # the index layer and the engine read exactly as they read items (ids, modality, vectors, versions).
        self.table = table
        self._pinned = None  # the table's dataset at one version, for a snapshot (``snapshot``)
        self._moments: Store | None = None  # a snapshot's moments, pinned with it
        self.key: str | None = None  # that version's ``version_key``

    # ---- opening -------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike, model_id: str | None = None, *, embed_dim: int | None = None, create: bool = True
    ) -> Store:
        """Open (or create) the database at ``path``.

        ``model_id`` must match the model that wrote the existing embeddings; embeddings of different
        models live in different spaces and are never mixed. ``None`` accepts whatever the database holds.
        A new database takes ``embed_dim`` from the encoder that will fill it (``Encoder.embed_dim``).
        """
        path = Path(path)
        with _translated(path):
            return cls._open(path, model_id, embed_dim, create)

    @classmethod
    def _open(cls, path: Path, model_id: str | None, embed_dim: int | None, create: bool) -> Store:
        import lancedb

        exists = (path / f"{META}.lance").exists()
        if not exists and not create:
            raise StoreError(f"{path}: no xsearch database here (index some files first)")
        if not exists and model_id is None:
            raise StoreError(f"{path}: a new database needs a model id")
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a directory")
        db = lancedb.connect(str(path))
        if exists:
            meta = db.open_table(META).to_arrow().to_pylist()
            if not meta:
                raise StoreError(f"{path}: the meta table is empty; the database is damaged")
            stored = meta[0]
            if stored["schema_version"] != SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: database schema version {stored['schema_version']}, this xsearch reads "
                    f"version {SCHEMA_VERSION}; re-index into a new directory"
                )
            ModelMismatchError.check(path, stored["model_id"], model_id)
            store = cls(path, db, stored["model_id"], int(stored["embed_dim"]))
            store.items(), store.errors()  # both tables present, or the database is damaged
            if model_id is not None:  # a writer: bring columns added since schema 1 to this database
                store._add_missing_columns()
        else:
            held = _rows_model(db, path)  # a lost meta table: the rows say whose embeddings they are
            if held is not None:
                ModelMismatchError.check(path, held[0], model_id)
                log.warning("%s: the meta table was missing; rebuilt from the rows (model %s)", path, held[0])
                model_id, embed_dim = held
            if not embed_dim:
                raise StoreError(f"{path}: a new database needs the width of its embeddings (embed_dim)")
            store = cls(path, db, model_id, embed_dim)
            # Items and errors first, meta last: a database is complete once its meta table exists.
            db.create_table(ITEMS, schema=items_schema(embed_dim), exist_ok=True)
            db.create_table(ERRORS, schema=ERRORS_SCHEMA, exist_ok=True)
            meta = pa.table(
                {"model_id": [model_id], "embed_dim": [embed_dim], "schema_version": [SCHEMA_VERSION]},
                schema=META_SCHEMA,
            )
            db.create_table(META, data=meta)
        return store

    def _add_missing_columns(self) -> None:
        """Columns added to ``items`` after schema 1 (``precision``), as nulls: one commit, writers only."""
        table = self.items()
        present = set(table.schema.names)
        missing = [f for f in items_schema(self.embed_dim) if f.name not in present]
        if missing:
            table.add_columns({f.name: f"CAST(NULL AS {_SQL_TYPES[f.type]})" for f in missing})

    def has_column(self, name: str) -> bool:
        return name in self.items().schema.names

    # ---- tables ----------------------------------------------------------------------------------------

    def items(self):
        """The ``items`` LanceTable at its latest version."""
        with _translated(self.path / f"{ITEMS}.lance"):
            return self._db.open_table(ITEMS)

    def errors(self):
        with _translated(self.path / f"{ERRORS}.lance"):
            return self._db.open_table(ERRORS)

    def _table(self):
        """The table this object reads (``items``, or ``moments`` for a moments view) at its latest version."""
        with _translated(self.path / f"{self.table}.lance"):
            return self._db.open_table(self.table)

    # ---- moments ---------------------------------------------------------------------------------------

    def moment_cfg(self):
        """How this database cuts files into moments (a ``MomentCfg``), or ``None`` when it keeps none."""
        from xsearch.moments import MomentCfg

        try:
            return MomentCfg.from_json(json.loads((self.path / MOMENT_SETTINGS).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, UsageError) as exc:
            raise DatabaseDamaged(self.path / MOMENT_SETTINGS, f"unreadable ({exc})") from None

    @_guarded
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
        self._db.create_table(MOMENTS, schema=moments_schema(self.embed_dim), exist_ok=True)
        if held is None:
            tmp = self.path / (MOMENT_SETTINGS + ".tmp")
            tmp.write_text(json.dumps(cfg.as_json()))
            os.replace(tmp, self.path / MOMENT_SETTINGS)

    def has_moments(self) -> bool:
        return (self.path / f"{MOMENTS}.lance").exists()

    def moments(self) -> Store:
        """The ``moments`` table seen as a store of its own (read-only): counts, ids, vectors, versions and
        snapshots of moments, which ``IndexSet`` and the engine read as they read items."""
        if self.table == MOMENTS:
            return self
        if self._moments is not None:
            return self._moments
        if not self.has_moments():
            raise StoreError(f"{self.path}: no moments indexed here (run xsearch index --moments)")
        return Store(self.path, self._db, self.model_id, self.embed_dim, table=MOMENTS)

    @_guarded
    def replace_moments(self, records: Sequence[ItemRecord]) -> None:
        """Each record's moments replace whatever its item had, all in one commit (a file's moments are
        one set, old or new, never both). Records need their ``id`` (``upsert_items`` sets it)."""
        from xsearch.moments import MAX_ITEM_ID, moment_id

        records = [r for r in records if r.moments is not None]
        if not records:
            return
        if any(r.id is None or r.id >= MAX_ITEM_ID for r in records):
            raise StoreError(f"{self.path}: item ids past {MAX_ITEM_ID} cannot hold moments; index into a new database")
        rows = {name: [] for name in moments_schema(self.embed_dim).names}
        vectors, now = [], _now()
        for record in records:
            for n, moment in enumerate(sorted(record.moments, key=lambda m: (str(m.modality), m.start))):
                vector = np.asarray(moment.embedding, dtype=np.float32).reshape(-1)
                if vector.shape[0] != self.embed_dim or not np.isfinite(vector).all():
                    raise StoreError(f"{record.uri}: a moment's embedding is not {self.embed_dim} finite values")
                vectors.append(vector)
                for key, value in (
                    ("id", moment_id(record.id, n)),
                    ("item_id", record.id),
                    ("uri", record.uri),
                    ("modality", str(moment.modality)),
                    ("start", float(moment.start)),
                    ("end", float(moment.end)),
                    ("sha256", record.sha256),
                    ("model_id", self.model_id),
                    ("indexed_at", now),
                ):
                    rows[key].append(value)
        schema = moments_schema(self.embed_dim)
        flat = np.stack(vectors).astype(np.float16) if vectors else np.empty((0, self.embed_dim), np.float16)
        arrays = [
            pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), self.embed_dim)
            if f.name == "embedding"
            else pa.array(rows[f.name], type=f.type)
            for f in schema
        ]
        table = self._db.open_table(MOMENTS)
        owners = _in("item_id", [r.id for r in records])
        if not vectors:
            if table.count_rows(owners):
                table.delete(owners)
            return
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(owners)
            .execute(pa.Table.from_arrays(arrays, schema=schema))
        )

    @_guarded
    def moment_at(self, item_id: int, seconds: float, prefer: Modality | None = None) -> dict | None:
        """The moment of ``item_id`` holding ``seconds`` (``id``, ``modality``, ``start``, ``end``,
        ``embedding``), of modality ``prefer`` when it has one (a video's picture before its sound); the
        last one when ``seconds`` is its end. ``None`` when there is none."""
        columns = ["id", "modality", "start", "end", "embedding"]
        rows = self.moments().scan(columns, ItemFilter(item_ids=[item_id])).to_pylist()
        held = [r for r in rows if r["start"] <= seconds < r["end"] or seconds == r["end"]]
        held.sort(key=lambda r: (r["modality"] != str(prefer), r["end"] == seconds, r["start"]))
        return held[0] if held else None

    def moment_sets(self) -> dict[int, set[str | None]]:
        """``{item id: the sha256s its moments were made from}``: one each, unless a run was killed between
        the item's commit and its moments'."""
        if not self.has_moments():
            return {}
        table = self._db.open_table(MOMENTS).to_lance().to_table(columns=["item_id", "sha256"])
        pairs = table.group_by(["item_id", "sha256"]).aggregate([]).to_pylist()
        sets: dict[int, set[str | None]] = {}
        for pair in pairs:
            sets.setdefault(pair["item_id"], set()).add(pair["sha256"])
        return sets

    @_guarded
    def sweep_moments(self) -> int:
        """Delete moments whose file's row is gone or holds other bytes (left by a killed run): one commit
        when there are any. Returns how many."""
        if not self.has_moments():
            return 0
        items = self.scan(["id", "sha256"]).to_pylist()
        current = {row["id"]: row["sha256"] for row in items}
        stale = [i for i, hashes in self.moment_sets().items() if i not in current or hashes != {current[i]}]
        if not stale:
            return 0
        table = self._db.open_table(MOMENTS)
        doomed = _in("item_id", stale)
        count = table.count_rows(doomed)
        table.delete(doomed)
        return count

    @property
    def version(self) -> int:
        """The table's version (a snapshot's own): what an index built from it records as covered."""
        return self._pinned.version if self._pinned is not None else self._table().version

    @_guarded
    def snapshot(self, lease: ReaderLease | None = None) -> Store:
        """This store frozen at its current version: every read through the copy (counts, rows, vectors,
        ids, the indices built from it) sees that version and no later commit. ``key`` is its
        ``version_key``, a name that cannot come back. ``lease`` records the version, so that a writer's
        compaction keeps it while the lease lives (taken before the version is read: no gap)."""
        if lease is not None:
            lease.hold(None)  # "the newest version as of now", until the number is known
        pinned = Store(self.path, self._db, self.model_id, self.embed_dim, self.table)
        pinned._pinned = self._dataset()
        pinned.key = pinned.version_key()
        if self.table == ITEMS and self.has_moments():  # pinned after the items: never older than they are
            pinned._moments = self.moments().snapshot()
        if lease is not None:
            lease.hold(pinned._pinned.version, pinned._moments.version if pinned._moments else None)
        return pinned

    @_guarded
    def count(self, modality: Modality | None = None, version: int | None = None) -> int:
        return self._dataset(version).count_rows(ItemFilter(modality=modality).sql())

    def _dataset(self, version: int | None = None):
        """The table's Lance dataset at ``version`` (when ``None``: a snapshot's, else the latest)."""
        if self._pinned is not None and version in (None, self._pinned.version):
            return self._pinned
        dataset = self._table().to_lance()
        return dataset if version is None else dataset.checkout_version(version)

    @_guarded
    def version_key(self, version: int | None = None) -> str:
        """The table version and its commit time: unlike the number alone, it cannot come back (a lost
        newest manifest makes the next commit reuse its number)."""
        dataset = self._dataset(version)
        moment = next(v["timestamp"] for v in reversed(dataset.versions()) if v["version"] == dataset.version)
        return f"{dataset.version}@{moment.isoformat()}"

    def iter_vectors(self, where: ItemFilter, version: int, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, float32 [n, dim])`` batches of the rows ``where`` selects, streamed from disk."""
        batches = self._dataset(version).to_batches(
            columns=["id", "embedding"], filter=where.sql(), batch_size=batch_rows
        )
        with _translated(self.path / f"{self.table}.lance"):
            for batch in batches:
                if batch.num_rows:
                    yield batch.column("id").to_numpy(), embeddings_to_numpy(batch.column("embedding"))

    def check(self, batch_rows: int = 8192) -> int:
        """Read every row of every column (what ``info`` vouches for); returns the rows read."""
        rows = 0
        with _translated(self.path / f"{ITEMS}.lance"):
            for batch in self._dataset().to_batches(batch_size=batch_rows):
                rows += batch.num_rows
        with _translated(self.path / f"{ERRORS}.lance"):
            self.errors().to_arrow()
        if self.has_moments():
            with _translated(self.path / f"{MOMENTS}.lance"):
                for _ in self.moments()._dataset().to_batches(batch_size=batch_rows):
                    pass
        return rows

    def scan(self, columns: Sequence[str], where: ItemFilter | None = None, version: int | None = None) -> pa.Table:
        """Columns of ``items`` (the rows ``where`` selects, all when ``None``) as an Arrow table."""
        dataset = self._dataset(version)
        sql = where.sql() if where is not None else None
        # Belt and braces: rows a caller's predicate selects are re-checked against the modality asked for.
        recheck = where is not None and where.where is not None and where.modality is not None
        read = list(columns) + (["modality"] if recheck and "modality" not in columns else [])
        try:
            table = dataset.to_table(columns=read, filter=sql)
        except Exception as exc:  # lance raises ValueError / OSError / its own errors for bad SQL
            if where is None or not where.where:
                problem = _storage_problem(self.path / f"{self.table}.lance", exc)
                raise problem or StoreError(
                    f"{self.path}: reading {self.table} failed ({_one_line(str(exc))})"
                ) from None
            reason = _filter_problem(str(exc))
            schema = items_schema if self.table == ITEMS else moments_schema
            filterable = ", ".join(n for n in schema(self.embed_dim).names if n not in _NOT_FILTERABLE)
            raise UsageError(
                f"bad filter {where.where!r}: {reason} (columns: {filterable})", argument="where"
            ) from None
        if recheck:
            table = table.filter(pc.equal(table["modality"], str(where.modality))).select(list(columns))
        return table

    @_guarded
    def modalities(self) -> list[Modality]:
        """The modalities that have rows, in the table's order (names no longer registered are skipped)."""
        names = set(self.scan(["modality"])["modality"].unique().to_pylist())
        unknown = names - {m.value for m in Modality}
        if unknown:
            log.warning("%s: rows of unregistered modalities %s are not searched", self.path, sorted(unknown))
        return [m for m in Modality if m.value in names]

    def ids(self, modality: Modality | None = None, version: int | None = None) -> np.ndarray:
        return self.scan(["id"], ItemFilter(modality=modality), version=version)["id"].to_numpy()

    def lookup(self, key: int | str, columns: Sequence[str]) -> dict | None:
        """One stored item's ``columns`` by id or uri, or ``None`` when it is not indexed."""
        rows = self.scan(columns, ItemFilter.item(key)).to_pylist()
        return rows[0] if rows else None

    def rows(self, ids: Sequence[int], columns: Sequence[str]) -> dict[int, dict]:
        """``{id: row}`` of ``columns`` for the ids that exist."""
        if len(ids) == 0:
            return {}
        table = self.scan(["id", *[c for c in columns if c != "id"]], ItemFilter(ids=list(ids)))
        return {row["id"]: row for row in table.to_pylist()}

    def last_indexed_at(self, version: int | None = None) -> str | None:
        """The newest ``indexed_at`` (ISO, UTC) at ``version``: what an index records as covered."""
        column = self.scan(["indexed_at"], version=version)["indexed_at"]
        newest = pc.max(column).as_py() if len(column) else None
        return newest.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if newest else None

    def ids_indexed_after(
        self, moment: str, modality: Modality | None = None, version: int | None = None
    ) -> np.ndarray:
        """Ids whose row was (re)written after ``moment`` (as returned by ``last_indexed_at``)."""
        where = ItemFilter(modality=modality, indexed_after=moment)
        return self.scan(["id"], where, version=version)["id"].to_numpy()

    @_guarded
    def vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, float32 [n, dim])`` for the requested ids that exist, in ascending id order."""
        if len(ids) == 0:
            return np.empty(0, np.int64), np.empty((0, self.embed_dim), np.float32)
        table = self.scan(["id", "embedding"], ItemFilter(ids=np.unique(ids)))
        order = np.argsort(table["id"].to_numpy())
        found = table["id"].to_numpy()[order]
        return found, embeddings_to_numpy(table["embedding"])[order]

    @_guarded
    def lookup_uris(self, uris: Sequence[str]) -> pa.Table:
        """Rows (without embeddings) for the given uris."""
        columns = ["id", "uri", "modality", "sha256", "size", "mtime"]
        if not uris:
            return pa.table({c: [] for c in columns})
        return self.scan(columns, ItemFilter(uris=list(uris)))

    # ---- writes ----------------------------------------------------------------------------------------

    @_guarded
    def _next_id(self) -> int:
        """The next unused id: above every id in the table and every id handed out before (a row deleted by
        ``--prune`` never gives its id to another file)."""
        table = self.items()
        highest = int(pc.max(self.scan(["id"])["id"]).as_py()) + 1 if table.count_rows() else 0
        try:
            text = (self.path / NEXT_ID).read_text().strip()
        except FileNotFoundError:
            text = "0"  # a database from before the high-water mark was kept
        except OSError as exc:
            raise DatabaseDamaged(self.path / NEXT_ID, f"unreadable ({exc.strerror or exc})") from None
        if not text.isdigit():
            raise DatabaseDamaged(self.path / NEXT_ID, f"holds {text[:40]!r}, not an id (it must not be guessed)")
        next_id = max(highest, int(text))
        if next_id >= 2**63 - 2**20:
            raise StoreError(f"{self.path}: item ids are exhausted ({next_id}); index into a new database")
        return next_id

    @_guarded
    def _reserve_ids(self, next_id: int) -> None:
        """Record ids as handed out before the commit that uses them (a crash then only skips some)."""
        tmp = self.path / (NEXT_ID + ".tmp")
        tmp.write_text(str(next_id))
        os.replace(tmp, self.path / NEXT_ID)

    def _to_arrow(self, records: Sequence[ItemRecord]) -> pa.Table:
        next_id = self._next_id()
        rows = {name: [] for name in items_schema(self.embed_dim).names}
        now = _now()
        flat = np.empty((len(records), self.embed_dim), dtype=np.float32)
        for i, rec in enumerate(records):
            vector = np.asarray(rec.embedding, dtype=np.float32).reshape(-1)
            if vector.shape[0] != self.embed_dim:
                raise StoreError(f"{rec.uri}: embedding has {vector.shape[0]} values, expected {self.embed_dim}")
            if not np.isfinite(vector).all():
                raise StoreError(f"{rec.uri}: embedding contains NaN or infinite values")
            flat[i] = vector
            if rec.id is None:
                rec.id, next_id = next_id, next_id + 1
            rows["id"].append(rec.id)
            rows["uri"].append(rec.uri)
            rows["modality"].append(str(rec.modality))
            rows["sha256"].append(rec.sha256)
            rows["size"].append(rec.size)
            rows["mtime"].append(rec.mtime)
            rows["model_id"].append(self.model_id)
            rows["indexed_at"].append(now)
            rows["precision"].append(rec.precision)
            for key in ("width", "height", "duration", "sample_rate", "thumbnail"):
                rows[key].append(rec.metadata.get(key))
        self._reserve_ids(next_id)
        schema = items_schema(self.embed_dim)
        arrays = []
        for f in schema:
            if f.name == "embedding":
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), self.embed_dim))
            else:
                arrays.append(pa.array(rows[f.name], type=f.type))
        return pa.Table.from_arrays(arrays, schema=schema)

    @_guarded
    def add_items(self, records: Sequence[ItemRecord]) -> int:
        """Append ``records`` in one commit; returns the new table version."""
        if not records:
            return self.version
        table = self.items()
        table.add(self._to_arrow(records))
        return table.version

    @_guarded
    def upsert_items(self, records: Sequence[ItemRecord]) -> int:
        """Insert new uris and replace the rows of known ones, in one commit (ids of replaced uris are kept).

        Example: a file that changed on disk is re-embedded and its row replaced, atomically.
        """
        if not records:
            return self.version
        known = self.lookup_uris([r.uri for r in records])
        known_ids = dict(zip(known["uri"].to_pylist(), known["id"].to_pylist()))
        for rec in records:
            if rec.uri in known_ids:
                rec.id = known_ids[rec.uri]
        table = self.items()
        (
            table.merge_insert("uri")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(self._to_arrow(records))
        )
        return table.version

    @_guarded
    def update_file_stats(self, stats: dict[str, tuple[int, float]]) -> int:
        """Set ``(size, mtime)`` of known uris whose bytes did not change (touched or copied), in one commit."""
        if not stats:
            return self.version
        rows = self.scan(items_schema(self.embed_dim).names, ItemFilter(uris=list(stats)))
        uris = rows["uri"].to_pylist()
        size = pa.array([stats[u][0] for u in uris], pa.int64())
        mtime = pa.array([stats[u][1] for u in uris], pa.float64())
        rows = rows.set_column(rows.schema.get_field_index("size"), "size", size)
        rows = rows.set_column(rows.schema.get_field_index("mtime"), "mtime", mtime)
        table = self.items()
        table.merge_insert("uri").when_matched_update_all().execute(rows)
        return table.version

    @_guarded
    def delete_items(self, *, ids: Sequence[int] = (), uris: Sequence[str] = ()) -> int:
        """Delete rows by id and/or uri in one commit; returns the new table version."""
        clauses = []
        if len(ids):
            clauses.append(_in("id", ids))
        if len(uris):
            clauses.append(_in("uri", uris))
        table = self.items()
        if clauses:
            where = " OR ".join(f"({c})" for c in clauses)
            doomed = (
                self._dataset().to_table(columns=["id"], filter=where)["id"].to_pylist() if self.has_moments() else []
            )
            table.delete(where)
            if doomed:  # after the rows: a kill between the two leaves moments that ``sweep_moments`` removes
                self._db.open_table(MOMENTS).delete(_in("item_id", doomed))
        return table.version

    @_guarded
    def record_errors(self, errors: Sequence[tuple[str, str | None, str, str]]) -> None:
        """Replace the error rows of these uris with ``(uri, modality, stage, message)``, one commit."""
        if not errors:
            return
        now = _now()
        data = pa.table(
            {
                "uri": [e[0] for e in errors],
                "modality": [e[1] for e in errors],
                "stage": [e[2] for e in errors],
                "message": [e[3] for e in errors],
                "at": [now] * len(errors),
            },
            schema=ERRORS_SCHEMA,
        )
        self.errors().merge_insert("uri").when_matched_update_all().when_not_matched_insert_all().execute(data)

    @_guarded
    def clear_errors(self, uris: Sequence[str]) -> None:
        if uris and self.errors().count_rows(_in("uri", uris)):  # a delete matching nothing still commits
            self.errors().delete(_in("uri", uris))

    @_guarded
    def compact(self, min_keep: dt.timedelta | None = None) -> None:
        """Merge small data files and delete the versions no reader holds.

        Every commit adds a version and a touched file rewrites its row (Lance updates are copy-on-write),
        so without this a database grows with every run. A reader holding a version says so in a lease
        (``ReaderLease``): every version from the oldest one held on is kept, and otherwise those of the last
        ``min_keep`` (default ``MIN_KEEP``; for readers that take no lease), so a run every minute keeps the
        database's size.
        """
        min_keep = MIN_KEEP if min_keep is None else min_keep

        def keep(table, held_as: str) -> dt.timedelta:
            held = _held_since(self.path, table.to_lance().versions(), held_as)
            return min_keep if held is None else max(min_keep, _now() - held + dt.timedelta(seconds=1))

        items = self.items()
        kept_items = keep(items, "version")
        plan = [(items, kept_items), (self.errors(), kept_items)]  # nobody reads errors at a version
        if self.has_moments():
            moments = self._db.open_table(MOMENTS)
            plan.append((moments, keep(moments, "moments")))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=")  # we know who reads
            for table, kept in plan:
                table.optimize(cleanup_older_than=kept)

    @_guarded
    def error_rows(self) -> pa.Table:
        return self.errors().to_arrow()


_NOT_FILTERABLE = {"embedding", "thumbnail"}
_SQL_TYPES = {pa.string(): "STRING"}  # the types of columns added to existing databases


def _filter_problem(message: str) -> str:
    """Lance's error about a filter, as one line about the user's own words: no source paths, no wrapped
    SQL, no internal column list."""
    text = re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", message.splitlines()[0]).replace("Invalid user input: ", "")
    missing = re.search(r"No field named (\S+?)\.?(?: Valid fields|$| Did you mean '(\w+)')", text)
    if missing:
        hint = f"; did you mean '{missing.group(2)}'?" if missing.group(2) else ""
        return f"no column named {missing.group(1)}{hint}"
    parser = re.search(r"sql parser error: (.*?)\)?$", text)
    if parser:
        return f"syntax error: {parser.group(1)}"
    resolving = re.search(r"Error resolving filter expression .*?: (.*)$", text)
    return (resolving.group(1) if resolving else text).strip().rstrip(".,")


class ReaderLease:
    """A reader's note, in ``<db>/readers/``, of the ``items`` version it holds (``None``: the newest as of
    the note), so that a writer's compaction keeps it. Renewed at each new snapshot, removed by ``release``;
    a killed reader's note expires after ``LEASE_SECONDS``. A database the reader cannot write takes no
    note (nothing compacts it either)."""

    def __init__(self, path: str | os.PathLike):
        self.file = Path(path) / READERS / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.json"
        self.held: int | None = None
        self.held_moments: int | None = None
        self.noted = False
        atexit.register(self.release)

    def hold(self, version: int | None, moments: int | None = None) -> None:
        """Note ``version`` of items and ``moments`` of the moments table (``None``: the newest as of now).
        Holding an older version than the one read is safe (compaction keeps everything from it on), so a
        reader renews its note only when it moves."""
        if self.noted and (version is None or (version, moments) == (self.held, self.held_moments)):
            return
        self.held, self.held_moments, self.noted = version, moments, True
        note = {
            "version": version,
            "moments": moments,
            "at": _now().timestamp(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        try:
            self.file.parent.mkdir(exist_ok=True)
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps(note))
            os.replace(tmp, self.file)
        except OSError:
            log.debug("%s: cannot note the version this reader holds (read-only?)", self.file.parent)

    def release(self) -> None:
        self.noted = False
        with contextlib.suppress(OSError):
            self.file.unlink(missing_ok=True)


def _held_since(path: Path, versions: list[dict], field: str = "version") -> dt.datetime | None:
    """The commit time of the oldest version of a table (``versions``) that a live reader holds (``None``:
    none is held); ``field`` names the table in a lease note (``version``: items, ``moments``)."""
    times = sorted((v["timestamp"].astimezone(dt.UTC), v["version"]) for v in versions)
    oldest = None
    for lease in (path / READERS).glob("*.json") if (path / READERS).is_dir() else []:
        try:
            note = json.loads(lease.read_text())
            at = dt.datetime.fromtimestamp(float(note["at"]), dt.UTC)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(note) or (_now() - at).total_seconds() > LEASE_SECONDS:
            lease.unlink(missing_ok=True)  # a dead reader's
            continue
        if note.get(field) is not None:
            held = next((t for t, v in times if v == note[field]), None)
        elif note.get("version") is not None:  # holds items read before this table existed: nothing of it
            continue
        else:  # noted before it read: the newest version committed by then
            held = max((t for t, _ in times if t <= at), default=None)
        if held is not None and (oldest is None or held < oldest):
            oldest = held
    return oldest


def _alive(note: dict) -> bool:
    """Whether the reader that wrote ``note`` may still run (on another host: assume so until it expires)."""
    if note.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(note["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError, TypeError):
        return True
    return True


def _rows_model(db, path: Path) -> tuple[str, int] | None:
    """``(model id, width)`` of the rows of an ``items`` table left without its meta table, or ``None`` when
    there is no such table or it has no rows; rows of several models are damage, never mixed further."""
    if not (path / f"{ITEMS}.lance").exists():
        return None
    with _translated(path / f"{ITEMS}.lance"):
        table = db.open_table(ITEMS)
        models = table.to_lance().to_table(columns=["model_id"])["model_id"].unique().to_pylist()
        width = table.schema.field("embedding").type.list_size
    if not models:
        return None
    if len(models) > 1:
        raise DatabaseDamaged(path / f"{META}.lance", f"missing, and the rows hold several models: {models}")
    return models[0], width


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A ``fixed_size_list<float32 or float16, d>`` column -> ``float32 [n, d]`` without a Python loop."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
