"""Search benchmark: exact (torch matmul, FAISS flat) vs IVF-PQ + exact re-rank (CPU, and GPU when present).

    python benchmarks/search.py --n 100000 1000000 --queries 1000

Vectors come from ``xsearch/testing/synthetic.py``'s ``clustered_embeddings`` (low intrinsic dimension, like real
embeddings). Prints one JSON line per (N, method): build seconds, batch QPS, single-query p50/p99 latency,
recall@10 against exact search, and bytes per vector (index + re-rank copy).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from xsearch.index import IndexCfg, VectorIndex, gpu_available
from xsearch.testing.synthetic import clustered_embeddings, recall_at_k  # noqa: E402


def exact_torch(database: torch.Tensor, queries: torch.Tensor, k: int) -> np.ndarray:
    out = []
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ database.T
        out.append(scores.topk(k, dim=1).indices.cpu())
    return torch.cat(out).numpy()


def timed(fn, repeat: int = 1):
    start = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    return result, (time.perf_counter() - start) / repeat


def latencies(search_one, queries: np.ndarray, count: int = 100) -> tuple[float, float]:
    times = []
    for q in queries[:count]:
        start = time.perf_counter()
        search_one(q[None])
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def run(n: int, n_queries: int, k: int, report) -> None:
    base, gen_s = timed(lambda: clustered_embeddings(n, seed=1))
    queries = clustered_embeddings(n_queries, seed=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    db_t = torch.from_numpy(base).to(device, dtype)
    q_t = torch.from_numpy(queries).to(device, dtype)
    exact_torch(db_t, q_t[:8], k)  # warm-up
    truth, exact_s = timed(lambda: exact_torch(db_t, q_t, k))
    p50, p99 = latencies(lambda q: exact_torch(db_t, torch.from_numpy(q).to(device, dtype), k), queries)
    report(
        n,
        f"exact torch {device} {str(dtype).split('.')[-1]}",
        0.0,
        n_queries / exact_s,
        p50,
        p99,
        1.0,
        db_t.element_size() * base.shape[1],
    )
    db_t = q_t = None  # free the exact baseline's copy before building indices

    configs = [
        ("faiss flat cpu", IndexCfg(flat_threshold=n + 1, use_gpu=False)),
        ("faiss ivfpq cpu + rerank", IndexCfg(flat_threshold=0, use_gpu=False)),
    ]
    if gpu_available():
        configs.append(("faiss ivfpq gpu-trained + rerank", IndexCfg(flat_threshold=0, use_gpu=True)))
    for name, cfg in configs:
        index, build_s = timed(lambda cfg=cfg: VectorIndex.build(np.arange(n), base, cfg))
        index.search(queries[:8], k)
        (_, ids), batch_s = timed(lambda index=index: index.search(queries, k))
        p50, p99 = latencies(lambda q, index=index: index.search(q, k), queries)
        code_bytes = index.index.sa_code_size() if hasattr(index.index, "sa_code_size") else 0
        per_vector = (code_bytes or base.shape[1] * 4) + 8 + (0 if index.kind == "flat" else 2 * base.shape[1])
        report(n, f"{name} ({index.kind})", build_s, n_queries / batch_s, p50, p99, recall_at_k(ids, truth), per_vector)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()}"

    def report(n, method, build_s, qps, p50, p99, recall, bytes_per_vector):
        print(
            json.dumps(
                {
                    "n": n,
                    "method": method,
                    "build_s": round(build_s, 1),
                    "qps": round(qps, 1),
                    "p50_ms": round(p50, 2),
                    "p99_ms": round(p99, 2),
                    "recall@10": round(recall, 4),
                    "bytes_per_vector": bytes_per_vector,
                    "device": device,
                    "host": platform.node(),
                }
            ),
            flush=True,
        )

    for n in args.n:
        run(n, args.queries, args.k, report)


if __name__ == "__main__":
    main()
