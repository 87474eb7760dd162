"""Side files of a database kept in an object store (``s3://bucket/prefix``).

An object store has no locks, no rename and no process ids, but it has conditional writes: a PUT with
``If-None-Match: *`` creates a key only if it is absent, and one with ``If-Match: <etag>`` replaces it only
if nobody replaced it since. Everything that needs one winner is built on them:

- the writer lock is a **lease object**: taken by a create, renewed by a compare-and-swap on its ETag four
  times a lease while the run lives, and lapsing ``LEASE_SECONDS`` after the last renewal, so that a
  killed run's lock expires; the next writer takes an expired lease over (by compare-and-swap, so two cannot
  both) and says whose it was;
- readers' leases are objects too; a reader's liveness cannot be asked, so its lease's age decides
  (``leases.LEASE_SECONDS``), and readers renew theirs while they hold a version;
- before the first write, ``check_writable`` makes sure the server honours ``If-None-Match`` (Lance's own
  commits depend on it: a server that ignores it lets concurrent writers overwrite each other's commits).

Files read by memory mapping (the FAISS indices) are copied to ``local_folder``, under ``$XSEARCH_HOME``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from xsearch.errors import StoreError
from xsearch.objects import ObjectUri, store_of
from xsearch.store.side_files import WRITER_LOCK, SideFiles

log = logging.getLogger(__name__)

LEASE_ENV = "XSEARCH_WRITER_LEASE_SECONDS"
LEASE_SECONDS = 60.0  # a writer lease not renewed for this long has lapsed: its run was killed or cut off
PROBE = "probe"  # where the conditional-write check puts its two objects (and removes them)
_SAFE: set[tuple[str, str]] = set()  # buckets whose server this process has seen honour If-None-Match


def object_errors():
    import obstore.exceptions as errors

    return errors


class ObjectSideFiles(SideFiles):
    """The side files of the database at ``uri`` (``s3://bucket/prefix``)."""

    # A check for new commits costs requests (tens of milliseconds each to a cloud bucket): a reader makes
    # it at most once a second, so a search sees a commit up to a second late.
    recheck_seconds = 1.0

    def __init__(self, uri: ObjectUri):
        self.uri = uri
        self.root = str(uri)
        self.store = store_of(uri)
        self._indices: dict[str, object] = {}

    def where(self, name: str = "") -> ObjectUri:
        return self.uri / name if name else self.uri

    def _key(self, name: str) -> str:
        return f"{self.uri.key}/{name}".strip("/") if name else self.uri.key

    # ---- reading and writing ------------------------------------------------------------------------------

    def read_bytes(self, name: str) -> bytes | None:
        found = self._get(name)
        return None if found is None else found[0]

    def _get(self, name: str) -> tuple[bytes, str | None] | None:
        """The object's bytes and ETag, or ``None`` when there is no such object."""
        import obstore

        try:
            result = obstore.get(self.store, self._key(name))
            return bytes(result.bytes()), result.meta.get("e_tag")
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        """One PUT: object stores replace an object whole, so readers see the old bytes or the new."""
        import obstore

        obstore.put(self.store, self._key(name), data)

    def put(self, name: str, data: bytes, mode="overwrite") -> str | None:
        """Write ``data`` as ``name`` (``mode``: ``"create"`` only when absent, ``{"e_tag": ...}`` only when
        unchanged since); the new ETag. A failed condition raises ``AlreadyExistsError`` / ``PreconditionError``."""
        import obstore

        return obstore.put(self.store, self._key(name), data, mode=mode).get("e_tag")

    def exists(self, name: str) -> bool:
        """Whether a "folder" (a table: ``items.lance``) or an object is there (the folder asked first: the
        names asked after most are tables)."""
        import obstore

        if self.is_folder(name):
            return True
        try:
            obstore.head(self.store, self._key(name))
            return True
        except FileNotFoundError:
            return False

    def is_folder(self, name: str = "") -> bool:
        """Whether any object lies under ``name/`` (object stores have no folders, only shared prefixes)."""
        import obstore

        prefix = self._key(name) + "/" if self._key(name) else None
        for batch in obstore.list(self.store, prefix=prefix, chunk_size=1):
            return bool(batch)
        return False

    def names(self, folder: str, suffix: str = "") -> list[str]:
        import obstore

        prefix = self._key(folder) + "/"
        found = []
        for batch in obstore.list(self.store, prefix=prefix):
            found += [f"{folder}/{o['path'][len(prefix) :]}" for o in batch if o["path"].endswith(suffix)]
        return [name for name in found if "/" not in name[len(folder) + 1 :]]

    def total_bytes(self) -> int:
        import obstore

        return sum(o["size"] for batch in obstore.list(self.store, prefix=self.uri.key + "/") for o in batch)

    def make_folder(self, name: str) -> None:
        """Nothing to do: a prefix exists once an object has it."""

    def remove(self, name: str) -> None:
        import obstore

        with contextlib.suppress(FileNotFoundError):
            obstore.delete(self.store, self._key(name))

    def local_folder(self, name: str) -> Path:
        from xsearch.model.pretrained import xsearch_home

        # The URI's own parts name the cache, so that a person can tell which database a folder holds.
        return xsearch_home() / "objects" / self.uri.scheme / self.uri.bucket / self.uri.key / name

    # ---- one writer -------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Create one probe key twice with ``If-None-Match: *``; the second must be refused. A server that
        accepts both would let two writers' commits overwrite each other without an error."""
        bucket = (self.uri.scheme, self.uri.bucket)
        if bucket in _SAFE:
            return
        errors = object_errors()
        probe = f"{PROBE}/{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.put(probe, b"1", mode="create")
            try:
                self.put(probe, b"2", mode="create")
            except (errors.AlreadyExistsError, errors.PreconditionError):
                _SAFE.add(bucket)
                return
            raise StoreError(
                f"{self.uri}: the storage server ignores conditional writes (If-None-Match), so concurrent "
                "writers could silently overwrite each other's commits; refusing to write here (use a server "
                "that supports them: AWS S3, MinIO, SeaweedFS, Cloudflare R2...)"
            )
        finally:
            self.remove(probe)

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        self.check_writable()
        lease = WriterLease(self)
        lease.take()
        try:
            yield
        finally:
            lease.release()

    def index_objects(self, folder: str):
        from xsearch.store.index_objects import IndexObjects

        return self._indices.setdefault(folder, IndexObjects(self, folder))

    def table_copies(self):
        from xsearch.store.table_copies import TableCopies

        if "tables" not in self._indices:
            self._indices["tables"] = TableCopies(self)
        return self._indices["tables"]

    def alive(self, note: dict) -> bool:
        """A reader elsewhere cannot be asked whether it runs: its lease's age decides (it renews it)."""
        return True

    def digest(self, name: str) -> str:
        """sha256 of an object's bytes, read in ranges (for checks; never kept whole in memory)."""
        import obstore

        hasher = hashlib.sha256()
        for chunk in obstore.get(self.store, self._key(name)):
            hasher.update(chunk)
        return hasher.hexdigest()


class WriterLease:
    """The writer lock of an object-store database: ``writer.lock``, held while renewed."""

    def __init__(self, files: ObjectSideFiles):
        self.files = files
        self.e_tag: str | None = None
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}, since {_now():%Y-%m-%d %H:%M:%S} UTC"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.seconds = lease_seconds()

    def _note(self) -> bytes:
        expires = _now().timestamp() + self.seconds
        return json.dumps({"holder": self.holder, "expires": expires}).encode()

    def take(self) -> None:
        errors = object_errors()
        try:
            self.e_tag = self.files.put(WRITER_LOCK, self._note(), mode="create")
        except (errors.AlreadyExistsError, errors.PreconditionError):
            self._take_over()
        self._renewer = threading.Thread(target=self._renew, name="xsearch-writer-lease", daemon=True)
        self._renewer.start()

    def _take_over(self) -> None:
        errors = object_errors()
        found = self.files._get(WRITER_LOCK)
        if found is None:  # released between our two requests
            self.e_tag = self.files.put(WRITER_LOCK, self._note(), mode="create")
            return
        holder, expires = _read_note(found[0])
        if expires is not None and expires > _now().timestamp():
            until = dt.datetime.fromtimestamp(expires, dt.UTC)
            raise StoreError(
                f"{self.files.uri}: another xsearch is writing this database ({holder}); try again when it ends "
                f"(a killed run's lease lapses at {until:%H:%M:%S} UTC)"
            )
        try:
            self.e_tag = self.files.put(WRITER_LOCK, self._note(), mode={"e_tag": found[1]})
        except (errors.AlreadyExistsError, errors.PreconditionError):
            raise StoreError(f"{self.files.uri}: another xsearch took the writer lease first; try again") from None
        log.warning("%s: took over the writer lease of %s, which had lapsed", self.files.uri, holder)

    def _renew(self) -> None:
        errors = object_errors()
        while not self._stop.wait(self.seconds / 4):  # three chances to renew before it lapses
            try:
                self.e_tag = self.files.put(WRITER_LOCK, self._note(), mode={"e_tag": self.e_tag})
            except (errors.AlreadyExistsError, errors.PreconditionError):
                log.error("%s: the writer lease was taken over (this run stalled past its lease)", self.files.uri)
                return
            except Exception as exc:  # a network blip: the next renewal may succeed before the lease lapses
                log.warning("%s: could not renew the writer lease (%s)", self.files.uri, exc)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        found = self.files._get(WRITER_LOCK)
        if found is not None and found[1] == self.e_tag:  # still ours
            self.files.remove(WRITER_LOCK)


def lease_seconds() -> float:
    """How long a writer lease lasts unrenewed: ``LEASE_SECONDS``, or ``$XSEARCH_WRITER_LEASE_SECONDS`` (a
    shorter lease frees a killed run's database sooner, and must still outlast a network stall)."""
    try:
        return max(float(os.environ.get(LEASE_ENV) or LEASE_SECONDS), 2.0)
    except ValueError:
        raise StoreError(f"{LEASE_ENV}={os.environ[LEASE_ENV]!r}: expected a number of seconds") from None


def _read_note(data: bytes) -> tuple[str, float | None]:
    try:
        note = json.loads(data)
        return str(note.get("holder") or "another process"), float(note["expires"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return "another process", None  # unreadable: treated as lapsed


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
