"""Scale benchmark: an IVF-PQ index built from a store of N embedding-like vectors, as ``xsearch index`` does.

    python benchmarks/scale.py --n 1000000 --queries 1000 --work /tmp/xsearch-scale

Steps, each printed as one JSON line:

1. ``store``: N vectors (``xsearch/testing/synthetic.py``) written to a fresh store in ``--work``.
2. ``build``: ``IndexSet.build`` in a child process (streaming from Lance): seconds, the child's peak RSS,
   index bytes held in RAM per vector.
3. ``flat``: FAISS ``IndexFlatIP`` over the same vectors: batch QPS (``--queries`` queries, k=10),
   single-query p50, and the ground truth for recall.
4. ``ivfpq``: our index loaded from its files, for each (nprobe, refine) in the sweep: batch QPS, p50,
   recall@10, the ratio to flat.
5. ``topup``: ``--topup`` new rows added to the store, then ``IndexSet.fresh`` (append a segment).
6. ``lancedb``: LanceDB's own IVF_PQ (and IVF_HNSW_SQ) on a table of the same vectors, swept the same way.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from xsearch.index import IndexCfg, IndexSet, search_defaults  # noqa: E402
from xsearch.store import Database, ItemRecord  # noqa: E402
from xsearch.testing.synthetic import clustered_embeddings, exact_top_k, recall_at_k  # noqa: E402

HOST = {"host": platform.node(), "cpu": platform.processor() or platform.machine()}


def emit(step: str, **facts) -> None:
    print(json.dumps({"step": step, **facts, **HOST}), flush=True)


def write_store(path: Path, n: int, chunk: int = 50_000) -> Database:
    shutil.rmtree(path, ignore_errors=True)
    store = Database.open(path, model_id="tiny_test:random-0", embed_dim=1024)
    started = time.perf_counter()
    for start in range(0, n, chunk):
        vectors = clustered_embeddings(min(chunk, n - start), seed=1000 + start // chunk)
        store.add_items([ItemRecord(f"/v/{start + i}.jpg", "image", v) for i, v in enumerate(vectors)])
    emit("store", n=n, seconds=round(time.perf_counter() - started, 1))
    return store


def stored_vectors(store: Database) -> tuple[np.ndarray, np.ndarray]:
    from xsearch.store import ItemFilter

    ids, parts = [], []
    for batch_ids, vectors in store.items().iter_vectors(ItemFilter(modality="image"), 65_536):
        ids.append(batch_ids)
        parts.append(vectors)
    return np.concatenate(ids), np.concatenate(parts)


def build_in_child(db: Path, cfg: dict) -> dict:
    """Build in a fresh process so its peak RSS is the build's alone."""
    code = f"""
import json, time
from xsearch.index import IndexCfg, IndexSet
from xsearch.store import Database

def high_water_mb():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) / 1024

store = Database.open({str(db)!r}, create=False)
base = high_water_mb()
started = time.perf_counter()
index = IndexSet.latest(store, cfg=IndexCfg(**{cfg!r})).build("image")
seconds = time.perf_counter() - started
codes = index.index.sa_code_size() if index.kind != "flat" else 4 * 1024
print(json.dumps({{"seconds": round(seconds, 1), "peak_rss_mb": round(high_water_mb()), "rss_before_mb": round(base),
                  "kind": index.kind, "ram_bytes_per_vector": codes + 17}}))  # + FAISS id, row->item id, mask
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(search, queries: np.ndarray, truth: np.ndarray, repeat: int = 3) -> dict:
    """Batch QPS (median of ``repeat``), single-query p50 over 200 queries, recall@10."""
    search(queries[:16])
    batch = []
    for _ in range(repeat):
        started = time.perf_counter()
        ids = search(queries)
        batch.append(time.perf_counter() - started)
    singles = []
    for q in queries[:200]:
        started = time.perf_counter()
        search(q[None])
        singles.append(time.perf_counter() - started)
    return {
        "qps": round(len(queries) / float(np.median(batch)), 1),
        "p50_ms": round(float(np.median(singles)) * 1e3, 3),
        "recall@10": round(recall_at_k(ids, truth), 4),
    }


def lancedb_native(work: Path, ids, vectors, queries, truth_ids, sweep, kinds, nlist, reuse, code_bytes) -> None:
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(work / "lancedb-native")
    n = len(ids)
    nlist = nlist or search_defaults(n)[0]
    for kind in kinds:
        name = f"vectors_{kind.lower()}_{code_bytes}"
        build_s = None
        if reuse and name in db.table_names():  # the index of an earlier run (building takes minutes)
            table = db.open_table(name)
        else:
            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
            table = db.create_table(name, pa.table({"id": ids, "vector": column}), mode="overwrite")
            started = time.perf_counter()
            extra = {"num_sub_vectors": code_bytes} if kind == "IVF_PQ" else {}  # 8-bit codes: 1 byte each
            table.create_index(
                metric="dot", vector_column_name="vector", index_type=kind, num_partitions=nlist, **extra
            )
            build_s = round(time.perf_counter() - started, 1)
        for nprobe, refine in sweep:

            def search(q, nprobe=nprobe, refine=refine, table=table):
                out = []
                for row in q:
                    query = table.search(row, vector_column_name="vector").distance_type("dot").nprobes(nprobe)
                    if refine:
                        query = query.refine_factor(refine)
                    out.append(query.limit(10).select(["id"]).to_arrow()["id"].to_numpy())
                return np.stack([np.pad(r, (0, 10 - len(r)), constant_values=-1) for r in out])

            code = code_bytes if kind == "IVF_PQ" else None
            emit("lancedb", kind=kind, code_bytes=code, nlist=nlist, nprobe=nprobe, refine=refine, build_s=build_s,
                 **measure(search, queries, truth_ids, repeat=1))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--topup", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/xsearch-scale"))
    parser.add_argument("--reuse", action="store_true", help="keep the store in --work from an earlier run")
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--pq-bytes-per-dim", type=float, default=None)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--sweep", default="32:10,64:10,32:20,64:20,128:20,64:40")
    parser.add_argument("--lancedb", default="IVF_PQ,IVF_HNSW_SQ", help="native index kinds ('' to skip)")
    parser.add_argument("--lancedb-sweep", default="20:0,40:10,80:10,160:10")
    parser.add_argument("--lancedb-nlist", type=int, default=None, help="partitions (default: ours)")
    parser.add_argument("--lancedb-code-bytes", type=int, default=128, help="IVF_PQ code size (default: ours)")
    args = parser.parse_args()
    db = args.work / "db"
    store = Database.open(db, create=False) if args.reuse else write_store(db, args.n)
    queries = clustered_embeddings(args.queries, seed=2)

    cfg = {"flat_threshold": 0, "nlist": args.nlist, "train_size": args.train_size, "use_gpu": False}
    if args.pq_bytes_per_dim:
        cfg["pq_bytes_per_dim"] = args.pq_bytes_per_dim
    emit("build", n=args.n, **build_in_child(db, cfg))

    import faiss

    ids, vectors = stored_vectors(store)
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    truth_rows = exact_top_k(vectors, queries, 10)
    truth = ids[truth_rows]
    flat_facts = measure(lambda q: ids[flat.search(q, 10)[1]], queries, truth, repeat=1)
    emit("flat", n=args.n, **flat_facts)
    flat.reset()  # free its copy of the vectors

    for nprobe, refine in (tuple(map(int, pair.split(":"))) for pair in args.sweep.split(",") if pair):
        tuned = IndexCfg(flat_threshold=0, nprobe=nprobe, refine_factor=refine, use_gpu=False)
        index = IndexSet.latest(store, cfg=tuned).current("image", persist=False)[0]
        facts = measure(lambda q, index=index: index.search(q, 10)[1], queries, truth)
        emit("ivfpq", n=args.n, nlist=index.index.nlist, nprobe=nprobe, refine=refine, **facts,
             x_flat_qps=round(facts["qps"] / flat_facts["qps"], 1))  # fmt: skip

    if args.topup:
        store.add_items([ItemRecord(f"/new/{i}.jpg", "image", v)
                         for i, v in enumerate(clustered_embeddings(args.topup, seed=99))])  # fmt: skip
        started = time.perf_counter()
        index = IndexSet.latest(store, cfg=IndexCfg(flat_threshold=0, use_gpu=False)).current("image")[0]
        emit("topup", n=args.n, added=args.topup, seconds=round(time.perf_counter() - started, 2), count=len(index))

    if args.lancedb:
        sweep = [tuple(map(int, pair.split(":"))) for pair in args.lancedb_sweep.split(",")]
        lancedb_native(
            args.work, ids, vectors, queries, truth, sweep, args.lancedb.split(","), args.lancedb_nlist, args.reuse,
            args.lancedb_code_bytes,
        )  # fmt: skip
    del vectors


if __name__ == "__main__":
    main()
