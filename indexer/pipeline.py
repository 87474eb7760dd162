"""The batch indexer: scan -> plan -> parallel decode -> batched encode -> store commits -> index update.

- Decoding runs in supervised worker processes (``xsearch.decode.pool``), out of order: one slow file
  holds up only itself, and a decoder that crashes, hangs or overruns its memory costs only its file.
- Encoding takes per-modality batches; the workers keep decoding while the model runs.
- Results are committed to the store every ``commit_every`` files (one Lance commit each, upserting on the
  file's uri), so a run killed at any moment loses at most the uncommitted files and a re-run ends with
  exactly one row per file.
- Incremental: a file whose size and mtime match its row is skipped; one that differs is hashed and
  re-embedded only when its bytes changed. Earlier failures are retried on every run.
- A known file that now fails (corrupted, unreadable, gone between scan and decode) loses its row in the
  same commit that records its error: a stale embedding never keeps answering searches.
- Moments (``--moments``, then remembered by the database): a decoded audio or video file brings the
  chunks of its segments as follow-up work; the file's row waits until every chunk is encoded, then the
  row and its moments are committed together (row first, then the file's moment set replaced in one
  commit). A run killed between the two leaves a row whose moments are missing or another version's: the
  next run's plan sees it and embeds the file again, and ``Database.sweep_moments`` drops moments of rows
  that are gone.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from tqdm import tqdm

from xsearch.decode.deferred import decode_jpegs
from xsearch.decode.files import Outcome
from xsearch.decode.pool import DecodePool
from xsearch.decode.work import Decoded, Prepared, prepare
from xsearch.encoder import Encoder
from xsearch.errors import ModelMismatchError, XsearchError
from xsearch.index import IndexSet
from xsearch.indexer.refresh import refresh_capture
from xsearch.indexer.report import Failure, RunReport
from xsearch.indexer.scan import Rejected, Scanner, Task, is_under
from xsearch.modalities import Modality
from xsearch.moments import MomentTask, clock
from xsearch.objects import is_object_uri
from xsearch.options import IndexOptions
from xsearch.placement import Placement
from xsearch.store import ITEMS, MOMENTS, Database, ItemRecord, Moment

log = logging.getLogger(__name__)


CPU_BATCH = 16
# Batches a GPU takes whole (an H200 ran vision at 1,264 images/s in batches of 128, text at 9,952/s in 512s).


def default_workers(gpu: bool = False) -> int:
    """Decode processes: every core but one; on a CPU at most 8 (the encoder needs the rest), on a GPU all
    (decoding is what bounds indexing there)."""
    cores = (os.cpu_count() or 1) - 1
    return max(0, cores if gpu else min(8, cores))


class RunStalled(XsearchError):
    """A run's workers stopped sending files back (a cluster that lost a node): what was embedded is kept."""


