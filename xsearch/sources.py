"""Where media bytes come from: a local file or an object (``s3://bucket/key``), through one interface.

Every decoder reads through ``open_media``: a local file is opened as it always was; an object is read in
ranges (``obstore``'s buffered reader), so a decoder that seeks (a video's index at its end, an hour of
sound read a chunk at a time) fetches what it reads, never the whole object into memory.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from xsearch.objects import ObjectUri, is_object_uri, store_of

READ_AHEAD = 4 << 20  # bytes per range request: object stores answer in ~10-100 ms whatever the size
LISTINGS = 16  # folders listed at once


@dataclass(frozen=True)
class MediaInfo:
    """What a file or object is now: its size, modification time, and what tells a new version apart."""

    size: int
    mtime: float
    identity: tuple


def absolute(name: str | os.PathLike) -> str:
    """A media location as stored: an object URI as given, a local path absolute with links resolved."""
    text = os.fspath(name)
    return text.rstrip("/") if is_object_uri(text) else os.path.realpath(os.path.expanduser(text))


def open_media(name: str | os.PathLike) -> io.BufferedIOBase:
    """The bytes of ``name`` as a binary file object (seekable; objects are read by range)."""
    text = os.fspath(name)
    if not is_object_uri(text):
        return open(text, "rb")
    import obstore

    uri = ObjectUri.parse(text)
    try:
        return _ObjectFile(obstore.open_reader(store_of(uri), uri.key, buffer_size=READ_AHEAD))
    except FileNotFoundError:
        raise FileNotFoundError(2, "No such file or directory", text) from None


def media_info(name: str | os.PathLike) -> MediaInfo | None:
    """Size, mtime and identity of a regular file or an object; ``None`` when there is none."""
    text = os.fspath(name)
    if is_object_uri(text):
        import obstore

        uri = ObjectUri.parse(text)
        try:
            meta = obstore.head(store_of(uri), uri.key)
        except FileNotFoundError:
            return None
        return MediaInfo(meta["size"], meta["last_modified"].timestamp(), (meta["size"], meta.get("e_tag")))
    try:
        info = os.stat(text)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return MediaInfo(info.st_size, info.st_mtime, (info.st_size, info.st_mtime_ns, info.st_ino))


def media_size(name: str | os.PathLike) -> int:
    """The size of a file or object, or the ``OSError`` a reader would get (not found, a directory...)."""
    text = os.fspath(name)
    if not is_object_uri(text):
        if os.path.isdir(text):
            raise IsADirectoryError(21, "Is a directory", text)
        return os.path.getsize(text)
    info = media_info(text)
    if info is None:
        raise FileNotFoundError(2, "No such file or directory", text)
    return info.size


def indexed_descriptor(uri: str, size: int, mtime: float) -> int | None:
    """A descriptor of the local file ``uri`` if it is still the file indexed: a regular file, not a symbolic
    link, of the recorded ``size`` and ``mtime`` (``None`` otherwise). Reading through it, not the name, means
    a file swapped after the check is not what is read; a pipe or device in its place is never read."""
    try:
        handle = os.open(uri, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:  # gone, unreadable, or a link (ELOOP)
        return None
    info = os.fstat(handle)
    if not stat.S_ISREG(info.st_mode) or info.st_size != size or info.st_mtime != mtime:
        os.close(handle)
        return None
    return handle


def open_indexed(uri: str, size: int, mtime: float) -> io.BufferedIOBase | None:
    """The bytes of an indexed file or object if it is still the one indexed (``indexed_descriptor``; an
    object of the recorded size and modification time), else ``None``."""
    if is_object_uri(uri):
        info = media_info(uri)
        return open_media(uri) if info is not None and (info.size, info.mtime) == (size, mtime) else None
    handle = indexed_descriptor(uri, size, mtime)
    return None if handle is None else os.fdopen(handle, "rb")


def list_objects(prefix: str) -> Iterator[tuple[str, int, float]]:
    """``(uri, size, mtime)`` of every object under ``prefix`` (a folder's worth: ``prefix/``), sorted by
    key; a prefix that names one object yields that object.

    A listing returns 1,000 keys a request, one request after another; the folders under ``prefix`` are
    listed side by side instead (a collection of folders lists in the time of its largest one)."""
    import obstore

    uri = ObjectUri.parse(prefix)
    store = store_of(uri)
    base = f"{uri.scheme}://{uri.bucket}/"
    top = obstore.list_with_delimiter(store, f"{uri.key}/" if uri.key else None)
    found = [(meta["path"], meta["size"], meta["last_modified"].timestamp()) for meta in top["objects"]]

    def folder(name: str) -> list[tuple[str, int, float]]:
        return [
            (meta["path"], meta["size"], meta["last_modified"].timestamp())
            for batch in obstore.list(store, prefix=name.rstrip("/") + "/")
            for meta in batch
        ]

    with ThreadPoolExecutor(LISTINGS) as pool:
        for listed in pool.map(folder, top["common_prefixes"]):
            found += listed
    for key, size, mtime in sorted(found):
        yield base + key, size, mtime
    if not found and uri.key:
        info = media_info(prefix)
        if info is not None:
            yield str(uri), info.size, info.mtime


def media_exists(name: str) -> bool:
    """Whether a file, folder, object or prefix of objects is there (a folder root's check)."""
    if not is_object_uri(name):
        return os.path.lexists(name)
    import obstore

    uri = ObjectUri.parse(name)
    for batch in obstore.list(store_of(uri), prefix=f"{uri.key}/" if uri.key else None, chunk_size=1):
        if batch:  # one key under the prefix is enough: the scan lists them all
            return True
    return media_info(name) is not None


class _ObjectFile(io.RawIOBase):
    """``obstore``'s reader as a standard binary file (what PIL, PyAV and numpy accept)."""

    def __init__(self, reader):
        self._reader = reader

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._reader.read(len(buffer))
        size = len(data)
        memoryview(buffer).cast("B")[:size] = memoryview(data).cast("B") if size else b""
        return size

    def read(self, size: int = -1) -> bytes:
        return bytes(self._reader.read(size if size is not None and size >= 0 else None))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._reader.seek(offset, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()
