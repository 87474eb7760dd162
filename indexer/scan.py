"""The scan stage: folders -> the files to index, each with the modality it is indexed as.

How a file's modality is decided, first rule that applies (the rules' data is the modality table,
``xsearch.modalities``):

1. an assignment (``--as MODALITY=PATH``): every file at or under ``PATH`` is ``MODALITY`` (the way to
   index depth, thermal and IMU collections, whose files look like ordinary images and arrays);
2. naming convention, for the modalities whose entry has ``convention``: a folder called ``depth``,
   ``thermal`` or ``imu`` anywhere in the path, or a file stem ending in ``_depth`` (``room1_depth.png``);
3. the extension (each entry's ``extensions``: image, video, audio, ``.txt``);
4. a file without any extension whose first bytes are of a family an entry is ``sniffed_from``.

Everything else is ignored (counted, not an error). Nothing here reads whole files: the workers hash and
decode, and check that the content matches the modality (``xsearch.sniff``).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from xsearch.decode.work import Task
from xsearch.modalities import Modality
from xsearch.objects import is_object_uri
from xsearch.options import ScanOptions
from xsearch.paths import is_hidden, is_under, modality_of_path
from xsearch.sources import list_objects

__all__ = ["Rejected", "ScanOptions", "ScanStats", "Scanner", "Task", "decide_modality", "is_under", "printable"]


@dataclass(frozen=True)
class Rejected:
    """A path the scan could not use, with the reason (becomes an ``errors`` row)."""

    uri: str
    message: str
    modality: Modality | None = None


@dataclass
class ScanStats:
    files: int = 0
    ignored: int = 0
    excluded: int = 0
    hidden: int = 0  # files and folders named with a leading dot, below the folders given
    matched: Counter = field(default_factory=Counter)  # exclude pattern -> files and folders it excluded
    unlisted_dirs: list[str] = field(default_factory=list)  # folders that could not be listed: never pruned


def _folder_key(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None  # not there (yet): nothing to skip
    return info.st_dev, info.st_ino


def _is_name_pattern(pattern: str) -> bool:
    return os.sep not in pattern and "/" not in pattern


def printable(path: str) -> str:
    """A path as text that can be stored and shown, even when the name is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _valid_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def decide_modality(path: str, options: ScanOptions) -> Modality | None:
    """The modality ``path`` is indexed as under the rules above, or ``None`` to ignore it."""
    return modality_of_path(path, options.assigned)


class Scanner:
    """Walks roots depth-first, yielding ``Task`` and ``Rejected`` items; counts go to ``stats``."""

    def __init__(self, options: ScanOptions, skip: tuple[str, ...] = ()):
        self.options = options
        self.skip = {_folder_key(p) for p in skip} - {None}  # folders never indexed: the database's own
        self.stats = ScanStats()
        self._seen_dirs: set[tuple[int, int]] = set()

    def _excluded(self, path: str) -> bool:
        name = os.path.basename(path)
        for pattern in self.options.exclude:
            if fnmatch.fnmatch(name if _is_name_pattern(pattern) else path, pattern):
                self.stats.matched[pattern] += 1
                return True
        return False

    def unmatched(self) -> list[str]:
        """The exclude patterns that excluded nothing in this scan (a typo, or a folder given relatively)."""
        return [p for p in self.options.exclude if not self.stats.matched[p]]

    def scan(self, roots: list[str]) -> Iterator[Task | Rejected]:
        for root in roots:
            if is_object_uri(root):
                yield from self._objects(root)
                continue
            root = os.path.abspath(root)
            if not os.path.lexists(root):
                yield Rejected(printable(root), "no such file or folder")
                continue
            if os.path.isdir(root):
                yield from self._walk(root)
            else:
                yield from self._file(root, top_level=True)

    def _objects(self, prefix: str) -> Iterator[Task | Rejected]:
        """The objects under ``prefix`` (``s3://bucket/folder``), as the files of a folder: an object store
        has no links, pipes or unlistable folders, so only the naming rules apply."""
        found = False
        for uri, size, mtime in list_objects(prefix):
            found = True
            if self._excluded(uri):
                self.stats.excluded += 1
            elif not self.options.hidden and is_hidden(uri, below=prefix):
                self.stats.hidden += 1
            elif not uri.endswith("/"):  # a "folder" marker some tools write
                yield from self._accepted(uri, size, mtime)
        if not found:
            yield Rejected(prefix, "no such object, and no objects under it")

    def _walk(self, directory: str) -> Iterator[Task | Rejected]:
        try:
            info = os.stat(directory)
        except OSError as exc:
            yield Rejected(printable(directory), f"cannot open folder ({exc.strerror or exc})")
            return
        key = (info.st_dev, info.st_ino)
        if key in self.skip:
            return  # the database itself, kept inside the folder it indexes
        if key in self._seen_dirs:
            yield Rejected(printable(directory), "symbolic link loop: this folder was already scanned (skipped)")
            return
        self._seen_dirs.add(key)
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.stats.unlisted_dirs.append(directory)
            yield Rejected(printable(directory), f"cannot list folder ({exc.strerror or exc})")
            return
        for entry in entries:
            if self._excluded(entry.path):
                self.stats.excluded += 1
                continue
            if entry.name.startswith(".") and not self.options.hidden:
                self.stats.hidden += 1  # .cache, .thumbnails, .git, macOS's ._photo.jpg: not the collection
                continue
            if entry.is_symlink() and not self.options.follow_symlinks:
                self.stats.ignored += 1
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False  # a link loop: ``_file`` stats it again and names the problem
            if is_dir:
                yield from self._walk(entry.path)
            else:
                yield from self._file(entry.path)

    def _file(self, path: str, top_level: bool = False) -> Iterator[Task | Rejected]:
        try:
            info = os.stat(path)  # follows a symlink: a loop or a dangling link fails here
        except OSError as exc:
            if os.path.islink(path):
                reason = "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
            else:
                reason = exc.strerror or str(exc)
            yield Rejected(printable(path), reason)
            return
        if not stat.S_ISREG(info.st_mode):  # a named pipe or device would block or never end
            yield Rejected(printable(path), "not a regular file (a named pipe, socket or device)")
            return
        yield from self._accepted(path, info.st_size, info.st_mtime, top_level)

    def _accepted(self, path: str, size: int, mtime: float, top_level: bool = False) -> Iterator[Task | Rejected]:
        """A regular file (or object) found: its task, or why it is not indexed."""
        modality = decide_modality(path, self.options)
        if modality is None:
            self.stats.ignored += 1
            if top_level:
                yield Rejected(printable(path), "unknown file type (assign it a modality to index it)")
            return
        if self.options.modalities is not None and modality not in self.options.modalities:
            self.stats.excluded += 1
            return
        if not _valid_utf8(path):
            yield Rejected(printable(path), "file name is not valid UTF-8; rename the file to index it", modality)
            return
        self.stats.files += 1
        yield Task(path, modality, size, mtime)
