"""int8 on CPUs without bf16 matrix units: each tower exported once to ONNX, its weights quantised to int8,
and run with ONNX Runtime (the optional extra ``xsearch[cpu]``).

Measured earlier on this project's CPUs: ONNX Runtime with dynamic int8 weights ran the vision tower at
3.6-3.9x the reference's fp32 with cosine 0.99964 to fp32, where PyTorch's own dynamic int8 reached 1.5-2.4x
at 0.9985. The recipe (``xsearch.quantise``, a weight at a time): ``MatMul`` weights int8 per channel,
activations quantised on the fly; the layer norms and the softmax stay in float. Activations are quantised
per batch, so a file's vector varies a little with the batch it is encoded in (cosine above 0.999, as to
fp32).

An export is cached in ``$XSEARCH_HOME/int8/`` under a key of the recipe's version, the architecture, the
input's rank (images and video clips differ) and a checksum of the tower's weights, so another checkpoint
never reuses it. It is written to a temporary folder and renamed into place when complete, under a lock,
with the sha256 of its model beside it: a killed export leaves nothing that a later run would take for a
finished one, and an export damaged, truncated or replaced by a link since is made again, never run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from xsearch.errors import UsageError, XsearchError
from xsearch.model.checkpoint import sha256_file
from xsearch.model.pretrained import xsearch_home
from xsearch.precision import onnxruntime_available
from xsearch.quantise import fold_weight_transposes, quantise_weights

log = logging.getLogger(__name__)

RECIPE = "int8-dynamic-per-channel-matmul-2"  # change it when the recipe changes: old exports are not reused
MODEL, CHECKSUM = "model.int8.onnx", "model.int8.onnx.sha256"
VERIFIED: set[tuple] = set()  # exports this process has checked (path, size, mtime, inode)
OPSET = 17


def require_onnxruntime() -> None:
    if not onnxruntime_available():
        raise UsageError(
            "precision int8 runs on ONNX Runtime, which is not installed: pip install 'xsearch[cpu]' "
            "(or choose --precision fp32 or bf16)",
            argument="precision",
        )


class _TowerInput(torch.nn.Module):
    """One tower of the model as a module of one input: what is exported."""

    def __init__(self, model, tower):
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.tower, x)


class Int8Towers:
    """ONNX Runtime sessions of a model's towers, exported and quantised on first use."""

    def __init__(self, model, cache: str | os.PathLike | None = None, threads: int | None = None):
        require_onnxruntime()
        self.model = model
        self.cache = Path(cache) if cache is not None else xsearch_home() / "int8"
        self.threads = threads
        self._sessions: dict[tuple, object] = {}

    def covers(self, tower) -> bool:
        return tower.spec.int8  # the modality table's tower entry says which export faithfully

    def run(self, tower, x: torch.Tensor) -> torch.Tensor:
        """``model.embed(tower, x)`` through the int8 session for ``x``'s shape (``[B, ...]`` of one clip)."""
        key = (tower, x.ndim)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._session(tower, x)
        array = x.numpy() if x.is_floating_point() or x.dtype == torch.long else x.long().numpy()
        return torch.from_numpy(session.run(None, {"x": array})[0])

    def key(self, tower, ndim: int) -> str:
        """The export's name: recipe, architecture, input rank and a checksum of the tower's weights."""
        crc = 0
        for part in ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors"):
            module = getattr(self.model, part)[tower.value]
            for tensor in module.state_dict().values():
                crc = zlib.crc32(tensor.detach().float().contiguous().numpy().tobytes(), crc)
        weights = "" if int8_dot_units() else "-7bit"
        return f"{RECIPE}{weights}-{self.model.cfg.name}-{tower.value}-{ndim}d-{crc:08x}"

    def _session(self, tower, example: torch.Tensor):
        import onnxruntime as ort

        path = self._exported(tower, example)
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _exported(self, tower, example: torch.Tensor) -> Path:
        """The export's file, checked against the checksum recorded when it was made: one that is damaged,
        truncated, planted through a link or left half-made is made again, never run."""
        key = self.key(tower, example.ndim)
        final = self.cache / key / MODEL
        if self._intact(self.cache / key):
            return final
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.cache / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise _cache_problem(self.cache, exc) from None
        with os.fdopen(descriptor) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one export at a time; a second process waits, then reuses it
            if self._intact(self.cache / key):
                return final
            for stale in self.cache.glob(f"{key}.*"):  # a killed export's folder (the lock is ours)
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
            log.warning("exporting the %s tower to int8 once (cached in %s)", tower.value, self.cache)
            try:
                building = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=self.cache))
                try:
                    self._export(tower, example, building)
                    (building / CHECKSUM).write_text(sha256_file(building / MODEL))
                    _remove(self.cache / key)
                    os.replace(building, self.cache / key)  # whole, or not at all
                finally:
                    shutil.rmtree(building, ignore_errors=True)
            except OSError as exc:
                raise _cache_problem(self.cache, exc) from None
        VERIFIED.add(_identity(final))
        return final

    def _intact(self, folder: Path) -> bool:
        """Whether ``folder`` holds a whole export: a real folder (not a link), its model matching the
        checksum recorded at export (hashed once per process while the file stays the same)."""
        model = folder / MODEL
        if folder.is_symlink() or not model.is_file() or model.is_symlink():
            if folder.is_symlink() or folder.exists():
                log.warning("%s: not a whole int8 export (a link, or half made); exporting again", folder)
            return False
        identity = _identity(model)
        if identity in VERIFIED:
            return True
        try:
            recorded = (folder / CHECKSUM).read_text().strip()
        except OSError:
            recorded = None
        if recorded != sha256_file(model):
            log.warning("%s: differs from the checksum recorded at export (damaged?); exporting again", model)
            return False
        VERIFIED.add(identity)
        return True

    def _export(self, tower, example: torch.Tensor, folder: Path) -> None:
        # The fp32 export goes to a folder of its own: a tower over 2 GB (ImageBind-huge's vision) is written
        # as one file per weight beside it, 2.5 GB that would otherwise stay in the cache for good.
        scratch = folder / "fp32"
        scratch.mkdir()
        fp32 = scratch / "model.onnx"
        module = _TowerInput(self.model, tower).eval()
        with torch.inference_mode(False), torch.no_grad(), _quiet():
            # Without the exporter's constant folding, which copied every weight (7.7 GB at the peak for
            # ImageBind-huge's vision tower); the one fold quantisation needs is made after, a weight at a time.
            torch.onnx.export(
                module,
                (example.to(torch.float32) if example.is_floating_point() else example,),
                str(fp32),
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=False,
            )
        fold_weight_transposes(fp32)
        quantise_weights(fp32, folder / MODEL, seven_bits=not int8_dot_units())  # a weight at a time
        shutil.rmtree(scratch)


