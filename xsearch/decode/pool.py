"""Supervised decode processes: a decoder that crashes, hangs or runs out of memory costs one file.

``torch``'s ``DataLoader`` ends the whole run when a worker dies, and cannot stop a worker stuck in a
decoder. Here each worker is watched by the indexer's process:

- a worker that dies (a segfault in a codec, the kernel's OOM killer) turns the file it held into an error
  row ("the decoder crashed (SIGSEGV)") and is replaced; the files queued behind it are sent elsewhere;
- a file that takes longer than ``DecodeLimits.seconds`` gets its worker killed and an error row
  ("timed out after N s");
- each worker's address space is capped (``RLIMIT_AS``) at what it holds when it starts plus
  ``DecodeLimits.memory_bytes``, so a hostile file fails that file's allocation ("needs more than N GB")
  instead of the whole machine's memory.

Workers come from a fork server (lance and the encoder's threads are not fork-safe) that preloads the
decode modules, so a replacement starts in milliseconds; both die with the run (``xsearch.decode.lifeline``).
Workers need xsearch's modules and nothing of the caller's: the fork server starts without the current
folder on its path (a folder named ``xsearch`` there is not the package), and a worker is started without
the caller's main script, which spawn-style start methods otherwise run again in every child (a script
without an ``if __name__ == "__main__":`` guard would start indexing again in each worker).
Each worker holds at most ``_DEPTH`` files: one decoding and one queued behind it, so it never waits for
the main process, which is busy encoding, to hand it the next.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import sys
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait

from xsearch.decode.lifeline import die_with_parent
from xsearch.decode.work import OUT_OF_MEMORY, Decoded, Prepared, Task, failed
from xsearch.errors import XsearchError
from xsearch.objects import storage_environment
from xsearch.options import DecodeLimits

log = logging.getLogger(__name__)

GIB = 1 << 30
_DEPTH = 2  # files handed to a worker at once: the one it decodes and the next
_POLL_SECONDS = 0.5  # how often deadlines are checked while nothing arrives
_M_ARENA_MAX = -8  # glibc's mallopt parameter
_READY = b"ready"  # a worker's first message: it started and takes files (a death before it is the pool's)
_STARTED = object()


class DecodePoolBroken(XsearchError):
    """Decode workers die before they can take a file: the machine or the installation, not the files."""


def default_memory_bytes(workers: int) -> int:
    """Per-worker budget: an even share of half the machine's memory, between 2 and 8 GiB."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        physical = 16 * GIB
    return int(min(8 * GIB, max(2 * GIB, physical // 2 // max(workers, 1))))


class DecodePool:
    """Runs ``work(task) -> Prepared`` in ``workers`` supervised processes, yielding each ``Prepared`` as it
    finishes (a task whose worker crashed or timed out: its failure). A task's ``follow_up`` tasks (a
    long file's moment chunks) are run next, before other files, so a file's pieces come back close together.

    ``work`` must be picklable (a module-level function or a ``functools.partial`` of one).
    """

    def __init__(self, work: Callable[[Task], Prepared], workers: int, limits: DecodeLimits = DecodeLimits()):
        if workers < 1:
            raise ValueError("a DecodePool needs at least one worker; decode in-process instead")
        self.work = work
        self.workers = workers
        self.seconds = limits.seconds
        self.memory_bytes = limits.memory_bytes or default_memory_bytes(workers)
        self.deaths_at_start = 0
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["xsearch.decode._forkserver_init", "xsearch.decode.work"])
        started = time.perf_counter()
        _ensure_forkserver()  # once a process: it imports the decoders (torch, PyAV), seconds on a busy machine
        log.info("decode workers' fork server ready in %.2f s", time.perf_counter() - started)

    def imap_unordered(self, tasks: Iterable[Task]) -> Iterator[Prepared]:
        pending = deque(tasks)
        pool: list[_Worker] = []
        try:
            while pending or any(w.held for w in pool):
                while len(pool) < self.workers and len(pending) > sum(1 for w in pool if not w.held):
                    pool.append(self._start())  # one per file waiting, up to ``workers``: follow-ups add some
                for worker in pool:
                    while len(worker.held) < _DEPTH and pending:
                        worker.send(pending.popleft())
                busy = [w for w in pool if w.held]
                ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], _POLL_SECONDS))
                for i, worker in enumerate(pool):
                    if not worker.held:
                        continue
                    if worker.conn in ready or worker.process.sentinel in ready:
                        prepared = worker.receive()
                        if prepared is _STARTED:
                            continue
                        if prepared is not None:
                            pending.extendleft(reversed(prepared.follow_up))  # its file's next pieces first
                            yield prepared
                            continue
                        if not worker.started:  # died before it could take a file: the pool, not the file
                            self._stillborn(worker)
                        else:
                            yield Prepared(self._failed(worker.held.popleft(), self._death(worker)))
                    elif time.monotonic() - worker.since > self.seconds:
                        log.warning("%s: decoding timed out; restarting its worker", worker.held[0].path)
                        worker.kill()
                        yield Prepared(self._failed(worker.held.popleft(), f"timed out after {self.seconds:g} s"))
                    else:
                        continue
                    pending.extendleft(reversed(worker.held))  # the files queued behind it go elsewhere
                    worker.close()
                    pool[i] = self._start()
        finally:
            for worker in pool:
                worker.close()

    def _start(self) -> _Worker:
        """A new worker; a fork server that died (killed, say) is started again, twice at most."""
        for attempt in range(3):
            try:
                return _Worker(self.context, self.work, self.memory_bytes)
            except (EOFError, ConnectionError, OSError) as exc:
                log.warning("the decode fork server failed to start a worker (%s); starting it again", exc)
                if attempt == 2:
                    raise DecodePoolBroken(f"decode workers cannot be started ({exc})") from None
                _ensure_forkserver()

    def _stillborn(self, worker: _Worker) -> None:
        """A worker that died before it was ready: its files go back to the queue; when workers keep dying
        so, the pool is broken and the run stops (rather than blaming every file, and dropping their rows)."""
        self.deaths_at_start += 1
        if self.deaths_at_start >= max(3, 2 * self.workers):
            raise DecodePoolBroken(
                f"the decode workers die as they start ({self._death(worker)}, {self.deaths_at_start} times): "
                "nothing was recorded against the files; run with --workers 0 or --debug to see why"
            )

    def _death(self, worker: _Worker) -> str:
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return f"the decoder was killed ({name}; out of memory?)"
            return f"the decoder crashed ({name})"
        return f"the decoder process exited unexpectedly (exit status {code})"

    @staticmethod
    def _failed(task: Task, reason: str) -> Decoded:
        log.warning("%s: %s", task.path, reason)
        return failed(task, reason)


