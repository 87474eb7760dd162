"""Peak memory of a tower's first int8 use: export to ONNX, quantise, open the session (random weights).

    python benchmarks/int8_export.py --tower vision --architecture imagebind_huge

Prints the model's resident size once built, and the process's peak resident size (sampled every 50 ms and
``ru_maxrss``) after the int8 session answers; the cache goes to a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import threading
import time


def resident_gb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1e6
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower", default="vision")
    parser.add_argument("--architecture", default="imagebind_huge")
    args = parser.parse_args()

    import torch

    from xsearch.int8 import Int8Towers
    from xsearch.modalities import Tower
    from xsearch.model import create_model
    from xsearch.model.config import get_config

    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], resident_gb())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    tower = Tower(args.tower)
    model = create_model(get_config(args.architecture), towers=[tower]).eval()
    base = resident_gb()
    inputs = {
        Tower.VISION: torch.randn(1, 3, 224, 224),
        Tower.AUDIO: torch.randn(1, 1, 128, 204),
        Tower.TEXT: torch.randint(0, 49408, (1, 77)),
    }
    cache = tempfile.mkdtemp(prefix="xsearch-int8-bench-")
    try:
        started = time.perf_counter()
        Int8Towers(model, cache=cache).run(tower, inputs[tower])
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in __import__("pathlib").Path(cache).rglob("*") if f.is_file()) / 1e9
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"{args.architecture} {args.tower}: model {base:.2f} GB, peak {max(peak[0], maxrss):.2f} GB, "
          f"first use {seconds:.0f} s, cache {size:.2f} GB")  # fmt: skip


if __name__ == "__main__":
    main()
