"""The supervised decode pool: a crashing, hanging or greedy decoder costs one file; workers that die at
start stop the run without blaming files; a killed run leaves no process; query files get the same limits.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xsearch import Collection, Modality
from xsearch.cli.main import app
from xsearch.store import Database
from xsearch.testing.media import gradient_image

from scripts import xsearch_script
from trials import numbered_pictures, tiny_checkpoint


def _group(pgid: int) -> list[str]:
    """Live processes of a process group (from /proc), as "pid command"."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(f"{stat.parent.name} {fields[0]}")
    return found


def _gone(pgid: int, seconds: float = 10) -> list[str]:
    """What is left of a process group after waiting up to ``seconds`` for it to empty."""
    deadline = time.monotonic() + seconds
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _group(pgid)


runner = CliRunner()


def test_a_killed_run_leaves_no_worker_or_fork_server_behind(tmp_path, tiny_model):
    """kill -9 of `xsearch index` while its decode worker runs: the fork server and the worker follow."""
    checkpoint = tiny_checkpoint(tmp_path, tiny_model)
    media = numbered_pictures(tmp_path / "media", 40, ".jpg", size=(1600, 1200))
    xsearch = xsearch_script()
    argv = [xsearch, "index", str(media), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint)]
    process = subprocess.Popen([*argv, "--workers", "1", "-q"], start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_group(process.pid)) < 3 and time.monotonic() < deadline:  # main, fork server, worker
        time.sleep(0.05)
    assert len(_group(process.pid)) >= 3, _group(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _gone(process.pid) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, tiny_model, sig):
    """SIGTERM (or SIGHUP: its terminal closed) mid-run: what was embedded is committed, exit 130, and
    nothing is left running."""
    checkpoint = tiny_checkpoint(tmp_path, tiny_model)
    media = numbered_pictures(tmp_path / "media", 60, ".jpg", size=(1600, 1200))
    xsearch = xsearch_script()
    db = tmp_path / "db"
    argv = [xsearch, "index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "--workers", "1"]
    process = subprocess.Popen([*argv, "--commit-every", "4", "-q"], start_new_session=True)
    deadline = time.monotonic() + 120
    versions = db / "items.lance" / "_versions"
    while time.monotonic() < deadline and len(list(versions.glob("*.manifest")) if versions.exists() else []) < 3:
        time.sleep(0.05)  # wait until a few commits landed: the run is mid-way
    process.send_signal(sig)
    assert process.wait(timeout=60) == 130
    kept = Database.open(db, create=False).items().count()
    assert 0 < kept < 60
    assert _gone(process.pid) == []


def test_a_crashing_hanging_or_greedy_decoder_costs_one_file(tmp_path):
    from xsearch.decode.pool import GIB, DecodePool
    from xsearch.decode.work import Task
    from xsearch.options import DecodeLimits

    from faulty import misbehave

    names = ["ok0", "crash1", "ok2", "hang3", "ok4", "greedy5", "ok6", "ok7"]
    tasks = [Task(str(tmp_path / n), Modality.IMAGE, 1, 0.0) for n in names]
    pool = DecodePool(misbehave, workers=2, limits=DecodeLimits(seconds=3, memory_bytes=GIB))
    started = time.monotonic()
    outcomes = {Path(o.task.path).name: o for o, _ in pool.imap_unordered(tasks)}
    assert sorted(outcomes) == sorted(names)  # every file answered once, the run went on
    assert all(outcomes[n].error is None and outcomes[n].sha256 == n for n in names if n.startswith("ok"))
    assert outcomes["crash1"].error == "the decoder crashed (SIGSEGV)"
    assert outcomes["hang3"].error == "timed out after 3 s"
    assert outcomes["greedy5"].error.startswith("needs more than 1 GB of memory")
    assert time.monotonic() - started < 60


def test_workers_dying_at_start_stop_the_run_without_blaming_files():
    from xsearch.decode.pool import DecodePool, DecodePoolBroken
    from xsearch.decode.work import Task

    from faulty import DiesOnArrival

    tasks = [Task(f"/nowhere/{i}.jpg", Modality.IMAGE, 1, 0.0) for i in range(6)]
    outcomes = []
    with pytest.raises(DecodePoolBroken, match="die as they start"):
        outcomes.extend(DecodePool(DiesOnArrival(), workers=2).imap_unordered(tasks))
    assert outcomes == []  # no file was reported as bad


def test_a_worker_that_died_before_its_files_were_sent_is_a_death_not_a_crash_of_the_run():
    """Files handed to a worker that is already dead (its pipe broken) stay held, so the pool's sentinel
    check puts them back in the queue: the race that once ended a run with BrokenPipeError."""
    from xsearch.decode.pool import DecodePool
    from xsearch.decode.work import Task

    from faulty import DiesOnArrival

    worker = DecodePool(DiesOnArrival(), workers=1)._start()
    try:
        worker.process.join(timeout=30)
        assert worker.process.exitcode == 3
        tasks = [Task(f"/nowhere/{i}.jpg", Modality.IMAGE, 1, 0.0) for i in range(2)]
        for task in tasks:
            worker.send(task)
        assert list(worker.held) == tasks
        assert worker.receive() is None  # what the pool reads as a death
    finally:
        worker.close()


def test_worker_limits_without_workers_and_a_lock_that_is_a_folder_are_one_line(tmp_path, tiny_model):
    from xsearch import IndexOptions, UsageError
    from xsearch.options import DecodeLimits

    with pytest.raises(UsageError, match="with workers=0 files are decoded in this process"):
        IndexOptions(workers=0, limits=DecodeLimits(seconds=5))
    from xsearch.model import save_random_checkpoint

    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    trial = save_random_checkpoint(tmp_path / "trial.pt")
    argv = ["index", str(media), "--db", str(tmp_path / "db"), "--workers", "0", "--checkpoint", str(trial)]
    assert runner.invoke(app, argv).exit_code == 0
    (tmp_path / "db" / "writer.lock").unlink()
    (tmp_path / "db" / "writer.lock").mkdir()
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "cannot take the writer lock" in result.output, result.output


def test_query_files_are_decoded_under_the_indexers_limits(served, tmp_path):
    from xsearch import Query, QueryError
    from xsearch.options import DecodeLimits

    root, collection = served
    big = gradient_image(tmp_path / "big.png", size=(4000, 3000))  # about 150 MB to decode and scale
    tight = Collection.open(
        collection.path, encoder=collection.encoder, query_limits=DecodeLimits(memory_bytes=20 << 20)
    )
    with pytest.raises(QueryError, match=r"big.png: needs more than 0.0195 GB of memory to decode"):
        tight.search(Query.image(big), k=1)
    roomy = Collection.open(collection.path, encoder=collection.encoder)  # the default: the indexer's limits
    assert roomy.search(Query.image(root / "p0.jpg"), k=1)[0].uri == str(root / "p0.jpg")