class _Worker:
    """One decode process and the files it holds, oldest (the one being decoded) first."""

    def __init__(self, context, work, memory_bytes: int):
        self.conn, child = context.Pipe()
        # The fork server's environment is the one it started with: a worker takes this process's storage
        # settings (s3:// media) as they are now.
        storage = storage_environment()
        self.process = context.Process(target=_serve, args=(child, work, memory_bytes, storage), daemon=True)
        with _main_script_hidden():
            self.process.start()
        child.close()
        self.held: deque[Task] = deque()
        self.since = time.monotonic()  # when the oldest held file started decoding (or later: never earlier)
        self.started = False  # it said it is ready to take files

    def send(self, task: Task) -> None:
        """Hand over ``task``. A worker may die while its files are being sent (the pipe breaks): the task
        stays held, and the pool learns of the death from the process's sentinel, as for any other."""
        if not self.held:
            self.since = time.monotonic()
        self.held.append(task)
        try:
            self.conn.send(task)
        except OSError:  # BrokenPipeError, ConnectionResetError: the process is gone or going
            log.debug("a decode worker died before it could be handed %s", task.path)

    def receive(self) -> Prepared | object | None:
        """The oldest held file's ``Prepared``, ``_STARTED`` when the worker says it is ready, or ``None``
        when the process died without sending it."""
        try:
            message = self.conn.recv_bytes()
        except (EOFError, OSError):
            return None
        if message == _READY:
            self.started = True
            return _STARTED
        prepared = pickle.loads(message)
        self.held.popleft()
        self.since = time.monotonic()
        return prepared

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=0.5)
        self.kill()
        self.conn.close()


def _ensure_forkserver() -> None:
    """Start the fork server with a safe module path: it runs as ``python -c``, which would put the current
    folder first on ``sys.path`` (Python 3.11's fork server ignores the parent's path), so an ``xsearch``
    folder there would shadow the installed package in every worker."""
    from multiprocessing import forkserver

    saved = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = saved


@contextlib.contextmanager
def _main_script_hidden():
    """While a worker starts, ``__main__`` is a bare module: multiprocessing records no main script for the
    child to import, so the caller's script is not run again there (workers only need xsearch)."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _serve(conn, work, memory_bytes: int, storage: dict[str, str]) -> None:
    """A worker's life: take tasks until told to stop (``None``) or the pipe closes."""
    die_with_parent()
    os.environ.update(storage)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    import torch

    torch.set_num_threads(1)  # decoding is per-file parallel already; threads would oversubscribe
    _cap_address_space(memory_bytes)
    conn.send_bytes(_READY)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        prepared = work(task)
        if prepared.decoded.error == OUT_OF_MEMORY:
            limit = f"needs more than {memory_bytes / GIB:.3g} GB of memory to decode (the per-worker limit)"
            prepared.decoded.error = limit
        conn.send_bytes(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))


def _cap_address_space(budget: int) -> None:
    """``RLIMIT_AS`` = what this process maps now + ``budget``: allocations beyond fail in this worker only.

    glibc reserves 64 MB of address space per malloc arena, up to eight per core, for the codec's threads;
    on a many-core machine that alone would pass the cap, so the arenas are limited to two first.
    """
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/statm") as handle:
            mapped = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = mapped + budget
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError):  # not Linux, or not allowed: run unbounded rather than not at all
        log.debug("could not cap the decode worker's memory", exc_info=True)
