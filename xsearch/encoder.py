"""Encoder: preprocessed batches -> L2-normalised float32 embeddings, on CPU or CUDA.

The model runs in ``dtype`` (float32 on CPU; bfloat16 weights on CUDA by default); what comes back is always
float32 unit vectors on the CPU, ``[B, embed_dim]``. Clip axes (audio ``[B, 3, ...]``, video
``[B, 15, ...]``) are averaged inside the model, then re-normalised here.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xsearch.errors import DecodeError, UsageError
from xsearch.modalities import Modality, Tower, as_tower, modality_of_path
from xsearch.model.imagebind import ImageBind
from xsearch.preprocess import PreprocessCfg, Preprocessed, get_tokenizer, preprocess_with_metadata

log = logging.getLogger(__name__)


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
        dtype: torch.dtype | None = None,
        preprocess: PreprocessCfg | None = None,
    ):
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        # Input shapes belong to the model: its config makes the preprocessing config.
        self.preprocess = preprocess if preprocess is not None else PreprocessCfg.for_model(model.cfg)
        self.model_id = model.model_id

    @classmethod
    def from_pretrained(
        cls, checkpoint: str | os.PathLike | None = None, architecture: str | None = None, device: str = "auto"
    ) -> Encoder:
        """An encoder around ``load_pretrained(checkpoint, architecture=...)`` (path, env, cache or download)."""
        from xsearch.model import load_pretrained

        device = resolve_device(device)  # a bad device fails before the checkpoint is read
        return cls(load_pretrained(checkpoint, architecture=architecture), device=device)

    @property
    def embed_dim(self) -> int:
        return self.model.cfg.embed_dim

    @torch.inference_mode()
    def encode(self, modality: Modality | Tower | str, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` of preprocessed inputs -> ``[B, embed_dim]`` float32 unit vectors on the CPU."""
        tower = as_tower(modality)
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
