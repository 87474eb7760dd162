"""The files a database keeps beside its Lance tables, behind one object: the id high-water mark
(``next_id``), the moment settings (``moments.json``), the readers' leases (``readers/*.json``), the writer
lock and the folders of the FAISS indices.

``SideFiles`` does everything through a ``pyarrow.fs.FileSystem`` taken from the database's location, so
reading, writing, listing and removing are the same code on any filesystem pyarrow reaches. What differs
between backends is three things, and a new backend is one subclass that provides them:

- ``writer_lock``: one writer at a time (on a local disk, a ``flock`` the kernel drops when its process
  dies, so a killed run never leaves a stale lock);
- ``alive``: whether the reader that wrote a lease may still run (on a local disk, its pid on this host);
- ``local_folder``: a folder on this machine's disk for files read by memory mapping (FAISS indices).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from xsearch.errors import StoreError
from xsearch.objects import ObjectUri, location
from xsearch.store.lance_errors import storage_problem

WRITER_LOCK = "writer.lock"


class SideFiles:
    """The side files of the database at ``root`` on ``fs`` (names are relative, ``/``-separated)."""

    recheck_seconds = 0.0  # how long a reader may go on with a snapshot before it checks for commits

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs = fs
        self.root = str(root).rstrip("/") or "/"

    @staticmethod
    def at(where) -> SideFiles:
        """The side files of the database at ``where``: a local path, or an object URI (``s3://...``)."""
        place = location(where)
        if isinstance(place, ObjectUri):
            from xsearch.store.object_side_files import ObjectSideFiles

            return ObjectSideFiles(place)
        return LocalSideFiles(place)

    def where(self, name: str = "") -> Path:
        """Where ``name`` is, for messages."""
        return Path(self._full(name))

    def _full(self, name: str) -> str:
        return str(PurePosixPath(self.root, name)) if name else self.root

    # ---- the same on every filesystem -----------------------------------------------------------------

    def read_text(self, name: str) -> str | None:
        """The file's text, or ``None`` when there is no such file."""
        data = self.read_bytes(name)
        return None if data is None else data.decode()

    def read_bytes(self, name: str) -> bytes | None:
        """The file's bytes, or ``None`` when there is no such file."""
        try:
            with self.fs.open_input_stream(self._full(name)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        """Replace the file's text at once: readers see the old text or the new, never a part."""
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace the file's bytes at once: readers see the old bytes or the new, never a part."""
        tmp = self._full(name + ".tmp")
        with self.fs.open_output_stream(tmp) as stream:
            stream.write(data)
        self.fs.move(tmp, self._full(name))

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self._full(name)).type != pafs.FileType.NotFound

    def is_folder(self, name: str = "") -> bool:
        return self.fs.get_file_info(self._full(name)).type == pafs.FileType.Directory

    def names(self, folder: str, suffix: str = "") -> list[str]:
        """The files in ``folder`` ending in ``suffix``, as names relative to the database (none when the
        folder is missing)."""
        selector = pafs.FileSelector(self._full(folder), allow_not_found=True)
        found = [info for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File]
        return [f"{folder}/{info.base_name}" for info in found if info.base_name.endswith(suffix)]

    def total_bytes(self) -> int:
        """The size of everything the database holds (tables and side files)."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        return sum(info.size for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File)

    def make_folder(self, name: str) -> None:
        self.fs.create_dir(self._full(name), recursive=True)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._full(name))

    # ---- what each backend provides -----------------------------------------------------------------

    def writer_lock(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def alive(self, note: dict) -> bool:
        raise NotImplementedError

    def local_folder(self, name: str) -> Path:
        raise NotImplementedError

    def index_objects(self, folder: str):
        """Where the index folder ``folder`` is published when its files live elsewhere than
        ``local_folder`` (``IndexObjects``), or ``None``: the local folder is the index."""
        return None

    def table_copies(self):
        """Where readers copy the tables to read them locally (``TableCopies``), or ``None``: they are local."""
        return None

    def check_writable(self) -> None:
        """Refuse, before anything is written, a store on which writers could lose each other's commits."""


class LocalSideFiles(SideFiles):
    """Side files on this machine's disk."""

    def __init__(self, path: Path):
        super().__init__(pafs.LocalFileSystem(), str(Path(path).absolute()))
        self.path = Path(path)

    def where(self, name: str = "") -> Path:
        return self.path / name if name else self.path

    def local_folder(self, name: str) -> Path:
        return self.path / name

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """An advisory ``flock`` on ``<db>/writer.lock``, which holds the owner's pid, host and start time
        for the message a second writer gets. The kernel drops the lock when its process dies."""
        path, lock = self.path, self.path / WRITER_LOCK
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+")
        except OSError as exc:  # a read-only database, a lock that is a folder: one line, not a traceback
            problem = storage_problem(lock, exc)
            raise problem or StoreError(f"{lock}: cannot take the writer lock ({exc.strerror or exc})") from None
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
            since = dt.datetime.now(dt.UTC)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since:%Y-%m-%d %H:%M:%S} UTC")
            handle.flush()
            yield
        finally:
            handle.close()  # releases the lock

    def alive(self, note: dict) -> bool:
        """Whether the reader that wrote ``note`` may still run (on another host: assume so until its lease
        expires)."""
        if note.get("host") != socket.gethostname():
            return True
        try:
            os.kill(int(note["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, KeyError, TypeError, OverflowError):
            return True
        return True
