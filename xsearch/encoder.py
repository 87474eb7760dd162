"""Encoder: preprocessed batches -> L2-normalised float32 embeddings, on CPU or CUDA.

Precision: ``"fp32"`` (the parity path) or ``"bf16"`` (weights and activations in bfloat16: several times
faster on GPUs and on CPUs with AMX or AVX512-BF16, whose matrix units PyTorch's oneDNN uses; cosine to the
fp32 vector above 0.999, see BENCHMARKS.md). ``"auto"`` picks bf16 where the hardware has it. What comes
back is always float32 unit vectors on the CPU, ``[B, embed_dim]``. Clip axes (audio ``[B, 3, ...]``,
video ``[B, 15, ...]``) are averaged inside the model, then re-normalised here.

Built from a checkpoint (``from_pretrained``), an encoder loads each tower the first time a batch needs it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from xsearch.errors import DecodeError, UsageError
from xsearch.modalities import Modality, Tower, as_tower, modality_of_path
from xsearch.model.imagebind import ImageBind
from xsearch.preprocess import PreprocessCfg, Preprocessed, get_tokenizer, preprocess_with_metadata

log = logging.getLogger(__name__)


Precision = Literal["auto", "fp32", "bf16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FAST_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # CPU features that make bf16 matmuls fast


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


def resolve_precision(precision: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA and on CPUs with AMX or AVX512-BF16, ``"fp32"`` elsewhere."""
    if precision not in ("auto", *_DTYPES):
        raise UsageError(f"unknown precision {precision!r} (expected auto, fp32 or bf16)", argument="precision")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if FAST_BF16_FLAGS & (cpu_flags() if flags is None else flags) else "fp32"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {str(device)!r} (expected auto, cpu or cuda)", argument="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for, but no CUDA GPU is available", argument="device")
    return device


@dataclass
class EncodedFile:
    """One file's outcome: an embedding, or the reason it has none."""

    path: str
    modality: Modality | None
    embedding: np.ndarray | None = None
    error: str | None = None
    thumbnail: bytes | None = None  # only when asked for (query inputs shown on a results page)

    def as_json(self) -> dict:
        if self.embedding is None:
            return {"error": self.error}
        return {"embedding": [round(float(v), 7) for v in self.embedding]}


class Encoder:
    """Batches of model input -> unit vectors.

    Example
    -------
    >>> from xsearch.model import create_model
    >>> encoder = Encoder(create_model("tiny_test"), device="cpu")
    >>> encoder.encode_text(["a dog barking"]).shape
    torch.Size([1, 1024])
    """

    def __init__(
        self,
        model: ImageBind,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        preprocess: PreprocessCfg | None = None,
        towers=None,
    ):
        """``model`` is moved to ``device`` and ``precision`` in place. ``towers`` (a ``TowerSource``) loads
        the towers ``model`` lacks when a batch first needs them."""
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = _DTYPES[self.precision]
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.towers = towers
        # Input shapes belong to the model: its config makes the preprocessing config.
        self.preprocess = preprocess if preprocess is not None else PreprocessCfg.for_model(model.cfg)
        self.model_id = model.model_id

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike | None = None,
        architecture: str | None = None,
        device: str = "auto",
        precision: Precision = "auto",
        verify: bool = False,
    ) -> Encoder:
        """An encoder over a checkpoint (path, ``XSEARCH_CHECKPOINT``, cache or download) whose towers load
        when first needed. ``verify`` re-hashes a cached download even when its size and time are unchanged."""
        from xsearch.model import open_checkpoint

        device = resolve_device(device)  # a bad device or precision fails before the checkpoint is read
        resolve_precision(precision, device)
        source = open_checkpoint(checkpoint, architecture=architecture, verify=verify)
        return cls(source.model(), device=device, precision=precision, towers=source)

    def _ensure(self, tower: Tower) -> None:
        if tower in self.model.towers:
            return
        if self.towers is None:
            raise UsageError(f"this encoder's model has no {tower} tower")
        log.info("loading the %s tower", tower)
        self.towers.add(self.model, [tower])
        self.model.to(device=self.device, dtype=self.dtype)

    @property
    def embed_dim(self) -> int:
        return self.model.cfg.embed_dim

    @torch.inference_mode()
    def encode(self, modality: Modality | Tower | str, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` of preprocessed inputs -> ``[B, embed_dim]`` float32 unit vectors on the CPU."""
        tower = as_tower(modality)
        self._ensure(tower)
        x = batch.to(self.device, non_blocking=True)
        if x.is_floating_point():
            x = x.to(self.dtype)
        out = self.model.embed(tower, x)
        return F.normalize(out.float(), dim=-1).cpu()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.encode(Modality.TEXT, get_tokenizer(self.preprocess.text.context_length)(list(texts)))

    def prepare(self, path: str | os.PathLike, modality: Modality | str, thumbnail: bool = False) -> Preprocessed:
        """``path`` decoded and preprocessed as ``modality`` for this model (``DecodeError`` on failure)."""
        return preprocess_with_metadata(path, modality, self.preprocess, thumbnail=thumbnail)

    def encode_files(
        self, paths, modality: Modality | str | None = None, batch_size: int = 16, thumbnails: bool = False
    ) -> list[EncodedFile]:
        """Embed files, grouped by modality, in input order.

        Each file's modality is ``modality`` when given, else what the indexer's rules make of its path
        (a folder named ``depth``, a stem ending ``_thermal``, the extension, the first bytes).

        A file that cannot be decoded gets an ``EncodedFile`` with ``error`` set; the others are embedded.
        With ``thumbnails``, each result also carries the preview made from the pixels it decoded.
        """
        modality = Modality(modality) if modality else None
        results: list[EncodedFile] = []
        pending: dict[Modality, list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for path in paths:
            path = os.fspath(path)
            kind = modality or modality_of_path(path)
            result = EncodedFile(path, kind)
            results.append(result)
            if kind is None:
                result.error = f"{path}: unknown file type (name its modality)"
                continue
            try:
                prepared = self.prepare(path, kind, thumbnail=thumbnails)
            except DecodeError as exc:
                result.error = str(exc)
                continue
            result.thumbnail = prepared.metadata.get("thumbnail")
            pending[kind].append((len(results) - 1, prepared.tensor))
        for kind, items in pending.items():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                vectors = self.encode(kind, torch.stack([x for _, x in chunk])).numpy()
                for (index, _), vector in zip(chunk, vectors):
                    results[index].embedding = vector
        return results
