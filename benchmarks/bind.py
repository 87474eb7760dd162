"""``xsearch bind`` on the CPU (or the GPU when there is one): what training an adapter costs and what it learns.

    python benchmarks/bind.py --pairs 2000 --test 200

Builds the synthetic sensor set (``xsearch.testing.synthetic.sensor_pairs``: photos, and readings that are a
fixed transform of them) with ``--pairs + --test`` photos, indexes the photos with the tiny random-weights
model, binds the first ``--pairs`` readings to their photos, then searches the photos with each of the
``--test`` readings never seen. Reports the bind's time (all of it, and the adapter's training alone, per
10,000 pairs and per epoch), held-out and test recall@1 with their chance levels, and the process's peak
memory; then the same for BasicMotions (40 recordings bound to their activities' names) when sktime is
installed. One JSON line each.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xsearch import Collection, Query
from xsearch.bind.train import bind
from xsearch.encoder import Encoder
from xsearch.model import create_model
from xsearch.options import BindOptions
from xsearch.testing import basic_motions
from xsearch.testing.media import gradient_image
from xsearch.testing.synthetic import sensor_pairs


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(root: Path, encoder, pairs: int, test: int) -> dict:
    found_pairs = sensor_pairs(root, n=pairs + test)
    collection = Collection.open(root / "db", encoder=encoder, query_limits=None)
    collection.index([root / "photos"], workers=0, progress=False)
    (root / "pairs.csv").write_text("reading,photo\n" + "".join(f"{r},{p}\n" for r, p in found_pairs[:pairs]))
    report = bind(collection, BindOptions("sonar", str(root / "pairs.csv"), "image", progress=False))
    hits = [
        collection.search(Query.input("sonar", reading), target="image", k=1)[0].uri == photo
        for reading, photo in found_pairs[pairs:]
    ]
    return {
        "set": "synthetic",
        "pairs": pairs,
        "photos": pairs + test,
        "seconds": round(report.seconds, 1),
        "train_seconds": round(report.train_seconds, 1),
        "train_seconds_per_10k_pairs_epoch": round(report.train_seconds / report.epochs * 10_000 / report.trained, 2),
        "epochs": report.epochs,
        "held_out_recall_at_1": round(report.recall_at_1, 3),
        "held_out_chance": round(report.chance_at_1, 4),
        "test_recall_at_1": round(float(np.mean(hits)), 3),
        "test_chance": round(1 / (pairs + test), 4),
        "peak_mb": round(peak_mb()),
    }


def motions(root: Path, encoder) -> dict | None:
    if basic_motions.ts_file("TRAIN") is None:
        return None
    train = basic_motions.write_split("TRAIN", root / "train")
    test = basic_motions.write_split("TEST", root / "test")
    (root / "pairs.csv").write_text(
        "recording,activity,label\n" + "".join(f"{path},{name.lower()},{name.lower()}\n" for path, name in train)
    )
    collection = Collection.open(root / "db", encoder=encoder, query_limits=None)
    gradient_image(root / "photo.jpg")  # the database the recordings are bound into
    collection.index([root / "photo.jpg"], workers=0, progress=False)
    report = bind(collection, BindOptions("motion", str(root / "pairs.csv"), "text", progress=False))
    collection.index([root / "test"], assign={str(root / "test"): "motion"}, workers=0, progress=False)
    labels = [label.lower() for label in basic_motions.LABELS]
    truth = {str(p): label.lower() for p, label in test}
    rows = collection.classify(labels, target="motion").as_json()
    return {
        "set": "BasicMotions",
        "pairs": report.pairs,
        "seconds": round(report.seconds, 1),
        "train_seconds": round(report.train_seconds, 1),
        "epochs": report.epochs,
        "test_accuracy": round(float(np.mean([r["label"] == truth[r["uri"]] for r in rows])), 3),
        "chance": 0.25,
        "peak_mb": round(peak_mb()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = Encoder(create_model("tiny_test"), device="auto", precision="fp32")
    with tempfile.TemporaryDirectory(prefix="xsearch-bind-") as scratch:
        started = time.perf_counter()
        print(json.dumps(synthetic(Path(scratch) / "synthetic", encoder, args.pairs, args.test)), flush=True)
        result = motions(Path(scratch) / "motions", encoder)
        if result is not None:
            print(json.dumps(result), flush=True)
        print(json.dumps({"device": str(encoder.device), "total_seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