@contextlib.contextmanager
def _quiet():
    """The exporter's notes to whoever writes models (tracer warnings with source paths) are not a user's
    business: kept for ``--debug``."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _identity(path: Path) -> tuple:
    info = path.stat()
    return (str(path), info.st_size, info.st_mtime_ns, info.st_ino)


def _remove(path: Path) -> None:
    """Whatever is at ``path``: a folder, a file or a link (never what a link points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _cache_problem(cache: Path, exc: OSError) -> XsearchError:
    reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
    return XsearchError(
        f"{cache}: cannot keep int8 exports here ({reason}); free space, set XSEARCH_HOME to a writable folder, "
        "or use --precision fp32",
        argument="precision",
    )


def int8_dot_units() -> bool:
    """Whether this CPU multiplies int8 with int32 sums (VNNI, AMX). Without them (AVX2 alone) ONNX Runtime's
    u8 x s8 kernels add pairs of products in 16 bits, which saturate: measured on an AVX2-only AMD EPYC,
    8-bit weights gave the tiny test vision tower a cosine of 0.983 to fp32, 7-bit weights (``reduce_range``,
    as ONNX Runtime advises for such CPUs) above 0.999."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:  # not Linux: assume the plain kernels, where 7 bits are the safe choice
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``[n, d]`` arrays (for the fidelity checks and the benchmark)."""
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