class Indexer:
    """Indexes folders into a store with an encoder.

    Example
    -------
    >>> indexer = Indexer(Database.open("media.db", model_id=encoder.model_id), encoder)  # doctest: +SKIP
    >>> report = indexer.run(["~/Pictures"])  # doctest: +SKIP
    """

    def __init__(
        self,
        store: Database,
        encoder: Encoder | Callable[[], Encoder],
        options: IndexOptions = IndexOptions(),
        placement: Placement | None = None,
    ):
        """``encoder``: an ``Encoder``, or a function that loads one, called only when a file needs
        decoding (a run with nothing new never loads the model). ``placement``: where the run's work goes
        (decided beside the model choice; default: the encoder's device and precision, once it is loaded)."""
        self.store = store
        self._placement = placement
        self.nodes: set[str] = set()  # the cluster nodes that encoded files (``RayIndexer``)
        self._encoder = None if callable(encoder) else encoder
        self._load_encoder = encoder if callable(encoder) else None
        self.cfg = options
        # How files are cut into moments: as asked, else as the database keeps them (None: no moments).
        self.moments = options.moments or store.moment_cfg()
        self._planned_version: int | None = None  # the items version the plan read
        if self._encoder is not None:
            self._check(self._encoder)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self._check(self._load_encoder())
        return self._encoder

    def _check(self, encoder: Encoder) -> Encoder:
        ModelMismatchError.check(self.store.path, self.store.model_id, encoder.model_id, argument="checkpoint")
        return encoder

    # ---- stages ----------------------------------------------------------------------------------------

    def _scan(self, roots: list[str], report: RunReport):
        scanner = Scanner(self.cfg.scan, skip=self._own_folders())
        candidates: list[Task] = []
        rejected: list[Rejected] = []
        # Shown only when a scan takes a while (``delay``): a quick one would flash "scan: 0 files".
        with tqdm(desc="scan", unit=" files", disable=not self.cfg.progress, leave=False, delay=2.0) as bar:
            for found in scanner.scan(roots):
                if isinstance(found, Task):
                    candidates.append(found)
                    bar.update()
                else:
                    rejected.append(found)
        report.scanned = len(candidates)
        report.ignored, report.excluded = scanner.stats.ignored, scanner.stats.excluded
        report.hidden = scanner.stats.hidden
        report.unmatched_excludes = scanner.unmatched()
        for pattern in report.unmatched_excludes:
            log.warning("exclude pattern %r matched nothing", pattern)
        return candidates, rejected, scanner.stats.unlisted_dirs

    def _keep_assignments(self) -> None:
        """``--as`` is remembered, as ``--moments`` is: a later run without it keeps a depth scan as depth
        instead of re-embedding it as an image (a new ``--as`` for the same path replaces the old)."""
        remembered = {path: Modality(name) for path, name in self.store.assignments().items() if name in Modality}
        given = dict(self.cfg.scan.assigned)
        merged = {**remembered, **given}
        if given and merged != remembered:
            self.store.remember_assignments({path: str(m) for path, m in merged.items()})
        if merged != given:
            self.cfg = replace(self.cfg, scan=replace(self.cfg.scan, assigned=merged))

    def _own_folders(self) -> tuple[str, ...]:
        """The database's folder when it is on this disk: never media, even inside a folder being indexed."""
        return () if is_object_uri(self.store.path) else (str(self.store.path),)

    def _forget_own_files(self, roots: list[str]) -> None:
        """Rows and error rows of the database's own files, made by versions that indexed a database kept
        inside the folder it indexes: they were never media."""
        own = [os.path.realpath(p) for p in self._own_folders()]
        inside = [f for f in own if any(is_under(f, os.path.realpath(r)) for r in roots if not is_object_uri(r))]
        if not inside:
            return
        items = [u for u in self.store.items().scan(["uri"])["uri"].to_pylist() if any(is_under(u, f) for f in inside)]
        errors = [u for u in self.store.error_rows()["uri"].to_pylist() if any(is_under(u, f) for f in inside)]
        if items:
            self.store.delete_items(uris=items)
        if errors:
            self.store.clear_errors(errors)
        if items or errors:
            log.warning("%s: forgot %d rows of the database's own files", self.store.path, len(items) + len(errors))

    def _plan(self, candidates: list[Task], report: RunReport) -> tuple[list[Task], list[str]]:
        """Tasks for new and changed files; the uris of those skipped as unchanged."""
        view = self.store.items()
        self._planned_version = view.version  # a run that commits nothing has nothing to merge
        known = view.scan(["id", "uri", "modality", "size", "mtime", "sha256"]).to_pylist()
        rows = {row["uri"]: row for row in known}
        cut = self.store.moment_sets() if self.moments else {}
        failed_moments = self._failed_moments() if self.moments and not self.cfg.retry else set()
        tasks, unchanged = [], []
        for c in candidates:
            row = rows.get(c.path)
            fallback = c.modality.spec.fallback  # a video file indexed as audio (no picture) is still known
            if row is None:
                tasks.append(c)
            elif row["modality"] not in (c.modality.value, fallback and fallback.value):
                log.warning("%s was %s, now %s: embedded again", c.path, row["modality"], c.modality)
                tasks.append(replace(c, known=True))  # now another modality (--as): re-embedded, an update
            elif self.moments and Modality(row["modality"]).spec.has_moments and cut.get(row["id"]) != {row["sha256"]}:
                same = row["size"] == c.size and row["mtime"] == c.mtime
                if same and c.path in failed_moments:
                    unchanged.append(c.path)  # its moments failed for these bytes: not decoded again each run
                    report.moments_not_retried += 1
                else:  # decoded whole (no known_sha256: touched bytes would come back unchanged, uncut)
                    tasks.append(replace(c, known=True, for_moments=same))  # new --moments, or a killed run
            elif row["size"] == c.size and row["mtime"] == c.mtime:
                unchanged.append(c.path)
            else:
                tasks.append(replace(c, known_sha256=row["sha256"], known=True))
        report.unchanged = len(unchanged)
        return tasks, unchanged

    def _failed_moments(self) -> set[str]:
        """Files whose moments failed in an earlier run (their rows stand; ``--retry`` tries them again)."""
        return errors_by_stage(self.store.error_rows())["moments"]

    @property
    def placement(self) -> Placement:
        if self._placement is None:
            self._placement = Placement.around(self.encoder.device, self.encoder.precision, self.cfg.gpu_decode)
        return self._placement

    def batch_size(self, modality: Modality) -> int:
        """``batch_size`` when given; else 16 on a CPU and the tower's GPU batch on a GPU."""
        if self.cfg.batch_size:
            return self.cfg.batch_size
        return modality.tower.spec.gpu_batch if self.placement.on_gpu and modality.tower else CPU_BATCH

    def _decoded(self, tasks: list[Task]) -> Iterator[Prepared]:
        """One ``Prepared`` per task and per follow-up (moment chunks), in the order they finish (a cluster's
        come encoded: an ``Outcome`` stands for the ``Decoded``, with no follow-up); batches are
        formed per modality by the caller."""
        work = functools.partial(
            prepare, cfg=self.encoder.preprocess, defer_jpeg=self.placement.decode_on_device, moments=self.moments
        )
        default = default_workers(gpu=self.placement.on_gpu)
        workers = default if self.cfg.workers is None else self.cfg.workers
        if workers == 0:
            return _in_process(work, tasks)
        return DecodePool(work, workers, self.cfg.limits).imap_unordered(tasks)

    # ---- run -------------------------------------------------------------------------------------------

    def run(self, roots: list[str]) -> RunReport:
        """Index ``roots`` (absolute paths) as ``options`` say."""
        started = time.perf_counter()
        report = RunReport(db=str(self.store.path), model_id=self.store.model_id)
        self._keep_assignments()
        with report.phase("scan"):
            candidates, rejected, unlisted = self._scan(roots, report)
        if self.cfg.moments is not None:
            self.store.keep_moments(self.cfg.moments)  # remembered: later runs and serve keep cutting so
        with report.phase("plan"):
            self._forget_own_files(roots)
            tasks, unchanged = self._plan(candidates, report)
        if self.cfg.refresh_metadata:
            with report.phase("capture tags"):
                kinds = {c.path: c.modality for c in candidates if c.modality in (Modality.IMAGE, Modality.VIDEO)}
                report.refreshed = refresh_capture(self.store, {u: kinds[u] for u in unchanged if u in kinds})
        batch = _Batcher(self, report)
        batch.fail_scan(rejected)
        batch.clear_stale_errors(unchanged)
        try:
            if tasks:
                with (
                    report.phase("decode, embed and commit"),
                    tqdm(total=len(tasks), desc="embed", unit=" files", disable=not self.cfg.progress) as bar,
                ):
                    cut = 0.0  # seconds of media cut into moments: a long file's progress between files
                    for done, follow_up in self._decoded(tasks):
                        batch.take(done, len(follow_up))
                        if isinstance(done.task, MomentTask):
                            cut += done.task.spans[-1][1] - done.task.spans[0][0]
                            bar.set_postfix(_progress_notes(report, cut), refresh=True)
                        else:
                            bar.update()
                            bar.set_postfix(_progress_notes(report, cut), refresh=False)
            batch.flush()
        except KeyboardInterrupt:
            report.interrupted = True
            batch.flush()  # keep what was embedded; the re-run continues from there
        except RunStalled:
            batch.flush()  # as for an interruption: the re-run continues from there
            raise
        finally:
            batch.close()
        if not report.interrupted:
            with report.phase("gone files"):
                gone = self._gone(roots, {c.path for c in candidates}, unlisted, report.prune_skipped)
                if self.cfg.prune:
                    report.pruned = self._prune(gone)
                else:
                    report.gone = len(gone[0])
        if not report.interrupted:
            with report.phase("compaction"):
                self.store.sweep_moments()  # of rows pruned or replaced by a run killed before their moments
                merge = self.store.items().version != self._planned_version
                self.store.compact(merge=merge)  # before the index update, which then covers the compacted version
        if self.cfg.update_index and not report.interrupted:
            with report.phase("indices"):
                report.indexes = self.update_indices()
                if self.store.has_moments():
                    report.moment_indexes = self.update_indices(MOMENTS)
        report.seconds = time.perf_counter() - started
        return report

    def _gone(self, roots, seen: set[str], unlisted: list[str], skipped: list[str]) -> tuple[list[str], list[str]]:
        """Rows (and error rows) of files under ``roots`` that are gone from disk: what ``--prune`` deletes.

        Only files that no longer exist count: a file skipped by ``--exclude`` or ``--modalities``, or under
        a folder that could not be listed this time, keeps its row. A file counts as gone only where the
        scan found files: if the deepest folder of its path that still exists holds none of the files
        scanned (a missing or empty root, a drive that is not mounted, a folder holding only
        ``lost+found`` or ``.DS_Store``, an empty mount point inside a root), its rows are kept, because an
        unmounted drive looks exactly like that and pruning would throw away every embedding under it.
        """
        roots = [r if is_object_uri(r) else os.path.abspath(r) for r in roots]
        unlisted = list(unlisted)
        holding = _folders_holding(seen)  # every folder with a scanned file in or under it
        kept_under: set[str] = set()

        def gone(uri: str) -> bool:
            if uri in seen or not any(is_under(uri, r) for r in roots) or any(is_under(uri, d) for d in unlisted):
                return False
            if os.path.lexists(uri):
                return False
            root = max((r for r in roots if is_under(uri, r)), key=len)
            folder = os.path.dirname(uri)
            while not os.path.lexists(folder) and folder != root:
                folder = os.path.dirname(folder)  # up to the root, never above it
            if folder not in holding:  # nothing found there this time: unmounted, or emptied on purpose?
                kept_under.add(folder)
                return False
            return True

        items = [u for u in self.store.items().scan(["uri"])["uri"].to_pylist() if gone(u)]
        errors = [u for u in self.store.error_rows()["uri"].to_pylist() if gone(u)]
        if self.cfg.prune:
            for folder in sorted(kept_under):
                state = _state(folder)
                skipped.append(f"{folder} {state}: rows under it were kept (not pruned)")
                log.warning("%s %s: not pruned (an unmounted drive looks like this)", folder, state)
        return items, errors

    def _prune(self, gone: tuple[list[str], list[str]]) -> int:
        items, errors = gone
        if items:
            self.store.delete_items(uris=items)
        self.store.clear_errors(errors)
        return len(items)

    def update_indices(self, table: str = ITEMS) -> dict[str, dict]:
        """Bring every modality's FAISS index over ``table`` (items, or ``MOMENTS``) up to date with it."""
        view = self.store.view(table)
        indices = IndexSet.over(self.store, view, table)
        modalities = set(view.modalities()) | indices.stored()  # one whose last rows were pruned is emptied
        out = {}
        for modality in sorted(modalities):
            index = indices.current(modality)[0]
            out[modality.value] = {"kind": index.kind, "count": len(index)}
        return out


