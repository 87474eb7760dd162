"""Readers' copies of an object-store database's tables, on this machine's disk.

A search reads a few rows by position (the query item, the hits): from a bucket that is a handful of range
requests of 10-100 ms each, many times a search's own cost. Lance never rewrites a file (a commit adds a
manifest and new data or deletion files), so a version's files can be copied once and read locally for as
long as they exist: a reader pinned at a version fetches its manifest and the files it names that it does
not hold yet (after a commit: only the new ones), and opens the copy at that version. Checks for newer
commits still go to the bucket (``TableView``'s ``origin``).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

U64_MAX = 2**64 - 1  # Lance's second manifest naming scheme numbers versions down from here
STALE_SECONDS = 3600  # copied files no version in use names are removed once this old (searches are done)


class TableCopies:
    """The local copies of the tables of the object-store database ``files``."""

    def __init__(self, files):
        self.files = files
        self.root = files.local_folder("tables")

    def dataset(self, name: str, remote):
        """``remote`` (a Lance dataset of table ``name``, at a version) as a local copy at that version."""
        import lance

        local = self.root / f"{name}.lance"
        names = [self._manifest(name, remote.version)]
        for fragment in remote.get_fragments():
            names += [f"data/{data.path}" for data in fragment.data_files()]
            if fragment.deletion_file():
                names.append(fragment.deletion_file())
        missing = [n for n in names if not (local / n).is_file()]
        if missing:
            with ThreadPoolExecutor(8) as pool:
                fetched = sum(pool.map(lambda n: self._fetch(f"{name}.lance/{n}", local / n), missing))
            log.info("%s: copied %d files (%.1f MB) of version %d", name, len(missing), fetched / 1e6, remote.version)
            self._sweep(local, set(names))
        return lance.dataset(str(local), version=remote.version)

    def _manifest(self, name: str, version: int) -> str:
        """The manifest's file name under either of Lance's naming schemes."""
        import obstore

        descending = f"_versions/{U64_MAX - version}.manifest"
        try:
            obstore.head(self.files.store, self.files._key(f"{name}.lance/{descending}"))
            return descending
        except FileNotFoundError:
            return f"_versions/{version}.manifest"

    def _fetch(self, key: str, target: Path) -> int:
        """Copy one object to ``target`` (whole or not at all); its size."""
        import obstore

        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f"{target.name}.{os.getpid()}.part")
        size = 0
        with open(part, "wb") as handle:
            for chunk in obstore.get(self.files.store, self.files._key(key)):
                handle.write(chunk)
                size += len(chunk)
        os.replace(part, target)
        return size

    def _sweep(self, local: Path, named: set[str]) -> None:
        """Remove copied files that this version does not name and nobody has used for a while."""
        cutoff = time.time() - STALE_SECONDS
        for folder in ("data", "_deletions", "_versions"):
            for path in (local / folder).glob("*") if (local / folder).is_dir() else []:
                relative = f"{folder}/{path.name}"
                if relative not in named and path.stat().st_atime < cutoff and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
