"""The decode stage, run in worker processes: one file -> hash, content check, model input and metadata.

``prepare`` never raises for a bad file: the outcome carries the reason, so one broken file costs one
``errors`` row and nothing else. ``xsearch.indexer.decode_pool`` runs it in supervised processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from xsearch.errors import DecodeError, NoStreamError
from xsearch.modalities import Modality, modality_from_family
from xsearch.preprocess import PreprocessCfg, preprocess_with_metadata
from xsearch.sniff import HEAD_BYTES, content_mismatch, sniff

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
OUT_OF_MEMORY = "out of memory while decoding"  # the decode pool words it with its limit


@dataclass(frozen=True)
class Task:
    """A file to (re)index. ``known_sha256`` is set when the store has the file under other size/mtime."""

    path: str
    modality: Modality
    size: int
    mtime: float
    known_sha256: str | None = None


@dataclass
class Outcome:
    """What a worker made of a task: model input, or ``unchanged``, or an error with its stage."""

    task: Task
    modality: Modality  # the task's, unless the content is its fallback's (a video file with only sound)
    sha256: str | None = None
    tensor: torch.Tensor | None = None
    metadata: dict = field(default_factory=dict)
    unchanged: bool = False
    error: str | None = None
    stage: str | None = None  # read / decode / encode
    vector: np.ndarray | None = None  # the embedding, once encoded
    node: str | None = None  # the cluster node that encoded it (``xsearch index --ray``)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.unchanged


def _read_head_and_hash(path: str) -> tuple[bytes, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        digest.update(head)
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return head, digest.hexdigest()


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns, info.st_ino


def prepare(task: Task, cfg: PreprocessCfg | None = None, attempts: int = 3) -> Outcome:
    """Hash, check and decode ``task``'s file. The hash and the model input must come from the same bytes:
    a file replaced or rewritten while it was read (size, mtime or inode moved) is read again."""
    for _ in range(attempts):
        before = _identity(task.path)
        outcome = _prepare_once(task, cfg if cfg is not None else PreprocessCfg())
        if before is None or outcome.stage == "read" or _identity(task.path) == before:
            return outcome
        log.info("%s changed while it was read; reading it again", task.path)
    return _failed(Outcome(task, task.modality), "read", "the file kept changing while it was read (retried next run)")


def _prepare_once(task: Task, cfg: PreprocessCfg) -> Outcome:
    outcome = Outcome(task, task.modality)
    try:
        head, outcome.sha256 = _read_head_and_hash(task.path)
    except FileNotFoundError:
        return _failed(outcome, "read", "file not found (deleted or moved after the scan?)")
    except OSError as exc:
        return _failed(outcome, "read", DecodeError.from_os_error(task.path, exc).reason)
    if not head:
        return _failed(outcome, "read", "file is empty (0 bytes)")
    if task.known_sha256 is not None and task.known_sha256 == outcome.sha256:
        outcome.unchanged = True  # touched or copied, same bytes: keep the stored embedding
        return outcome
    found = sniff(head)
    fallback = outcome.modality.spec.fallback
    if fallback is not None and found is not None and modality_from_family(found.family) is fallback:
        outcome.modality = fallback  # e.g. an .mp4/.mkv that holds only sound is indexed as audio
    mismatch = content_mismatch(outcome.modality, head)
    if mismatch:
        return _failed(outcome, "decode", mismatch)
    try:
        try:
            prepared = preprocess_with_metadata(task.path, outcome.modality, cfg)
        except NoStreamError:
            fallback = outcome.modality.spec.fallback
            if fallback is None:
                raise
            outcome.modality = fallback  # a container without the stream asked for: try its fallback's
            prepared = preprocess_with_metadata(task.path, outcome.modality, cfg)
    except DecodeError as exc:
        return _failed(outcome, "decode", OUT_OF_MEMORY if _is_allocation_failure(exc) else exc.reason)
    except MemoryError:
        return _failed(outcome, "decode", OUT_OF_MEMORY)
    except Exception as exc:  # a decoder bug on a hostile file must cost one file, not the run
        if _is_allocation_failure(exc):
            return _failed(outcome, "decode", OUT_OF_MEMORY)
        log.debug("unexpected error decoding %s", task.path, exc_info=True)
        return _failed(outcome, "decode", f"could not decode ({type(exc).__name__}: {str(exc)[:200]})")
    outcome.tensor, outcome.metadata = prepared.tensor, prepared.metadata
    return outcome


def _is_allocation_failure(exc: Exception) -> bool:
    """torch and FFmpeg report a refused allocation in their own words, not as ``MemoryError``."""
    text = str(exc)
    return "can't allocate memory" in text or "Cannot allocate memory" in text or getattr(exc, "errno", None) == 12


def _failed(outcome: Outcome, stage: str, reason: str) -> Outcome:
    outcome.stage, outcome.error = stage, reason
    return outcome
