"""Who holds what: the writer lock (one ``xsearch index`` at a time per database) and the readers' leases
on the table versions they read, which a writer's compaction keeps."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import socket
import time
import weakref
from collections.abc import Iterator

from xsearch.errors import UsageError
from xsearch.store.schema import now
from xsearch.store.side_files import SideFiles

log = logging.getLogger(__name__)

READERS = "readers"  # one lease file per reader holding a version (``ReaderLease``)
LEASE_SECONDS = 900  # a lease not renewed for this long is a dead reader's (a killed process leaves one)
KEEP_SECONDS_ENV = "XSEARCH_KEEP_SECONDS"  # old versions kept for readers that take no lease (other tools)
CLOCK_SKEW = dt.timedelta(seconds=120)  # a note dated further ahead than this was written by a wrong clock


def unleased_keep() -> dt.timedelta:
    """How long superseded versions are kept for readers without a lease: none by default (every reader in
    xsearch takes one, and a window kept a table at twice its size between runs), ``$XSEARCH_KEEP_SECONDS``
    for other tools reading the tables directly."""
    text = os.environ.get(KEEP_SECONDS_ENV, "").strip()
    try:
        seconds = float(text) if text else 0.0
    except ValueError:
        raise UsageError(f"{KEEP_SECONDS_ENV}={text!r} is not a number of seconds") from None
    if not 0 <= seconds < 10**9:
        raise UsageError(f"{KEEP_SECONDS_ENV}={text!r}: give seconds from 0 on")
    return dt.timedelta(seconds=seconds)


def _side_files(where: str | os.PathLike | SideFiles) -> SideFiles:
    return where if isinstance(where, SideFiles) else SideFiles.at(where)


@contextlib.contextmanager
def writer_lock(where: str | os.PathLike | SideFiles) -> Iterator[None]:
    """Hold the database's writer lock (created with its folder when new); readers never take it. A second
    writer gets a ``StoreError`` naming the holder."""
    with _side_files(where).writer_lock():
        yield


class ReaderLease:
    """A reader's note, in ``<db>/readers/``, of the table versions it holds (``None``: the newest as of the
    note), so that a writer's compaction keeps them. Renewed when the reader moves, removed by ``release``;
    a killed reader's note expires after ``LEASE_SECONDS``. A database the reader cannot write takes no
    note (nothing compacts it either)."""

    def __init__(self, where: str | os.PathLike | SideFiles):
        self.files = _side_files(where)
        self.name = f"{READERS}/{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.json"
        self.held: int | None = None
        self.held_moments: int | None = None
        self.noted = False
        self.noted_at = 0.0
        # The note goes with the lease: at ``release``, when the lease is collected, or at exit (one
        # finalizer each, holding the note's place, not the lease: a released lease is not kept alive).
        self._remove = weakref.finalize(self, _remove_note, self.files, self.name)

    def hold(self, version: int | None, moments: int | None = None) -> None:
        """Note ``version`` of items and ``moments`` of the moments table (``None``: the newest as of now).
        Holding an older version than the one read is safe (compaction keeps everything from it on), so a
        reader rewrites its note when it moves, and otherwise only to renew it before it expires (a reader
        on another host cannot be asked whether it still runs: its note's age decides)."""
        fresh = self.noted and time.monotonic() - self.noted_at < LEASE_SECONDS / 3
        if fresh and (version is None or (version, moments) == (self.held, self.held_moments)):
            return
        if version is None and self.noted:
            version, moments = self.held, self.held_moments  # a renewal: still holds what it held
        self.held, self.held_moments, self.noted = version, moments, True
        self.noted_at = time.monotonic()
        note = {
            "version": version,
            "moments": moments,
            "at": now().timestamp(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        if not self._remove.alive:  # noted again after a release
            self._remove = weakref.finalize(self, _remove_note, self.files, self.name)
        try:
            self.files.make_folder(READERS)
            self.files.write_text(self.name, json.dumps(note))
        except Exception:  # a read-only folder, a store that refuses: the reader still reads
            log.debug("%s: cannot note the version this reader holds (read-only?)", self.files.where(READERS))

    def release(self) -> None:
        self.noted = False
        self._remove()


def _remove_note(files: SideFiles, name: str) -> None:
    with contextlib.suppress(Exception):  # best effort (at exit, the store may be gone): the note expires
        files.remove(name)


def held_since(files: SideFiles, versions: list[dict], field: str = "version") -> dt.datetime | None:
    """The commit time of the oldest version of a table (``versions``) that a live reader holds (``None``:
    none is held); ``field`` names the table in a lease note (``version``: items, ``moments``)."""
    times = sorted((v["timestamp"].astimezone(dt.UTC), v["version"]) for v in versions)
    try:
        names = files.names(READERS, ".json") if files.is_folder(READERS) else []
    except OSError as exc:  # a folder this writer may not list: which versions readers hold is unknown
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        log.warning("%s: cannot list readers' notes (%s); every version is kept", files.where(READERS), reason)
        return times[0][0] if times else None
    oldest = None
    for name in names:
        try:
            note = json.loads(files.read_text(name) or "")
            at = dt.datetime.fromtimestamp(float(note["at"]), dt.UTC)
        except (OSError, ValueError, KeyError, TypeError, OverflowError):  # a note that means nothing
            continue
        # Dated ahead of this clock by more than a skew: a host whose clock is wrong would otherwise pin old
        # versions until its future date passes (a day ahead: a day of growth). Its reader renews its note.
        ahead = at - now() > CLOCK_SKEW
        if ahead or not files.alive(note) or (now() - at).total_seconds() > LEASE_SECONDS:
            with contextlib.suppress(OSError):
                files.remove(name)  # a dead reader's
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