def _in_process(work, tasks: list[Task]) -> Iterator[Prepared]:
    """``work`` over ``tasks`` in this process (``workers=0``), each task's follow-ups right after it."""
    pending = list(reversed(tasks))
    while pending:
        prepared = work(pending.pop())
        pending.extend(reversed(prepared.follow_up))
        yield prepared


def _state(folder: str) -> str:
    if not os.path.lexists(folder):
        return "is missing"
    try:
        return "is empty" if not os.listdir(folder) else "holds none of the files indexed under it"
    except OSError:
        return "cannot be listed"


def _folders_holding(paths: set[str]) -> set[str]:
    """Every folder that has one of ``paths`` in it or below it."""
    folders: set[str] = set()
    for path in paths:
        folder = os.path.dirname(path)
        while folder not in folders and folder != os.path.dirname(folder):
            folders.add(folder)
            folder = os.path.dirname(folder)
    return folders


def errors_by_stage(errors) -> defaultdict[str, set[str]]:
    """``{stage: uris}`` of the error rows (an Arrow table with ``uri`` and ``stage``)."""
    out: defaultdict[str, set[str]] = defaultdict(set)
    for uri, stage in zip(errors["uri"].to_pylist(), errors["stage"].to_pylist()):
        out[stage].add(uri)
    return out


