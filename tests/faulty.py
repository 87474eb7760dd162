"""Decode functions that misbehave on purpose, for the supervised decode pool's tests (imported by workers)."""

from __future__ import annotations

import os
import signal
import time

from xsearch.decode.work import OUT_OF_MEMORY, Decoded, Prepared, Task, failed


def misbehave(task: Task) -> Prepared:
    """``crash*`` segfaults, ``hang*`` never returns, ``greedy*`` asks for 6 GB; anything else decodes."""
    name = os.path.basename(task.path)
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("hang"):
        time.sleep(3600)
    if name.startswith("greedy"):
        try:
            bytearray(6 << 30)
        except MemoryError:
            return Prepared(failed(task, OUT_OF_MEMORY))
        return Prepared(failed(task, "the memory cap did not hold"))
    return Prepared(Decoded(task.path, task.modality, sha256=name, task=task))


def hangs_on_late_moments(task) -> Prepared:
    """Decodes as the indexer does, with moments of 2 s; the chunk of moments from 100 s on never returns."""
    from xsearch.decode.work import prepare
    from xsearch.moments import MomentCfg, MomentTask

    if isinstance(task, MomentTask) and task.spans[0][0] >= 100:
        time.sleep(3600)
    return prepare(task, moments=MomentCfg(2))


class DiesOnArrival:
    """A work function that kills the worker process as it is handed over (unpickled), before the worker
    can say it is ready: what a broken installation or a machine out of processes looks like."""

    def __reduce__(self):
        return (os._exit, (3,))
