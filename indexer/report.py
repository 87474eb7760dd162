"""What an indexing run did: ``RunReport`` (the ``--json`` output) and its failures, with the seconds of each
phase, so that a slow run explains itself."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

log = logging.getLogger("xsearch.indexer.pipeline")  # the run's own lines, under the pipeline's name


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
    unchanged: int = 0  # skipped (same size and mtime, or same bytes)
    failed: int = 0
    stale_removed: int = 0  # rows of known files that now fail: removed, so they stop answering searches
    pruned: int = 0
    prune_skipped: list[str] = field(default_factory=list)  # roots not pruned, and why
    ignored: int = 0  # not media, or symlinks when not following them
    excluded: int = 0  # files and folders left out by --exclude / --modalities
    unmatched_excludes: list[str] = field(default_factory=list)  # --exclude patterns that excluded nothing
    gone: int = 0  # indexed files under the roots that are gone from disk, kept because --prune was not given
    seconds: float = 0.0
    load_seconds: float = 0.0  # loading the model, before the run (set by ``Collection.index``)
    embed_seconds: float = 0.0
    by_modality: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    indexes: dict[str, dict] = field(default_factory=dict)
    interrupted: bool = False
    nodes: list[str] = field(default_factory=list)  # cluster nodes that encoded files (--ray)
    moments: int = 0  # moments (segments of audio and video) written
    moment_indexes: dict[str, dict] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase: where a slow run spent its time

    @property
    def files_per_second(self) -> float:
        done = self.indexed + self.updated
        return done / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict:
        out = asdict(self)
        out["files_per_second"] = round(self.files_per_second, 2)
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
