"""GPU against CPU, in one call. The index: build (train + add) with the CPU recipe and with its centroids
found, and its rows assigned to lists, on the GPU (the same kind of files), then search with the CPU index,
with its candidates re-ranked on the device, and exactly on the device from the re-rank vectors: recall@10
against exact search, batch QPS, p50 of single queries. Encoders: items/s per tower, ours
(``Encoder.encode``, host in and out, its automatic precision) against Meta's reference on the same weights
in fp32 and under bf16 autocast. Photos: decode rate of generated JPEGs through the PIL path and batched
on the device, and an end-to-end ``Collection.index`` of them with each (tiny model with ``--quick``, else
the full towers with random weights).

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


def _encoder_rows(record, device: str, quick: bool) -> None:
    """Items/s per tower: the reference in fp32 and under bf16 autocast, and ours, on the same weights."""
    import sys

    import torchvision.transforms.functional as tv_functional

    from xsearch.encoder import Encoder
    from xsearch.model import IMAGEBIND_HUGE, TINY_TEST, create_model
    from xsearch.testing.inputs import sample_inputs

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)  # pytorchvideo's import
    from imagebind.models import imagebind_model

    cfg = TINY_TEST if quick else IMAGEBIND_HUGE
    sizes = {"out_embed_dim": cfg.embed_dim}
    for tower in ("vision", "text", "audio", "depth", "thermal", "imu"):
        t = cfg.tower(tower)
        sizes.update({f"{tower}_embed_dim": t.width, f"{tower}_num_blocks": t.layers, f"{tower}_num_heads": t.heads})
    torch.manual_seed(0)
    reference = imagebind_model.ImageBindModel(**sizes).eval()
    ours = create_model(cfg.name, device="meta")
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    encoder = Encoder(ours, device=device, precision="auto")  # moves (and casts) our copy
    reference.to(device)
    synchronise = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    repeats = 2 if quick else 5
    for tower, batch in {"vision": 128, "text": 512, "audio": 96}.items():
        batch = 4 if quick else batch
        x = sample_inputs(batch, seed=3, cfg=cfg)[tower]
        on_device = x.to(device)

        def reference_bf16(x=on_device, tower=tower):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                return reference({tower: x})

        runs = {
            "reference fp32": lambda x=on_device, tower=tower: reference({tower: x}),
            "reference bf16 autocast": reference_bf16,
            f"ours {encoder.precision}": lambda x=x, tower=tower: encoder.encode(tower, x),
        }
        medians = {}
        for name, run in runs.items():
            with torch.inference_mode():
                run()  # warm-up: kernels chosen, weights touched
                synchronise()
                times = []
                for _ in range(repeats):
                    _, took = _timed(lambda run=run: (run(), synchronise()))
                    times.append(took)
            medians[name] = statistics.median(times)
        for name, seconds in medians.items():
            record(
                f"embed: {tower}, {name}",
                n=batch,
                items_per_s=round(batch / seconds, 1),
                x_reference_bf16=round(medians["reference bf16 autocast"] / seconds, 2),
            )


def _photo_rows(record, device: str, count: int, megapixels: float, quick: bool) -> None:
    """Decode rates (PIL path vs batched on ``device``) and end-to-end indexing of generated JPEGs."""
    import tempfile
    from pathlib import Path

    from xsearch import Collection
    from xsearch.encoder import Encoder
    from xsearch.model import create_model
    from xsearch.preprocess import jpeg_batch
    from xsearch.preprocess.image import preprocess_image
    from xsearch.testing.media import gradient_image

    side = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    with tempfile.TemporaryDirectory(prefix="xsearch-gpu-bench-") as scratch:
        folder = Path(scratch) / "photos"
        folder.mkdir()
        files = [gradient_image(folder / f"{i}.jpg", size=(side, side * 3 // 4), seed=i) for i in range(count)]
        _, took = _timed(lambda: [preprocess_image(f) for f in files])
        record("decode: PIL path, 1 process", n=count, files_per_s=round(count / took, 1), megapixels=megapixels)
        if jpeg_batch.available():
            datas = [f.read_bytes() for f in files]
            jpeg_batch.pixels_from_jpegs(datas[:2], 224, device)  # warm-up
            _, took = _timed(lambda: jpeg_batch.pixels_from_jpegs(datas, 224, device))
            record(f"decode: batched on {device}", n=count, files_per_s=round(count / took, 1), megapixels=megapixels)
        torch.manual_seed(0)
        model = create_model("tiny_test" if quick else "imagebind_huge", towers=["vision"])
        for gpu_decode in (False, True) if jpeg_batch.available() else (False,):
            encoder = Encoder(model, device=device, precision="auto")
            collection = Collection.open(Path(scratch) / f"db-{gpu_decode}", encoder=encoder)
            report = collection.index([folder], gpu_decode=gpu_decode)
            name = f"index: {'batched decode' if gpu_decode else 'PIL decode'}, {encoder.precision} on {device}"
            record(name, n=count, files_per_s=round(report.embedded / report.seconds, 1), indexed=report.indexed)


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
    record(f"build: centroids and lists on {trained_on}", seconds=round(built, 2), code_size=gpu_built.index.code_size)
    record("search: CPU IVF-PQ + re-rank", **_search_figures(cpu, queries, truth, k))
    cpu.use_exact(args.device, budget_bytes=0)  # past any budget: CPU IVF candidates, re-ranked on the device
    record(f"search: CPU IVF-PQ + re-rank on {args.device}", **_search_figures(cpu, queries, truth, k))
    if cpu.use_exact(args.device):
        record(f"search: exact on {args.device}", **_search_figures(cpu, queries, truth, k))
    else:
        record(f"search: exact on {args.device}", skipped="vectors past the memory budget")
    _encoder_rows(record, args.device, args.quick)
    _photo_rows(record, args.device, 24 if args.quick else 512, 2.0 if args.quick else 12.0, args.quick)
    print(f"\n{platform.node()}, torch {torch.__version__}, {args.device}")
    print("| row | n | seconds | recall@10 | batch QPS | p50 ms | items/s | files/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        keys = ("seconds", "recall_at_10", "batch_qps", "p50_ms", "items_per_s", "files_per_s")
        cells = [row.get(key, "") for key in keys]
        print(f"| {row['row']} | {row['n']:,} | " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
