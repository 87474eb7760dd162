"""What an indexing run did: ``RunReport`` (the ``--json`` output) and its failures, with the seconds of each
phase, so that a slow run explains itself."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

log = logging.getLogger("xsearch.indexer.pipeline")  # the run's own lines, under the pipeline's name


# Phases of a run that are not embedding: a rate of files per second leaves them out, so that a run of 3 files
# does not read "0.1 files/s" for the seconds its compaction and index files took.
_BOOKKEEPING = ("writer lock", "open database", "scan", "plan", "capture tags", "gone files", "compaction", "indices")


@dataclass
class Failure:
    uri: str
    stage: str
    message: str


@dataclass
class RunReport:
    """What a run did; ``as_json()`` is the ``--json`` output."""

    db: str
    model_id: str
    scanned: int = 0
    indexed: int = 0  # new files embedded
    updated: int = 0  # known files whose content changed, re-embedded
    refreshed: int = 0  # unchanged files whose capture tags were read again (--refresh-metadata)
    moments_added: int = 0  # unchanged files embedded again for the moments they lacked
    moments_not_retried: int = 0  # unchanged files whose moments failed before (tried again with --retry)
    unchanged: int = 0  # skipped (same size and mtime, or same bytes)
    failed: int = 0
    stale_removed: int = 0  # rows of known files that now fail: removed, so they stop answering searches
    pruned: int = 0
    prune_skipped: list[str] = field(default_factory=list)  # roots not pruned, and why
    ignored: int = 0  # not media, or symlinks when not following them
    hidden: int = 0  # named with a leading dot (taken with --hidden)
    excluded: int = 0  # files and folders left out by --exclude / --modalities
    unmatched_excludes: list[str] = field(default_factory=list)  # --exclude patterns that excluded nothing
    gone: int = 0  # indexed files under the roots that are gone from disk, kept because --prune was not given
    seconds: float = 0.0
    load_seconds: float = 0.0  # loading the model, before the run (set by ``Collection.index``)
    embed_seconds: float = 0.0
    by_modality: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    indexes: dict[str, dict] = field(default_factory=dict)  # the indices updated (the JSON key scripts read)
    interrupted: bool = False
    nodes: list[str] = field(default_factory=list)  # cluster nodes that encoded files (--ray)
    moments: int = 0  # moments (segments of audio and video) written
    moment_indexes: dict[str, dict] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase: where a slow run spent its time

    @property
    def embedded(self) -> int:
        """Files embedded in this run: new, updated, and unchanged ones that gained moments."""
        return self.indexed + self.updated + self.moments_added

    @property
    def files_per_second(self) -> float | None:
        """Files embedded per second of the embedding phases; ``None`` when none was (no rate to speak of)."""
        if not self.embedded:
            return None
        busy = self.seconds - sum(self.phases.get(name, 0.0) for name in _BOOKKEEPING)
        return self.embedded / max(busy, 1e-6)

    def as_json(self) -> dict:
        out = {"new": self.indexed, **asdict(self)}  # "new" as the summary line says; "indexed" kept for scripts
        rate = self.files_per_second
        out["files_per_second"] = None if rate is None else round(rate, 2)
        out["seconds"] = round(self.seconds, 3)
        out["embed_seconds"] = round(self.embed_seconds, 3)
        out["load_seconds"] = round(self.load_seconds, 3)
        out["phases"] = {name: round(seconds, 3) for name, seconds in self.phases.items()}
        return out

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase of the run into ``phases`` and say so at ``-v`` (a slow run explains itself)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.phases[name] = self.phases.get(name, 0.0) + seconds
            log.info("%s: %.2f s", name, seconds)
