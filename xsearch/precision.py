"""Which precision ``--precision auto`` picks, and why: decided from the CPU's features and what is installed,
without importing torch (``xsearch info`` says it, and loads no model)."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import Literal, get_args

from xsearch.errors import UsageError

# The one list of precisions (the encoder, the model choice and the CLI read it): ``auto`` is resolved once.
Precision = Literal["auto", "fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(precision: str) -> str:
    """``precision`` when it is one of ``PRECISIONS``; else a ``UsageError`` listing them."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (expected {', '.join(PRECISIONS)})", argument="precision")
    return precision


# CPU features that make bf16 matmuls fast. With AMX bf16 is the fastest path measured (3.1-3.4x the
# reference); with AVX512-BF16 alone int8 measured faster on every tower (5.1-6.5x against 1.7-4.0x), so
# there bf16 is chosen only when ONNX Runtime is missing.
AMX_FLAGS = frozenset({"amx_bf16"})
FAST_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def auto_precision(
    on_gpu: bool, flags: frozenset[str] | None = None, onnxruntime: bool | None = None
) -> tuple[str, str]:
    """What ``"auto"`` picks on a CUDA GPU (``on_gpu``) or this CPU, and why."""
    if on_gpu:
        return "bf16", "a CUDA GPU"
    flags = cpu_flags() if flags is None else flags
    if AMX_FLAGS & flags:
        return "bf16", "a CPU with AMX (bf16 measured 3.1-3.4x fp32)"
    if onnxruntime_available() if onnxruntime is None else onnxruntime:
        return "int8", "a CPU without AMX, with ONNX Runtime (int8 measured fastest there)"
    if FAST_BF16_FLAGS & flags:
        return "bf16", "a CPU with AVX512-BF16 but without ONNX Runtime for int8 (pip install 'xsearch[cpu]')"
    return "fp32", "a CPU without bf16 instructions or ONNX Runtime for int8 (pip install 'xsearch[cpu]')"


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and onnx (the int8 path, ``xsearch[cpu]``) are installed: found without importing
    them (1.8 s) or torch, so that ``info`` can say what ``auto`` picks at once."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def cuda_visible() -> bool:
    """Whether ``--device auto`` would find a CUDA GPU: torch's answer when torch is loaded already, else
    whether the NVIDIA driver lists a GPU (Linux), so that asking loads no torch."""
    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.is_available()
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False
