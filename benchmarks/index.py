"""Indexing benchmark: end-to-end files/s of ``Indexer.run`` against the encoder alone and decoding alone.

    python benchmarks/index.py --files 256 --model tiny_test --workers 1          # CPU, tiny model
    python benchmarks/index.py --files 2048 --model imagebind_huge --workers 15   # GPU machine

The corpus is generated (JPEG photos 640x480 by default, or a mix with ``--mix``). ``imagebind_huge`` runs
with random weights: throughput does not depend on the weights. Three numbers, same batch size:

- encoder only: preprocessed tensors already in memory, ``Encoder.encode`` in batches;
- decode only: the indexer's supervised decode pool over the files with ``--workers`` processes, no model;
- end to end: ``Indexer.run`` into a fresh database (scan, decode, encode, commits, FAISS update).

End to end close to ``min(encoder, decode)`` means the stages overlap; far below it means one waits.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from xsearch.encoder import Encoder  # noqa: E402
from xsearch.indexer.pipeline import Indexer  # noqa: E402
from xsearch.indexer.scan import Scanner, ScanOptions, Task  # noqa: E402
from xsearch.model import create_model  # noqa: E402
from xsearch.options import IndexOptions  # noqa: E402
from xsearch.store import Database  # noqa: E402


def make_corpus(root: Path, files: int, mix: bool) -> None:
    from xsearch.testing.media import gradient_image, tone, write_video, write_wav

    for i in range(files):
        kind = i % 4 if mix else 0
        if kind == 1:
            write_wav(root / f"s{i:05d}.wav", tone(10.0, 44100, 200 + i, seed=i), 44100)
        elif kind == 2:
            write_video(root / f"v{i:05d}.mp4", seconds=5.0, fps=25, size=(640, 360), seed=i)
        else:
            gradient_image(root / f"p{i:05d}.jpg", size=(640, 480), seed=i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=256)
    parser.add_argument("--model", default="tiny_test")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--mix", action="store_true", help="images, 10 s audio and 5 s 640x360 video")
    parser.add_argument("--ray", default=None, help="also index on Ray: 'local' (a cluster on this machine) or ADDRESS")
    parser.add_argument("--ray-actors", type=int, default=None)
    args = parser.parse_args()

    encoder = Encoder(create_model(args.model), device=args.device)
    cfg = IndexOptions(batch_size=args.batch_size, workers=args.workers, ray_actors=args.ray_actors)
    env = {
        "device": torch.cuda.get_device_name() if encoder.device.type == "cuda" else platform.processor() or "cpu",
        "model": args.model,
        "dtype": str(encoder.dtype).split(".")[-1],
        "batch_size": args.batch_size,
        "workers": args.workers,
        "files": args.files,
        "mix": args.mix,
    }

    def report(what: str, files: int, seconds: float, **extra) -> None:
        print(json.dumps({**env, "measure": what, "files_per_s": round(files / seconds, 2), **extra}), flush=True)

    work = Path(tempfile.mkdtemp(prefix="xsearch-bench-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        make_corpus(corpus, args.files, args.mix)
        candidates = [c for c in Scanner(ScanOptions()).scan([str(corpus)]) if isinstance(c, Task)]
        tasks = [Task(c.path, c.modality, c.size, c.mtime) for c in candidates]
        store = Database.open(work / "db", model_id=encoder.model_id, embed_dim=encoder.embed_dim)
        indexer = Indexer(store, encoder, cfg)

        list(indexer._decoded(tasks[:2]))  # start the fork server once, as a long run would have
        start = time.perf_counter()
        outcomes = [decoded for decoded, _ in indexer._decoded(tasks)]
        report("decode only", len(tasks), time.perf_counter() - start)

        by_modality: dict = {}
        for outcome in outcomes:
            by_modality.setdefault(outcome.modality, []).append(outcome.tensor)
        for modality, tensors in by_modality.items():
            encoder.encode(modality, torch.stack(tensors[: args.batch_size]))  # warm-up
            if encoder.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(tensors), args.batch_size):
                encoder.encode(modality, torch.stack(tensors[i : i + args.batch_size]))
            report(f"encoder only ({modality})", len(tensors), time.perf_counter() - start)
        del outcomes, by_modality

        start = time.perf_counter()
        run = indexer.run([str(corpus)])
        seconds = time.perf_counter() - start
        report("end to end", run.indexed, seconds, failed=run.failed, embed_seconds=round(run.embed_seconds, 2))
        if args.ray:
            run_on_ray(args, encoder, cfg, work, corpus, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_on_ray(args, encoder, cfg, work: Path, corpus: Path, report) -> None:
    """The same files through ``RayIndexer`` into a fresh store: files/s and the rate per encoder actor."""
    import ray

    from xsearch.indexer.cluster import RayIndexer, connect

    started_here = connect(args.ray)
    try:
        warm = Database.open(work / "ray-warm", model_id=encoder.model_id, embed_dim=encoder.embed_dim)
        small = work / "warm-corpus"
        small.mkdir()
        make_corpus(small, 4, args.mix)
        RayIndexer(warm, encoder, cfg).run([str(small)])  # workers and actors started once
        store = Database.open(work / "ray-db", model_id=encoder.model_id, embed_dim=encoder.embed_dim)
        indexer = RayIndexer(store, encoder, cfg)
        start = time.perf_counter()
        run = indexer.run([str(corpus)])
        seconds = time.perf_counter() - start
        actors = args.ray_actors or max(1, len([n for n in ray.nodes() if n["Alive"]]))
        report("end to end on ray", run.indexed, seconds, failed=run.failed, actors=actors,
               per_actor_files_per_s=round(run.indexed / seconds / actors, 2), nodes=len(run.nodes))  # fmt: skip
    finally:
        if started_here:
            ray.shutdown()


if __name__ == "__main__":
    main()
