"""Moments benchmark: what cutting audio and video into moments costs, and how moments search at scale.

    python benchmarks/moments.py index --model tiny_test --minutes 2,60          # pipeline, memory, storage
    python benchmarks/moments.py index --model imagebind_huge --minutes 10 --video-minutes 1
    python benchmarks/moments.py search --n 1000000                               # 1M moments vs 1M items

``index``: for each length, a generated recording (16 kHz WAV: tones, noise, one event) and, with
``--video-minutes``, a generated video with a sound track are indexed with ``--moments`` into a fresh
database, in a child process (so its peak RSS, ``VmHWM``, is the run's own; decoding in-process,
``workers=0``, the most memory a run can hold). One JSON line each: seconds, moments, moments per second,
seconds per hour of media, peak RSS growth over the loaded model, and the bytes the moments add (the Lance
``moments`` table and the ``faiss-moments`` index files) per hour. ``imagebind_huge`` runs with random
weights (the cost does not depend on them) and only the towers the files need.

``search``: ``--n`` embedding-like vectors (``xsearch.testing.synthetic``) stored twice in one database,
as items (float32) and as the moments of ``--n / 100`` files (float16, ``Database.replace_moments``); both
indexed by ``IndexSet`` with the defaults; the same queries against each, interleaved: batch QPS (median of
3), single-query p50, recall@10 against exact search over the same stored vectors.
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

HOST = {"host": platform.node(), "cpu": platform.processor() or platform.machine()}
RATE = 16000


def emit(step: str, **facts) -> None:
    print(json.dumps({"step": step, **facts, **HOST}), flush=True)


def make_media(root: Path, minutes: float, video_minutes: float | None) -> list[Path]:
    from xsearch.testing.media import event_recording, write_event_video, write_wav

    root.mkdir(parents=True, exist_ok=True)
    seconds = minutes * 60
    files = [write_wav(root / f"talk-{minutes:g}min.wav", event_recording(seconds, RATE, seconds / 2), RATE)]
    if video_minutes:
        seconds = video_minutes * 60
        sound = event_recording(seconds, RATE, seconds / 3, seed=1)
        files.append(write_event_video(root / f"film-{video_minutes:g}min.mkv", seconds, seconds / 2, sound=sound))
    return files


_CHILD = """
import json, sys, time
from pathlib import Path
from xsearch import Collection
from xsearch.encoder import Encoder
from xsearch.modalities import Tower
from xsearch.model import create_model

def high_water_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) / 1024

arch, precision, db, path, towers = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
seconds_each = float(sys.argv[6])
encoder = Encoder(create_model(arch, towers=[Tower(t) for t in towers]), device="cpu", precision=precision)
base = high_water_mb()
started = time.perf_counter()
report = Collection(db, encoder=encoder).index([path], moment_seconds=seconds_each, workers=0)
seconds = time.perf_counter() - started
parts = (db / "moments.lance", db / "faiss-moments")
stored = sum(f.stat().st_size for d in parts for f in d.rglob("*") if f.is_file())
print(json.dumps({"seconds": round(seconds, 2), "moments": report.moments, "failed": report.failed,
                  "precision": encoder.precision, "rss_model_mb": round(base),
                  "rss_growth_mb": round(high_water_mb() - base), "moment_bytes": stored}))
"""


def index_step(args) -> None:
    work = args.work / "index"
    for minutes in [float(m) for m in args.minutes.split(",")]:
        media = make_media(work / "media" / f"{minutes:g}", minutes, args.video_minutes)
        for path in media:
            video = path.suffix == ".mkv"
            duration = (args.video_minutes if video else minutes) * 60
            db = work / f"db-{path.stem}"
            shutil.rmtree(db, ignore_errors=True)
            towers = "vision,audio" if video else "audio"
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    args.model,
                    args.precision,
                    str(db),
                    str(path),
                    towers,
                    str(args.seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            facts = json.loads(done.stdout.strip().splitlines()[-1])
            hours = duration / 3600
            emit(
                "index",
                model=args.model,
                file=path.name,
                moment_seconds=args.seconds,
                media_seconds=duration,
                **facts,
                moments_per_s=round(facts["moments"] / facts["seconds"], 1),
                seconds_per_media_hour=round(facts["seconds"] / hours, 1),
                moment_mb_per_hour=round(facts["moment_bytes"] / 1e6 / hours, 2),
            )


def search_step(args) -> None:
    from scale import measure  # this folder: batch QPS, p50, recall@10 measured as for items

    from xsearch.index import IndexCfg, IndexSet
    from xsearch.modalities import Modality
    from xsearch.moments import MomentCfg
    from xsearch.store import Database, ItemFilter, ItemRecord, Moment
    from xsearch.testing.synthetic import clustered_embeddings, exact_top_k

    db = args.work / "search-db"
    per_file, chunk = 100, 50_000
    if not args.reuse:
        shutil.rmtree(db, ignore_errors=True)
        store = Database.open(db, model_id="tiny_test:random-0", embed_dim=1024)
        store.keep_moments(MomentCfg())
        started = time.perf_counter()
        for start in range(0, args.n, chunk):
            vectors = clustered_embeddings(min(chunk, args.n - start), seed=1000 + start // chunk)
            store.add_items(
                [ItemRecord(f"/i/{start + i}.wav", Modality.AUDIO, v, id=start + i) for i, v in enumerate(vectors)]
            )
            records = []
            for f in range(0, len(vectors), per_file):
                file_id = (start + f) // per_file
                moments = [
                    Moment(Modality.AUDIO, 6.0 * j, 6.0 * (j + 1), v) for j, v in enumerate(vectors[f : f + per_file])
                ]
                records.append(ItemRecord(f"/m/{file_id}.wav", Modality.AUDIO, vectors[f], id=file_id, moments=moments))
            store.replace_moments(records)
        emit("store", n=args.n, seconds=round(time.perf_counter() - started, 1))
    store = Database.open(db, create=False)
    queries = clustered_embeddings(args.queries, seed=2)
    sides = {}
    for name in ("items", "moments"):
        view = store.view(name)
        started = time.perf_counter()
        index = IndexSet.latest(store, name, IndexCfg(use_gpu=False)).current("audio")[0]
        build = time.perf_counter() - started
        ids, parts = [], []
        for batch_ids, vectors in view.iter_vectors(ItemFilter(), 65536):
            ids.append(batch_ids)
            parts.append(vectors)
        ids, vectors = np.concatenate(ids), np.concatenate(parts)
        truth = ids[exact_top_k(vectors, queries, 10)]
        del vectors
        sides[name] = (index, truth)
        emit("build", side=name, n=len(index), kind=index.kind, seconds=round(build, 1))
    for attempt in range(2):  # interleaved: the machine is shared, so each side runs twice, alternating
        for name, (index, truth) in sides.items():
            facts = measure(lambda q, index=index: index.search(q, 10)[1], queries, truth)
            emit("search", side=name, attempt=attempt, n=len(index), **facts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["index", "search"])
    parser.add_argument("--model", default="tiny_test")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--minutes", default="2,60", help="recording lengths, comma-separated")
    parser.add_argument("--video-minutes", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=6.0, help="moment length (index --moment-seconds)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--reuse", action="store_true", help="search the database of an earlier run")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/xsearch-moments"),
        help="kept after the run for --reuse (gigabytes at --n 1000000): delete it when done",
    )
    args = parser.parse_args()
    index_step(args) if args.step == "index" else search_step(args)


if __name__ == "__main__":
    main()
