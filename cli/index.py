"""``xsearch index``: folders -> database, incrementally, with a summary and a distinct exit code."""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Annotated

import typer

from xsearch.cli.app import (
    EXIT_INTERRUPTED,
    EXIT_SOME_FAILED,
    AsOpt,
    DbOpt,
    ModelFlags,
    command,
    fail,
    handled_errors,
    model_flags,
    note_random_weights,
    open_collection,
    parse_assignments,
    shown,
)
from xsearch.moments import MomentCfg
from xsearch.options import DecodeLimits, IndexOptions

SHOWN_FAILURES = 10


@contextlib.contextmanager
def terminate_like_interrupt():
    """SIGTERM (``kill``, a service manager stopping us) and SIGHUP (its terminal closed) end the run as Ctrl-C
    does: what was embedded is committed, the summary says interrupted, exit code 130."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # SIGHUP too: the terminal an index runs in was closed (what was embedded is committed, as for Ctrl-C).
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@command()
@model_flags
def index(
    paths: Annotated[list[str] | None, typer.Argument(help="Folders or files to index.")] = None,
    db: DbOpt = ...,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Files per model batch (default: 16 on a CPU; 128 images, 512 texts on a GPU)."),
    ] = IndexOptions.batch_size,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Decode processes (default: cores - 1; at most 8 on a CPU).")
    ] = None,
    file_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds one file may take to decode before it is an error.")
    ] = DecodeLimits.seconds,
    worker_memory: Annotated[
        float | None,
        typer.Option(min=0.25, help="GB one decode process may use (default: a share of the machine's memory)."),
    ] = None,
    modalities: Annotated[str | None, typer.Option(help="Only these, e.g. image,audio.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Skip paths or names matching this glob.")] = None,
    follow_symlinks: Annotated[bool, typer.Option(help="Follow symbolic links to files and folders.")] = False,
    hidden: Annotated[
        bool, typer.Option("--hidden", help="Also take files and folders named with a dot (.cache, .thumbnails).")
    ] = False,
    as_: AsOpt = None,
    prune: Annotated[bool, typer.Option(help="Remove rows of files that were deleted from disk.")] = IndexOptions.prune,
    refresh_metadata: Annotated[
        bool,
        typer.Option(
            "--refresh-metadata",
            help="Re-read when, where and with what unchanged photos and videos were taken (no re-embedding).",
        ),
    ] = False,
    retry: Annotated[
        bool,
        typer.Option(
            "--retry",
            help="Cut moments again for files whose moments failed (left alone until they change otherwise).",
        ),
    ] = IndexOptions.retry,
    update_index: Annotated[
        bool, typer.Option(help="Update the FAISS indices after the run.")
    ] = IndexOptions.update_index,
    commit_every: Annotated[int, typer.Option(min=1, help="Files per database commit.")] = IndexOptions.commit_every,
    ray: Annotated[
        str | None,
        typer.Option(help="Decode and embed on a Ray cluster: its address, 'auto' (ray start) or 'local'."),
    ] = None,
    ray_actors: Annotated[
        int | None, typer.Option(min=1, help="Encoder actors (default: one per node or GPU).")
    ] = None,
    ray_stall: Annotated[
        float,
        typer.Option(
            "--ray-stall",
            min=1,
            help="With --ray: stop, keeping what was embedded, when no file comes back for this many seconds.",
        ),
    ] = IndexOptions.ray_stall_seconds,
    gpu_decode: Annotated[
        bool | None,
        typer.Option(
            "--gpu-decode/--cpu-decode",
            help="Decode JPEGs in batches on the encoder's device (default: on a GPU, with torchvision).",
        ),
    ] = IndexOptions.gpu_decode,
    moments: Annotated[
        bool,
        typer.Option(
            "--moments",
            help="Also embed every audio and video file segment by segment, so search --moments finds when "
            "(remembered: later runs keep doing it).",
        ),
    ] = False,
    moment_seconds: Annotated[
        float | None,
        typer.Option(help=f"Seconds per moment, a multiple of 2 (default {MomentCfg.seconds:g}; with --moments)."),
    ] = None,
    moment_stride: Annotated[
        float | None, typer.Option(help="Seconds from one moment's start to the next (default: --moment-seconds).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars and no summary.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
    flags: ModelFlags = ModelFlags(),
) -> None:
    """Index media files: scan, decode in parallel, embed in batches, store, update the search indices.

    Re-running skips unchanged files, re-embeds changed ones and retries earlier failures. Depth, thermal
    and IMU files are recognised by a folder named depth/thermal/imu, a stem ending _depth/_thermal/_imu,
    or --as. Exit code 3 means the run finished but some files failed (listed in the errors table).
    """
    paths = list(paths or [])
    assign = parse_assignments(as_ or [], paths)
    if not paths and not assign:
        fail("nothing to index: give folders or files (PATHS or --as MODALITY=PATH)")
    with handled_errors(), terminate_like_interrupt():
        options = IndexOptions.of(
            assign=assign,
            modalities=modalities,
            exclude=exclude,
            follow_symlinks=follow_symlinks,
            hidden=hidden,
            prune=prune,
            retry=retry,
            refresh_metadata=refresh_metadata,
            update_index=update_index,
            batch_size=batch_size,
            workers=workers,
            file_timeout=file_timeout,
            worker_memory_gb=worker_memory,
            ray=ray,
            ray_actors=ray_actors,
            ray_stall_seconds=ray_stall,
            commit_every=commit_every,
            gpu_decode=gpu_decode,
            progress=not (quiet or json_),
            moments=moments or None,
            moment_seconds=moment_seconds,
            moment_stride=moment_stride,
        )
        collection = open_collection(db, flags)
        report = collection.index(paths, options)
    if json_:
        typer.echo(json.dumps(report.as_json(), indent=1))
    elif not quiet:
        print_summary(report)
    note_random_weights(collection)
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def print_summary(report) -> None:
    parts = [f"{report.indexed} new", f"{report.updated} updated"]
    if report.moments_added:
        parts.append(f"{report.moments_added} given moments")
    parts += [f"{report.unchanged} unchanged", f"{report.failed} failed"]
    if report.pruned:
        parts.append(f"{report.pruned} pruned")
    rate = "" if report.files_per_second is None else f", {report.files_per_second:.1f} files/s"
    load = f" (loading the model: {report.load_seconds:.2f} s)" if report.load_seconds > 0 else ""
    typer.echo(f"{shown(report.db)}: {', '.join(parts)} in {report.seconds:.1f} s{load}{rate}")
    for skipped in report.prune_skipped:
        typer.echo(f"  not pruned: {shown(skipped)}")
    if report.stale_removed:
        typer.echo(
            f"  removed: {report.stale_removed} indexed files that now fail (no longer searched; "
            "they are indexed again once they can be read)"
        )
    if report.by_modality:
        typer.echo("  embedded: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_modality.items())))
    if report.excluded:
        typer.echo(f"  excluded: {report.excluded} files or folders (--exclude, --modalities)")
    if report.ignored:  # .heic, .pdf...: said, so that a file that is not there is not a mystery
        typer.echo(f"  ignored: {report.ignored} files of no media type, or links (--follow-symlinks)")
    if report.refreshed:
        typer.echo(f"  capture tags read again: {report.refreshed} photos and videos")
    if report.moments_not_retried:
        count = report.moments_not_retried
        typer.echo(f"  moments: {count} files whose moments failed before, left as they are (--retry)")
    if report.hidden:
        typer.echo(f"  hidden: {report.hidden} files and folders named with a dot, not taken (--hidden)")
    for pattern in report.unmatched_excludes:
        typer.echo(f"  warning: --exclude {shown(pattern)!r} matched nothing", err=True)
    if report.gone:
        typer.echo(
            f"  {report.gone} indexed files are gone from disk and still searchable (run with --prune to remove them)"
        )
    if report.moments:
        typer.echo(f"  moments: {report.moments} segments of audio and video embedded")
    if report.indexes:
        kinds = ", ".join(f"{m} {i['count']} ({i['kind']})" for m, i in report.indexes.items())
        typer.echo(f"  indices: {kinds}")
    if report.moment_indexes:
        kinds = ", ".join(f"{m} {i['count']} ({i['kind']})" for m, i in report.moment_indexes.items())
        typer.echo(f"  moment indices: {kinds}")
    if report.interrupted:
        typer.echo("  interrupted: what was embedded is saved; run the same command again to continue")
    for failure in report.failures[:SHOWN_FAILURES]:
        typer.echo(f"  failed: {shown(failure.uri)}: {shown(failure.message)}")
    hidden = len(report.failures) - SHOWN_FAILURES
    if hidden > 0:
        typer.echo(f"  ... and {hidden} more (xsearch errors --db {shown(report.db)})")
