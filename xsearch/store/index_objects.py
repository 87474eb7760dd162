"""The index folders of a database in an object store, and their copies on this machine.

FAISS reads its files by memory mapping, which needs a local disk; the bucket is where they live. Each file
of an index folder is kept as an immutable object named by its sha256 (``index-objects/<sha256>``), and each
folder by a small pointer (``<folder>/<modality>.json``: file name -> sha256 and size) replaced by
compare-and-swap on its ETag. So a reader never sees half an index (it reads one pointer, and the objects it
names never change), and of two writers racing to replace a pointer, one fails instead of both winning.

A reader copies a folder to ``SideFiles.local_folder`` (under ``$XSEARCH_HOME``), fetching only files it
does not already hold, each checked against its sha256, and swaps the new copy in by renames (searches that
map the old copy keep it until they let go).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from xsearch.errors import SearchIndexError, StoreError

log = logging.getLogger(__name__)

OBJECTS = "index-objects"
PULLED = ".pulled.json"  # beside a local copy: the pointer it was copied from
ORPHAN_AGE = dt.timedelta(hours=1)  # unreferenced objects younger than this may be a racing reader's


class IndexObjects:
    """The indices of one folder (``faiss``, ``faiss-moments``) of the object-store database ``files``."""

    def __init__(self, files, folder: str):
        self.files = files
        self.folder = folder
        self.root = files.local_folder(folder)
        self._pointer_tags: dict[str, str | None] = {}  # the pointer ETag each local copy was made from

    def _pointer(self, modality: str) -> str:
        return f"{self.folder}/{modality}.json"

    def _record(self, modality: str) -> Path:
        return self.root / f"{modality}{PULLED}"

    def modalities(self) -> list[str]:
        """The modalities with an index in the bucket."""
        return sorted(Path(name).stem for name in self.files.names(self.folder, ".json"))

    # ---- reading ------------------------------------------------------------------------------------------

    def pull(self, modality: str) -> None:
        """Make the local copy of ``modality``'s index match the bucket (removed when the bucket has none)."""
        found = self.files._get(self._pointer(modality))
        directory = self.root / modality
        if found is None:
            shutil.rmtree(directory, ignore_errors=True)
            self._record(modality).unlink(missing_ok=True)
            self._pointer_tags[modality] = None
            return
        pointer, tag = json.loads(found[0]), found[1]
        self._pointer_tags[modality] = tag
        held = self._held(modality)
        if held == pointer and directory.is_dir():
            return
        fresh = directory.with_name(f"{modality}.pulling-{os.getpid()}")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        fetched = 0
        for name, entry in pointer["files"].items():
            kept = (held or {}).get("files", {}).get(name)
            if kept == entry and (directory / name).is_file():
                _link_or_copy(directory / name, fresh / name)
            else:
                self._download(entry, fresh / name)
                fetched += entry["size"]
        from xsearch.index.files import replace_directory

        replace_directory(directory, fresh)
        self._record(modality).write_text(json.dumps(pointer))
        log.info("%s index: copied from %s (%.1f MB fetched)", modality, self.files.uri, fetched / 1e6)

    def _held(self, modality: str) -> dict | None:
        try:
            return json.loads(self._record(modality).read_text())
        except (OSError, ValueError):
            return None

    def _download(self, entry: dict, target: Path) -> None:
        import obstore

        key = self.files._key(f"{OBJECTS}/{entry['sha256']}")
        hasher = hashlib.sha256()
        try:
            with open(target, "wb") as handle:
                for chunk in obstore.get(self.files.store, key):
                    hasher.update(chunk)
                    handle.write(chunk)
        except FileNotFoundError:
            raise SearchIndexError(f"{self.files.uri / OBJECTS / entry['sha256']}: missing (index replaced?)") from None
        if hasher.hexdigest() != entry["sha256"]:
            raise SearchIndexError(f"{self.files.uri / OBJECTS / entry['sha256']}: contents differ from its name")

    # ---- writing ------------------------------------------------------------------------------------------

    def push(self, modality: str) -> None:
        """Publish the local copy of ``modality``'s index: its files as objects, then its pointer, replaced
        only if nobody replaced it since this copy was pulled."""
        import obstore
        import obstore.exceptions as errors

        directory = self.root / modality
        entries = {}
        for path in sorted(p for p in directory.iterdir() if p.is_file()):
            with open(path, "rb") as handle:
                sha = hashlib.file_digest(handle, "sha256").hexdigest()
            entries[path.name] = {"sha256": sha, "size": path.stat().st_size}
            with contextlib.suppress(errors.AlreadyExistsError, errors.PreconditionError):  # the same bytes
                obstore.put(self.files.store, self.files._key(f"{OBJECTS}/{sha}"), path, mode="create")
        pointer = {"files": entries}
        tag = self._pointer_tags.get(modality)
        try:
            new = self.files.put(
                self._pointer(modality), json.dumps(pointer).encode(), mode={"e_tag": tag} if tag else "create"
            )
        except (errors.AlreadyExistsError, errors.PreconditionError):
            raise StoreError(
                f"{self.files.uri / self._pointer(modality)}: replaced by another writer meanwhile; this run's "
                "index was not published (the next run rebuilds it)"
            ) from None
        self._pointer_tags[modality] = new
        self._record(modality).write_text(json.dumps(pointer))

    def sweep(self) -> int:
        """Remove index objects no pointer names (left by replaced indices or a killed run), once older than
        ``ORPHAN_AGE``; writers only. The number removed."""
        import obstore

        named = set()
        for folder in {self.folder, *_other_folders(self.folder)}:
            for name in self.files.names(folder, ".json"):
                with contextlib.suppress(ValueError, TypeError):
                    named |= {e["sha256"] for e in json.loads(self.files.read_text(name) or "{}")["files"].values()}
        cutoff = dt.datetime.now(dt.UTC) - ORPHAN_AGE
        prefix = self.files._key(OBJECTS) + "/"
        removed = 0
        for batch in obstore.list(self.files.store, prefix=prefix):
            for meta in batch:
                if meta["path"][len(prefix) :] not in named and meta["last_modified"] < cutoff:
                    obstore.delete(self.files.store, meta["path"])
                    removed += 1
        return removed


def _other_folders(folder: str) -> list[str]:
    from xsearch.store.database import INDEX_FOLDERS

    return [f for f in INDEX_FOLDERS.values() if f != folder]


def _link_or_copy(source: Path, target: Path) -> None:
    """A file the new copy shares with the old: a hard link (no bytes copied), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
