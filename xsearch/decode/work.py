"""The unit of work of a decode worker: one planned file (``Task``) -> ``Prepared`` (the file ``Decoded``,
and the follow-up tasks of the same file beside it).

The decoding itself is ``xsearch.decode.decode``, the one file -> model input path that ``xsearch embed``
and query inputs use too; here it is asked to hash the bytes it decodes and to skip a file whose bytes
the store already has. ``prepare`` never raises for a bad file (``xsearch.decode.pool`` runs it in
supervised processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from xsearch.decode.files import OUT_OF_MEMORY, Decoded, decode, decode_query_file
from xsearch.modalities import Modality
from xsearch.moments import MomentCfg, MomentTask, decode_chunk, plan
from xsearch.preprocess import PreprocessCfg

__all__ = ["OUT_OF_MEMORY", "Decoded", "Prepared", "Task", "failed", "prepare", "prepare_query"]


@dataclass(frozen=True)
class Task:
    """A file the scan found, the modality it will be indexed as, and its size and mtime. The plan sets
    ``known_sha256`` when the store has the file under another size or mtime (same bytes: not re-embedded)."""

    path: str
    modality: Modality
    size: int
    mtime: float
    known_sha256: str | None = None
    known: bool = False  # the store has a row for this path (re-embedding it is an update, not a new file)
    for_moments: bool = False  # unchanged, embedded again only for the moments it lacks

    @property
    def change(self) -> str:
        """What committing this file's row is, for the run's counts: ``new``, ``updated`` or ``moments``."""
        return "moments" if self.for_moments else "updated" if self.known else "new"


class Prepared(NamedTuple):
    """A worker's answer for one task: the file ``decoded``, and ``follow_up``: more tasks of the same file
    (a long file's moment chunks), which the pool runs next, before other files."""

    decoded: Decoded
    follow_up: tuple = ()


def prepare(
    task: Task | MomentTask,
    cfg: PreprocessCfg | None = None,
    defer_jpeg: bool = False,
    moments: MomentCfg | None = None,
) -> Prepared:
    """Hash, check and decode ``task``'s file as its planned modality (with a preview for results pages);
    with ``defer_jpeg``, a JPEG's bytes are left for the encoder's batched decode on its GPU. With
    ``moments``, a decoded audio or video file comes with the chunks of its segments as follow-up work
    (``xsearch.moments``), and a ``MomentTask`` is one such chunk."""
    if isinstance(task, MomentTask):
        return Prepared(decode_chunk(task, cfg or PreprocessCfg()))
    decoded = decode(
        task.path,
        task.modality,
        cfg,
        thumbnail=True,
        digest=True,
        known_sha256=task.known_sha256,
        defer_jpeg=defer_jpeg,
    )
    decoded.task = task
    duration = decoded.metadata.get("duration")
    if moments is not None and decoded.ok and decoded.modality.spec.has_moments and duration:
        return Prepared(decoded, tuple(plan(task.path, decoded.modality, task.size, task.mtime, duration, moments)))
    return Prepared(decoded)


def prepare_query(task: Task, cfg: PreprocessCfg | None = None) -> Prepared:
    """A query input decoded in a worker, under the indexer's per-file limits (with its preview)."""
    decoded = decode_query_file(task.path, task.modality, cfg)
    decoded.task = task
    return Prepared(decoded)


def failed(task: Task, reason: str, stage: str = "decode") -> Decoded:
    """What stands for a task whose worker could not report it (crashed, timed out)."""
    return Decoded(task.path, task.modality, task=task).fail(stage, reason)
