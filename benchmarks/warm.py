"""Warm search against its index: what a search costs beyond the FAISS search it makes, and how searches of
one collection run side by side.

    python benchmarks/warm.py --rows 20000 --queries 200 --repeats 3

Builds a database of ``--rows`` embedding-like vectors (``xsearch/testing/synthetic.py``) stored as ``text``
items, plus ``--rows / 4`` as ``image`` items (for ``--target all``) and the moments of ``--rows / 100`` audio
files (20 segments each), with their indices as ``xsearch index`` builds them. Then, in one process with
every BLAS/OpenMP pool at one thread, interleaved over ``--repeats`` rounds (medians reported):

- ``flat``: a FAISS ``IndexFlatIP`` search of the same text vectors (the brute-force floor);
- ``index``: the engine's own index search for the same query (``VectorIndex.search``);
- per query kind, a warm ``Collection.search`` (k=10) of a collection that holds its rows in memory, as
  ``serve`` does (``EngineSettings(hold_rows=True)``): ``item`` (a stored item, ``target=text``), ``all``
  (``target=all``, two modalities merged), ``where`` (a filter), ``path`` (a glob), ``composed`` (two items,
  weighted), ``moment`` (a stored moment, ``moments=True``); and ``item_disk``: ``item`` by a collection
  that reads its hits' rows from disk (the default, a one-shot CLI search's);
- ``threads``: ``item`` searches from 2 threads at once, as a multiple of one thread's rate.

Prints one JSON line per measurement and a summary line.
"""

from __future__ import annotations

import os

for _pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")  # before numpy and faiss load: one thread each, as the targets say

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from xsearch import Collection, Query  # noqa: E402
from xsearch.index import IndexSet  # noqa: E402
from xsearch.modalities import Modality  # noqa: E402
from xsearch.moments import MomentCfg  # noqa: E402
from xsearch.options import EngineSettings  # noqa: E402
from xsearch.store import MOMENTS, Database, ItemRecord, Moment  # noqa: E402
from xsearch.testing.synthetic import clustered_embeddings  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def build(db: Path, rows: int) -> np.ndarray:
    """The database; returns the text vectors (ids 0..rows-1)."""
    store = Database.open(db, model_id="tiny_test", embed_dim=1024)
    store.keep_moments(MomentCfg())
    texts = clustered_embeddings(rows, seed=3)
    for start in range(0, rows, 50_000):
        chunk = texts[start : start + 50_000]
        store.add_items([ItemRecord(f"/t/{start + i}.txt", Modality.TEXT, v) for i, v in enumerate(chunk)])
    images = clustered_embeddings(rows // 4, seed=4)
    store.add_items([ItemRecord(f"/i/{i}.jpg", Modality.IMAGE, v, sha256=f"{i:064x}") for i, v in enumerate(images)])
    files = max(rows // 100, 1)
    segments = clustered_embeddings(files * 20, seed=5).reshape(files, 20, -1)
    sounds = [
        ItemRecord(f"/a/{f}.wav", Modality.AUDIO, segments[f].mean(0), sha256=f"a{f:063x}",
                   moments=[Moment(Modality.AUDIO, 6.0 * n, 6.0 * n + 6, segments[f, n]) for n in range(20)])
        for f in range(files)
    ]  # fmt: skip
    store.upsert_items(sounds)
    store.replace_moments(sounds)
    for table in ("items", MOMENTS):
        indices = IndexSet.latest(store, table)
        for modality in indices.view.modalities():
            indices.current(modality)[0]
    return texts


def timed(call, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def searches_per_s(search, picks, threads: int, seconds: float = 3.0) -> float:
    """Searches per second from ``threads`` threads searching at once for ``seconds``."""
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def work(slot: int) -> None:
        j = slot
        while time.perf_counter() < stop:
            search(picks[j % len(picks)])
            done[slot] += 1
            j += threads

    workers = [threading.Thread(target=work, args=(s,)) for s in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200, help="per kind and round")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="xsearch-warm-") as scratch:
        db = Path(scratch) / "db"
        texts = build(db, args.rows)
        flat = faiss.IndexFlatIP(texts.shape[1])
        flat.add(texts)
        collection = Collection.open(db, settings=EngineSettings(hold_rows=True))
        from_disk = Collection.open(db)
        engine = collection.engine
        rng = np.random.default_rng(0)
        picks = rng.integers(0, args.rows, size=args.queries)
        sound = Database.open(db, create=False).moments().ids()[0]
        sound_item, sound_at = int(sound) >> 20, 6.0 * (int(sound) & 0xFFFFF) + 1
        kinds = {
            "item": lambda i: collection.search(Query.item(int(i)), target="text", k=10),
            "all": lambda i: collection.search(Query.item(int(i)), k=10),
            "where": lambda i: collection.search(Query.item(int(i)), target="text", k=10, where="id >= 10"),
            "path": lambda i: collection.search(Query.item(int(i)), target="text", k=10, path="/t/1*"),
            "composed": lambda i: collection.search(
                Query.item(int(i)) + Query.item(int(i) // 2 + 1) * 0.5, target="text", k=10
            ),
            "moment": lambda i: collection.search(Query.item(sound_item, at=sound_at), moments=True, k=10),
            "item_disk": lambda i: from_disk.search(Query.item(int(i)), target="text", k=10),
        }
        for kind in kinds.values():  # warm: indices loaded, samples drawn, rows held
            kind(picks[0])
        snapshot = engine.snapshot()
        for state in (snapshot.items, snapshot.moments):
            state.view.wait_held()
        emit(held_mb=round((snapshot.items.view.held_bytes + snapshot.moments.view.held_bytes) / 1e6, 1))
        index = engine.index(Modality.TEXT)
        medians: dict[str, list[float]] = {}
        for round_ in range(args.repeats):
            per_query = {"flat": [], "index": []}
            for i in picks:
                vector = texts[i : i + 1]
                per_query["flat"] += timed(lambda v=vector: flat.search(v, 10), 1)
                per_query["index"] += timed(lambda v=vector: index.search(v, 10), 1)
            for name, kind in kinds.items():
                per_query[name] = [timed(lambda i=i, kind=kind: kind(i), 1)[0] for i in picks]
            for name, values in per_query.items():
                p50 = statistics.median(values)
                medians.setdefault(name, []).append(p50)
                emit(round=round_, kind=name, p50_ms=round(p50, 3), p99_ms=round(float(np.percentile(values, 99)), 3))
            rate = {threads: searches_per_s(kinds["item"], picks, threads) for threads in (1, 2)}
            medians.setdefault("threads", []).append(rate[2] / rate[1])
            emit(
                round=round_,
                kind="threads",
                one=round(rate[1], 1),
                two=round(rate[2], 1),
                x=round(rate[2] / rate[1], 2),
            )
        summary = {name: round(statistics.median(values), 3) for name, values in medians.items()}
        summary["item_over_flat"] = round(summary["item"] / summary["flat"], 2)
        summary["item_over_index"] = round(summary["item"] / summary["index"], 2)
        emit(rows=args.rows, summary=summary)
        collection.close()
        from_disk.close()


if __name__ == "__main__":
    main()