def _progress_notes(report: RunReport, cut: float) -> dict[str, str]:
    notes = {"failed": str(report.failed)} if report.failed else {}
    if cut:
        notes["moments"] = f"{clock(cut)} of media"
    return notes


@dataclass
class _Cutting:
    """A file whose row waits for its moments: the chunks still out, its row once encoded, its moments, and
    what failed (its row: the file is an error; a chunk: the row stands, without moments)."""

    modality: Modality
    chunks: int
    record: tuple[ItemRecord, str] | None = None
    moments: list[Moment] = field(default_factory=list)
    row_failed: bool = False
    moments_failed: str | None = None


class _Batcher:
    """Collects outcomes into per-modality encoder batches and encoded rows into store commits."""

    def __init__(self, indexer: Indexer, report: RunReport):
        self.indexer = indexer
        self.store = indexer.store
        self.cfg = indexer.cfg
        self.report = report
        self.waiting: dict[Modality, list[Decoded]] = defaultdict(list)
        self.records: list[tuple[ItemRecord, str]] = []  # (row, ``Task.change``: new, updated or moments)
        self.restat: list[Decoded] = []  # files whose bytes are unchanged: their size and mtime are updated
        self.errors: list[tuple[str, str | None, str, str]] = []
        self.moment_errors: list[tuple[str, str | None, str, str]] = []  # rows kept, their moments failed
        self.cleared: list[str] = []
        self.cutting: dict[str, _Cutting] = {}  # files whose moments are still being embedded
        self.last_commit = time.monotonic()
        self.by_modality: Counter = Counter()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xsearch-commit")
        self._pending = None

    def fail_scan(self, rejected: list[Rejected]) -> None:
        for r in rejected:
            self._error(r.uri, r.modality, "scan", r.message)

    def clear_stale_errors(self, unchanged: list[str]) -> None:
        """A file indexed by an earlier run that was killed before clearing its error row."""
        by_stage = errors_by_stage(self.store.error_rows())
        stale = set().union(*(uris for stage, uris in by_stage.items() if stage != "moments"))
        self.cleared.extend(u for u in unchanged if u in stale)  # a moments error stands: the row is whole

    def _error(self, uri: str, modality: Modality | None, stage: str, message: str) -> None:
        self.errors.append((uri, modality.value if modality else None, stage, message))
        self.report.failed += 1
        self.report.failures.append(Failure(uri, stage, message))

    def take(self, done: Decoded | Outcome, chunks: int = 0) -> None:
        """One file (or moment chunk) decoded, or already encoded by a cluster's actors (an ``Outcome``);
        ``chunks``: the chunks of its moments that follow it."""
        task = done.task
        if chunks:  # its moments' chunks follow: the row waits for them
            self.cutting[task.path] = _Cutting(done.modality, chunks)
        if isinstance(task, MomentTask):
            self._take_moments(done)
        elif done.error is not None:
            self._error(task.path, done.modality, done.stage, done.error)
        elif done.unchanged:
            self.restat.append(done)
            self.report.unchanged += 1
        elif isinstance(done, Outcome):  # encoded elsewhere (a cluster's actors)
            self._record(done)
        else:
            queue = self.waiting[done.modality]
            queue.append(done)
            if len(queue) >= self.indexer.batch_size(done.modality):
                self._encode(done.modality)
        due = time.monotonic() - self.last_commit > self.cfg.commit_seconds
        if len(self.records) + len(self.restat) + len(self.errors) >= self.cfg.commit_every or due:
            self._commit()

    def _encode(self, modality: Modality) -> None:
        waiting, self.waiting[modality] = self.waiting[modality], []
        if not waiting:
            return
        started = time.perf_counter()
        encoder = self.indexer.encoder
        decode_jpegs(waiting, encoder.preprocess, encoder.device)  # those the workers left for the device
        outcomes = encoder.encode_decoded(waiting, self.indexer.batch_size(modality))
        self.report.embed_seconds += time.perf_counter() - started
        for outcome in outcomes:
            self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        """An encoded outcome -> a row to commit (or an error row when encoding failed)."""
        task = outcome.task
        due = self.cutting.get(task.path)
        if outcome.error is not None:
            self._error(task.path, outcome.modality, outcome.stage, outcome.error)
            if due is not None:
                due.row_failed = True
                self._settle(task.path)
            return
        record = ItemRecord(
            task.path,
            outcome.modality,
            outcome.vector,
            sha256=outcome.sha256,
            size=task.size,
            mtime=task.mtime,
            metadata=outcome.metadata,
            precision=self.indexer.encoder.precision,
        )
        if due is None:
            self.records.append((record, task.change))
        else:
            due.record = (record, task.change)
            self._settle(task.path)

    def _take_moments(self, chunk: Decoded) -> None:
        """One chunk of a file's segments: embedded now (it holds many inputs already), kept with the file."""
        task: MomentTask = chunk.task
        due = self.cutting.get(task.path)
        if due is None:  # the file was given up (an earlier chunk or its row failed)
            return
        due.chunks -= 1
        error = chunk.error
        if error is None and not (due.row_failed or due.moments_failed):
            started = time.perf_counter()
            vectors, error = self.indexer.encoder.encode_stacked(chunk, self.indexer.batch_size(task.modality))
            self.report.embed_seconds += time.perf_counter() - started
            if vectors is not None:
                due.moments += [Moment(task.modality, a, b, v) for (a, b), v in zip(task.spans, vectors)]
        if error is not None and due.moments_failed is None:
            (start, _), (_, end) = task.spans[0], task.spans[-1]
            due.moments_failed = f"{task.modality} moments {clock(start)}-{clock(end)}: {error}"
        if not due.chunks and due.record is None and not due.row_failed:
            # Its moments are done and its row waits in a batch still filling: encode that batch now, so the
            # file is committed (its moments' work is what a kill would lose), not when the batch is full.
            self._encode(due.modality)
        self._settle(task.path)

    def _settle(self, path: str) -> None:
        """A file whose chunks are all back: its row and moments go to the next commit. When its row failed,
        nothing does (its error row is recorded). When a chunk failed, the row does, without moments: the
        file stays searchable as a whole, the failure is reported, and the next run, seeing no moments,
        tries them again (never half a set)."""
        due = self.cutting.get(path)
        if due is None or due.chunks or (due.record is None and not due.row_failed):
            return  # settled already (encoding its row settles it), or parts still out
        del self.cutting[path]
        if due.row_failed:
            return
        record, change = due.record
        record.moments = [] if due.moments_failed else due.moments
        if due.moments_failed:
            log.warning("%s: %s (tried again when the file changes, or with --retry)", path, due.moments_failed)
            self.report.failed += 1
            self.report.failures.append(Failure(path, "moments", due.moments_failed))
            self.moment_errors.append((path, record.modality.value, "moments", due.moments_failed))
        self.records.append((record, change))

    def flush(self) -> None:
        """Encode what waits, commit it, and wait for every commit to be written."""
        for modality in list(self.waiting):
            self._encode(modality)
        self._commit()
        self._wait()

    def _commit(self) -> None:
        """Hand the collected rows to the writer thread: Lance writes release the GIL, so the next batch is
        received and encoded while this one is written. One commit at a time, in order."""
        work = (self.records, self.restat, self.errors, self.cleared, self.moment_errors)
        self.records, self.restat, self.errors, self.cleared, self.moment_errors = [], [], [], [], []
        self.last_commit = time.monotonic()
        self._wait()  # the previous commit first: commits stay ordered, and its failure surfaces here
        self._pending = self._writer.submit(self._write, *work)

    def close(self) -> None:
        """Let the writer thread finish what it holds, and end it."""
        self._writer.shutdown(wait=True)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, records, restat, errors, cleared, moment_errors) -> None:
        """One upsert of embedded rows, then the error table; both keyed on uri, so replaying is harmless.
        A file whose moments failed keeps its row and gets an error row (``moments``), which tells the next
        run's plan not to decode the same bytes again."""
        store = self.store
        if records:
            store.upsert_items([r for r, _ in records])  # sets the ids of new rows, which moments use
            store.replace_moments([r for r, _ in records])
            self.report.moments += sum(len(r.moments or ()) for r, _ in records)
        if restat:
            store.update_columns({o.task.path: {"size": o.task.size, "mtime": o.task.mtime} for o in restat})
        store.clear_errors([r.uri for r, _ in records] + [o.task.path for o in restat] + cleared)
        failed = [uri for uri, *_ in errors]
        stale = store.lookup_uris(failed)["uri"].to_pylist() if failed else []
        if stale:
            store.delete_items(uris=stale)
            self.report.stale_removed += len(stale)
        store.record_errors(errors + moment_errors)
        counts = {"new": "indexed", "updated": "updated", "moments": "moments_added"}
        for record, change in records:
            self.by_modality[record.modality.value] += 1
            setattr(self.report, counts[change], getattr(self.report, counts[change]) + 1)
        self.report.by_modality = dict(self.by_modality)
        self.report.nodes = sorted(self.indexer.nodes)
