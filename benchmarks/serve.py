"""Serving benchmark: warm queries through ``xsearch serve`` under concurrency, against a cold CLI call.

    python benchmarks/serve.py --rows 100000 --clients 32 --queries 20

Builds a database of ``--rows`` synthetic image vectors (``xsearch/testing/synthetic.py``; the index is built by the
same code as ``xsearch index``), starts ``xsearch serve`` on 127.0.0.1 in its own process, and runs
``--clients`` threads each sending ``--queries`` item searches (k=10, a random stored item each time).
Prints one JSON line: p50/p99 latency, errors, server RSS before and after, the same queries' p50 in
process (a ``Collection`` set as ``serve`` sets it, before the server starts: what HTTP adds), and the median
of three cold ``xsearch search --item`` runs of the same kind of query.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xsearch.index import IndexSet  # noqa: E402
from xsearch.modalities import Modality  # noqa: E402
from xsearch.store import Database, ItemRecord  # noqa: E402
from xsearch.testing.synthetic import clustered_embeddings  # noqa: E402

XSEARCH = str(Path(sys.executable).parent / "xsearch")
# A trial checkpoint's model (``xsearch random-checkpoint``): a database names the model whose weights a
# server must load, even when its searches (stored items) never run it.
TRIAL_MODEL = "tiny_test:random-0"


def build(db: Path, rows: int) -> None:
    store = Database.open(db, model_id=TRIAL_MODEL, embed_dim=1024)
    vectors = clustered_embeddings(rows, seed=3)
    for start in range(0, rows, 50_000):
        chunk = vectors[start : start + 50_000]
        store.add_items([ItemRecord(f"/synthetic/{start + i}.jpg", Modality.IMAGE, v) for i, v in enumerate(chunk)])
    IndexSet.latest(store).current(Modality.IMAGE)[0]


def warm_in_process(db: Path, items: list[int]) -> float:
    """The median seconds of the same item searches in this process, rows held as ``serve`` holds them."""
    from xsearch import Collection, Query
    from xsearch.options import EngineSettings

    with Collection.open(db, settings=EngineSettings(hold_rows=True)) as collection:
        search = lambda item: collection.search(Query.item(item), target="image", k=10)  # noqa: E731
        for item in items[:20]:
            search(item)
        collection.engine.snapshot().items.view.wait_held()
        timings = []
        for item in items:
            started = time.perf_counter()
            search(item)
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--queries", type=int, default=20, help="per client")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        db = Path(scratch) / "db"
        build(db, args.rows)
        checkpoint = Path(scratch) / "trial.pt"
        subprocess.run([XSEARCH, "random-checkpoint", str(checkpoint)], capture_output=True, check=True)
        model = ["--checkpoint", str(checkpoint)]
        in_process = warm_in_process(db, np.random.default_rng(1).integers(0, args.rows, 300).tolist())
        port = free_port()
        command = [XSEARCH, "serve", "--db", str(db), "--port", str(port), *model]
        server = subprocess.Popen(command, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}/api/search"
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5).read()
                    break
                except OSError:
                    time.sleep(0.1)
            rng = np.random.default_rng(0)

            def one(item: int) -> float | None:
                body = urllib.parse.urlencode({"item": str(item), "target": "image", "k": "10"}).encode()
                start = time.perf_counter()
                try:
                    with urllib.request.urlopen(url, data=body, timeout=120) as response:
                        ok = response.status == 200 and json.loads(response.read())["results"]
                except OSError:
                    return None
                return time.perf_counter() - start if ok else None

            items = rng.integers(0, args.rows, args.clients * args.queries).tolist()
            with ThreadPoolExecutor(args.clients) as pool:  # warm: indices, sample, the server's threads
                list(pool.map(one, items[: args.clients * 2]))
            single = sorted(t for t in map(one, items[:50]) if t is not None)  # one client at a time
            before = rss_mb(server.pid)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                timings = list(pool.map(one, items))
            wall = time.perf_counter() - started
            after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
        done = sorted(t for t in timings if t is not None)
        cold = []
        for item in items[:3]:
            start = time.perf_counter()
            argv = [XSEARCH, "search", "--db", str(db), "--item", str(item), "--target", "image", "-k", "10", *model]
            subprocess.run(argv, capture_output=True, check=True)
            cold.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "rows": args.rows,
                "clients": args.clients,
                "queries": len(timings),
                "errors": len(timings) - len(done),
                "single_client_p50_ms": round(1000 * statistics.median(single), 2),
                "in_process_p50_ms": round(1000 * in_process, 2),
                "http_adds_ms": round(1000 * (statistics.median(single) - in_process), 2),
                "concurrent_p50_ms": round(1000 * statistics.median(done), 2),
                "concurrent_p99_ms": round(1000 * done[int(0.99 * (len(done) - 1))], 2),
                "queries_per_s": round(len(done) / wall, 1),
                "server_rss_mb_before": round(before),
                "server_rss_mb_after": round(after),
                "cold_cli_median_s": round(statistics.median(cold), 2),
                "cold_over_warm_single_p50": round(statistics.median(cold) / statistics.median(single), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
