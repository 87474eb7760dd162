"""Encoder benchmark: ours at each precision against Meta's reference in fp32, same weights, one process.

    python benchmarks/embed.py --towers vision text audio depth thermal imu --batch 8 --repeats 3

Full ``imagebind_huge`` towers with random weights (identical in both models). For each tower the runs
(reference fp32, ours fp32, ours bf16, and with ``--int8`` ours int8 through ONNX Runtime) are interleaved,
``--repeats`` times, and the medians compared: one JSON line per tower and precision with seconds per batch,
items/s, the speed-up over the reference, and the smallest cosine between our vector at that precision and
our fp32 vector (int8: also the export's seconds and the cache's size). ``--load`` also times loading one
tower against the whole model from a checkpoint file, each in a fresh process (seconds and peak RSS).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xsearch.encoder import cpu_flags
from xsearch.modalities import Tower
from xsearch.model import create_model, save_checkpoint
from xsearch.testing.inputs import sample_inputs


def reference_module():
    import torchvision.transforms.functional as tv_functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)
    from imagebind.models import imagebind_model

    return imagebind_model


def timed(run) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        run()
    return time.perf_counter() - start


def bench_tower(tower: str, reference, ours_fp32, ours_bf16, batch: int, repeats: int, int8=None) -> list[dict]:
    x = sample_inputs(batch=batch, seed=3)[tower]
    if tower == "audio":
        x = x[:, 0]  # one 2 s clip per item
    fast_input = x.to(torch.bfloat16) if x.is_floating_point() else x
    runs = {
        "reference fp32": lambda: reference({tower: x}),
        "ours fp32": lambda: ours_fp32.embed(tower, x),
        "ours bf16": lambda: ours_bf16.embed(tower, fast_input),
    }
    extra = {}
    if int8 is not None and int8.covers(Tower(tower)):
        started = time.perf_counter()
        int8.run(Tower(tower), x)  # exports and quantises once (timed here), then cached
        extra["export_seconds"] = round(time.perf_counter() - started, 1)
        extra["cache_mb"] = round(sum(f.stat().st_size for f in int8.cache.rglob("*.onnx")) / 2**20)
        runs["ours int8"] = lambda: int8.run(Tower(tower), x)
    for run in runs.values():  # warm-up (oneDNN picks its kernels on the first call)
        timed(run)
    times = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved: a noisy neighbour slows all three alike
        for name, run in runs.items():
            times[name].append(timed(run))
    with torch.inference_mode():
        exact = F.normalize(ours_fp32.embed(tower, x), dim=-1)
        fast = F.normalize(ours_bf16.embed(tower, fast_input).float(), dim=-1)
    cosines = {"ours fp32": 1.0, "ours bf16": float((exact * fast).sum(-1).min())}
    if "ours int8" in runs:
        quantised = F.normalize(int8.run(Tower(tower), x), dim=-1)
        cosines["ours int8"] = float((exact * quantised).sum(-1).min())
    base = statistics.median(times["reference fp32"])
    out = []
    for name, samples in times.items():
        median = statistics.median(samples)
        line = {"tower": tower, "run": name, "batch": batch, "seconds": round(median, 4)}
        line["items_per_s"] = round(batch / median, 2)
        line["x_reference"] = round(base / median, 2)
        if name in cosines:
            line["min_cosine_vs_fp32"] = round(cosines[name], 6)
        if name == "ours int8":
            line.update(extra)
        out.append(line)
    return out


# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
_LOAD = """
import sys, time
import torch
from xsearch.model import open_checkpoint
from xsearch.modalities import Tower
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
start = time.perf_counter()
source = open_checkpoint(sys.argv[1])
model = source.model([Tower(t) for t in sys.argv[2:]])
for p in model.parameters():
    p.data.sum()  # touch the weights: a memory-mapped load costs when the pages are read
print(time.perf_counter() - start, peak_mb())
"""


def bench_load(ours, towers: list[str]) -> list[dict]:
    """Loading one tower against all six from the same checkpoint file, each in a fresh process."""
    with tempfile.TemporaryDirectory() as scratch:
        path = save_checkpoint(ours, Path(scratch) / "huge.pt", notes={"architecture": "imagebind_huge"})
        out = []
        for wanted in [[t] for t in towers] + [["vision", "text", "audio", "depth", "thermal", "imu"]]:
            done = subprocess.run([sys.executable, "-c", _LOAD, str(path), *wanted], capture_output=True, text=True)
            seconds, rss_mb = map(float, done.stdout.split())
            out.append({"load": "+".join(wanted), "seconds": round(seconds, 2), "peak_rss_mb": round(rss_mb)})
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", nargs="*", default=["vision", "text", "audio", "depth", "thermal", "imu"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", action="store_true", help="also time tower-only loads against a full load")
    parser.add_argument("--int8", action="store_true", help="also ours int8 (ONNX Runtime; export timed, cached)")
    args = parser.parse_args()

    flags = sorted(cpu_flags() & {"amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512f"})
    env = {"cpu": platform.processor() or platform.machine(), "flags": flags, "threads": torch.get_num_threads()}
    print(json.dumps({"env": env, "torch": torch.__version__}), flush=True)
    torch.manual_seed(0)
    reference = reference_module().imagebind_huge(pretrained=False).eval()
    ours = create_model("imagebind_huge", device="meta")
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    ours.eval()
    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    # The int8 exports of the huge towers take gigabytes: they live only as long as the run.
    with tempfile.TemporaryDirectory(prefix="xsearch-int8-") as scratch:
        int8 = None
        if args.int8:
            from xsearch.int8 import Int8Towers

            int8 = Int8Towers(ours, cache=Path(scratch))
        for tower in args.towers:
            for line in bench_tower(tower, reference, ours, ours_bf16, args.batch, args.repeats, int8):
                print(json.dumps(line), flush=True)
    if args.load:
        del reference, ours_bf16
        for line in bench_load(ours, ["text", "audio"]):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
