"""Decode processes die with the run that started them.

The indexer's workers come from a fork server. If the run is killed (``kill -9``, an OOM kill), the fork
server sees the end of a pipe only the run held and exits; nothing would tell its workers, and they would
live on holding memory. Linux can: a process that asks ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` is killed when
its parent dies (strictly, the thread that forked it: the fork server's only thread). Each worker asks
as it starts. Elsewhere than Linux this is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(*_ignored) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only; best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
