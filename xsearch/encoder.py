"""Encoder: preprocessed batches -> L2-normalised float32 embeddings, on CPU or CUDA.

Precision: ``"fp32"`` (the parity path), ``"bf16"`` (weights and activations in bfloat16: several times faster
on GPUs and on CPUs with AMX or AVX512-BF16, whose matrix units PyTorch's oneDNN uses; cosine to the fp32
vector above 0.999, see BENCHMARKS.md) or ``"int8"`` (CPUs without those units: each tower exported to ONNX
with int8 weights and run by ONNX Runtime, ``xsearch.int8``). ``"auto"`` picks bf16 where the hardware has it,
int8 where ONNX Runtime is installed on other CPUs, else fp32. What comes back is always float32 unit vectors
on the CPU, ``[B, embed_dim]``. Clip axes (audio ``[B, 3, ...]``, video ``[B, 15, ...]``) are averaged inside
the model, then re-normalised here.

Built from a checkpoint (``ModelChoice(...).load()``), an encoder loads each tower the first time a batch needs
it. It takes tensors only: files are decoded by ``xsearch.decode``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from xsearch.decode.files import Decoded, Outcome  # records of files: the encoder decodes nothing
from xsearch.errors import UsageError
from xsearch.modalities import REGISTRY, Modality, Tower, as_tower
from xsearch.model.imagebind import ImageBind
from xsearch.precision import Precision, auto_precision, check_precision
from xsearch.preprocess import PreprocessCfg, get_tokenizer

log = logging.getLogger(__name__)


NAN = "the model produced NaN for this file"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}  # int8: fp32 weights, exported


def resolve_precision(
    precision: str, device: torch.device, flags: frozenset[str] | None = None, onnxruntime: bool | None = None
) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA and on CPUs with AMX; on other CPUs ``"int8"`` where ONNX Runtime is
    installed (``xsearch[cpu]``), else ``"bf16"`` with AVX512-BF16, else ``"fp32"`` (the fastest path measured
    at cosine >= 0.999 for each kind of CPU). ``"int8"`` is a CPU path."""
    from xsearch.int8 import require_onnxruntime

    check_precision(precision)
    if precision == "int8":
        if device.type != "cpu":
            raise UsageError("precision int8 runs on the CPU (use bf16 on a GPU)", argument="precision")
        if onnxruntime is None:
            require_onnxruntime()
        elif not onnxruntime:
            raise UsageError("precision int8 needs ONNX Runtime: pip install 'xsearch[cpu]'", argument="precision")
    return auto_precision(device.type == "cuda", flags, onnxruntime)[0] if precision == "auto" else precision


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
        self.int8 = None
        if self.precision == "int8":
            from xsearch.int8 import Int8Towers

            self.int8 = Int8Towers(self.model)
        # Input shapes belong to the model: its config makes the preprocessing config.
        self.preprocess = preprocess if preprocess is not None else PreprocessCfg.for_model(model.cfg)
        self.model_id = model.model_id
        self._lock = threading.RLock()  # one batch at a time through the model, whoever asks (serve's threads)
        self._adapters: dict[str, torch.nn.Module] = {}  # bound modalities' adapters, by weights checksum
        self._runners: dict[Tower, Callable[[torch.Tensor], torch.Tensor]] = {}  # each tower's, chosen once

    def __getstate__(self) -> dict:  # shipped to a cluster's actors: the lock and the runners stay here
        return {key: value for key, value in self.__dict__.items() if key not in ("_lock", "_runners")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._runners = {}

    def _ensure(self, tower: Tower) -> None:
        if tower in self.model.towers:
            return
        if self.towers is None:
            raise UsageError(f"this encoder's model has no {tower} tower")
        log.info("loading the %s tower", tower)
        self.towers.add(self.model, [tower])
        self.model.to(device=self.device, dtype=self.dtype)

    def _runner(self, tower: Tower) -> Callable[[torch.Tensor], torch.Tensor]:
        """How ``tower``'s batches run, chosen once, when the tower is first needed: through ONNX Runtime
        where this encoder is int8 and the tower exports faithfully (the modality table says), else the
        model in the encoder's precision."""
        runner = self._runners.get(tower)
        if runner is None:
            self._ensure(tower)
            quantised = self.int8 is not None and self.int8.covers(tower)
            embed = self._embed_int8 if quantised else self.model.embed
            runner = self._runners[tower] = functools.partial(embed, tower)
        return runner

    def _embed_int8(self, tower: Tower, x: torch.Tensor) -> torch.Tensor:
        """``model.embed`` through ONNX Runtime: clips flattened and averaged here, as the model does."""
        if x.ndim <= tower.spec.batch_ndim:
            return self.int8.run(tower, x)
        clips = x.shape[1]
        out = self.int8.run(tower, x.flatten(0, 1))
        return out.unflatten(0, (-1, clips)).mean(dim=1)

    @property
    def embed_dim(self) -> int:
        return self.model.cfg.embed_dim

    @torch.inference_mode()
    def encode(self, modality: Modality | Tower | str, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` of preprocessed inputs -> ``[B, embed_dim]`` float32 unit vectors on the CPU."""
        binding = _binding_of(modality)
        if binding is not None:
            return self._encode_bound(binding, batch)
        tower = as_tower(modality)
        with self._lock:
            run = self._runner(tower)
            x = batch.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:  # pixels as decode workers hand them over: normalised here, on the device
                x = self.preprocess[Modality(modality)].normalise(x)
            if x.is_floating_point():
                x = x.to(self.dtype)
            return F.normalize(run(x).float(), dim=-1).cpu()

    def _encode_bound(self, binding, batch: torch.Tensor) -> torch.Tensor:
        """A modality bound by ``xsearch bind``: its features (its frozen tower's embedding, or the array
        itself) through its adapter, in float32 (the adapter is small; its training ran in float32)."""
        from xsearch.bind.adapter import loaded

        features = batch if binding.feature_modality is None else self.encode(binding.feature_modality, batch)
        with self._lock:
            adapter = self._adapters.get(binding.sha256)
            if adapter is None:
                adapter = self._adapters[binding.sha256] = loaded(binding, self.device)
            out = adapter(features.to(self.device, dtype=torch.float32))
        return F.normalize(out.float(), dim=-1).cpu()

    def encode_stacked(self, decoded: Decoded, batch_size: int = 16) -> tuple[np.ndarray | None, str | None]:
        """A decoded chunk whose tensor stacks many inputs of its modality ``[N, ...]`` (a chunk of a file's
        segments) -> ``(float32 [N, dim], None)``, in batches of ``batch_size``; ``(None, reason)`` where
        ``encode_decoded`` would fail a file (the model's error, or NaN). Frees the model input."""
        inputs, decoded.tensor = decoded.tensor, None
        try:
            parts = [
                self.encode(decoded.modality, inputs[i : i + batch_size]).numpy()
                for i in range(0, len(inputs), batch_size)
            ]
        except (RuntimeError, ValueError) as exc:
            return None, _model_failed(exc)
        vectors = np.concatenate(parts) if parts else np.empty((0, self.embed_dim), np.float32)
        if not np.isfinite(vectors).all():
            return None, NAN
        return vectors, None

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.encode(Modality.TEXT, get_tokenizer(self.preprocess.text.context_length)(list(texts)))

    def encode_decoded(self, files: list[Decoded], batch_size: int = 16) -> list[Outcome]:
        """One ``Outcome`` per decoded file, in order: its unit vector, in batches of one modality, or its
        error (the decode's, or the model's); frees the model inputs. The indexer's batches, the cluster's
        actors, ``Collection.embed`` and query files all come here. JPEGs a worker left undecoded are decoded
        first, by ``xsearch.decode.deferred``."""
        if any(d.jpeg is not None for d in files):
            raise ValueError("JPEGs left for the device are decoded first (xsearch.decode.deferred.decode_jpegs)")
        encoded: dict[int, np.ndarray | str] = {}  # position -> vector, or why the model gave none
        groups: dict[Modality, list[int]] = defaultdict(list)
        for position, decoded in enumerate(files):
            if decoded.ok:
                groups[decoded.modality].append(position)
        for modality, positions in groups.items():
            for start in range(0, len(positions), batch_size):
                batch = positions[start : start + batch_size]
                encoded.update(zip(batch, self._encode_batch(modality, [files[p] for p in batch])))
        outcomes = []
        for position, decoded in enumerate(files):
            done = encoded.get(position)
            if isinstance(done, str):
                outcomes.append(Outcome.of(decoded).fail("encode", done))
            else:
                outcomes.append(Outcome.of(decoded, done))
        return outcomes

    def _encode_batch(self, modality: Modality, batch: list[Decoded]) -> list[np.ndarray | str]:
        """Each file's vector, or why it has none; a batch the model refuses is tried one file at a time."""
        try:
            vectors = self.encode(modality, torch.stack([d.tensor for d in batch])).numpy()
        except (RuntimeError, ValueError) as exc:  # e.g. out of GPU memory: fall back to one at a time
            if len(batch) == 1:
                return [_model_failed(exc)]
            log.warning("batch of %d %s files failed (%s); encoding one at a time", len(batch), modality, exc)
            return [self._encode_batch(modality, [decoded])[0] for decoded in batch]
        for decoded in batch:
            decoded.tensor = None  # free the decoded input now
        return [vector if np.isfinite(vector).all() else NAN for vector in vectors]


def _model_failed(exc: Exception) -> str:
    return f"the model failed ({exc})"


def _binding_of(modality: Modality | Tower | str):
    """The ``xsearch.bind.Binding`` of a bound modality, else ``None`` (a built-in one, or a tower)."""
    if isinstance(modality, Tower) or (not isinstance(modality, Modality) and modality not in Modality):
        return None
    spec = REGISTRY.get(Modality(modality))
    return spec.binding if spec is not None else None
