"""The index on a GPU against the CPU, in one call: build (train + add) with the CPU recipe and with its
centroids found on the GPU (the same kind of files), then search with the CPU index and exactly on the GPU
from the re-rank vectors: recall@10 against exact search, batch QPS, p50 of single queries.

    python benchmarks/gpu.py                      # on a CUDA machine: 1M vectors (add --n 10000000 for 10M)
    python benchmarks/gpu.py --device cpu --quick # every code path on small sizes, on any machine

Prints one JSON line per row, then a table. Vectors: ``xsearch.testing.synthetic.clustered_embeddings``
(low intrinsic dimension, like real embeddings; see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from xsearch.index import IndexCfg, VectorIndex
from xsearch.testing.synthetic import clustered_embeddings, exact_top_k, recall_at_k


def _timed(function):
    started = time.perf_counter()
    out = function()
    return out, time.perf_counter() - started


def _search_figures(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, k: int) -> dict:
    (_, found), seconds = _timed(lambda: index.search(queries, k))
    singles = []
    for query in queries[:200]:
        _, took = _timed(lambda q=query: index.search(q[None], k))
        singles.append(took * 1000)
    return {
        "recall_at_10": round(float(recall_at_k(found, truth)), 4),
        "batch_qps": round(len(queries) / seconds),
        "p50_ms": round(statistics.median(singles), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="small sizes: every code path in minutes")
    args = parser.parse_args()
    n, dim = (20_000, 256) if args.quick else (args.n, 1024)
    queries_n = min(args.queries, 200) if args.quick else args.queries
    k = 10
    vectors = clustered_embeddings(n, dim=dim, seed=1)
    queries = clustered_embeddings(queries_n, dim=dim, seed=2)
    truth = exact_top_k(vectors, queries, k)
    ids = np.arange(n, dtype=np.int64)
    on_gpu = args.device.startswith("cuda")
    rows = []

    def record(name: str, **figures) -> None:
        row = {"row": name, "n": n, "dim": dim, "device": args.device, **figures}
        rows.append(row)
        print(json.dumps(row), flush=True)

    cpu, built = _timed(lambda: VectorIndex.build(ids, vectors, IndexCfg(flat_threshold=0, use_gpu=False)))
    record("build: CPU recipe", seconds=round(built, 2), code_size=cpu.index.code_size)
    trained_on = "GPU" if on_gpu else "CPU (no GPU: the same path)"
    gpu_built, built = _timed(lambda: VectorIndex.build(ids, vectors, IndexCfg(flat_threshold=0, use_gpu=on_gpu)))
    record(f"build: centroids on {trained_on}", seconds=round(built, 2), code_size=gpu_built.index.code_size)
    record("search: CPU IVF-PQ + re-rank", **_search_figures(cpu, queries, truth, k))
    if cpu.use_exact(args.device):
        record(f"search: exact on {args.device}", **_search_figures(cpu, queries, truth, k))
    else:
        record(f"search: exact on {args.device}", skipped="vectors past the memory budget")
    print(f"\n{platform.node()}, torch {torch.__version__}, {args.device}")
    print("| row | n | seconds | recall@10 | batch QPS | p50 ms |\n| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cells = [row.get(key, "") for key in ("seconds", "recall_at_10", "batch_qps", "p50_ms")]
        print(f"| {row['row']} | {row['n']:,} | " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
