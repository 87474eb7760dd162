"""Preprocessing: one module per modality, each a pure function ``file -> model-ready tensor``.

Which function runs for which modality is the modality table's business (``xsearch.modalities``); this
package holds the functions and ``PreprocessCfg``, the per-modality configs of one model. Input shapes come
from the model's config (``PreprocessCfg.for_model(model.cfg)``, the open_clip pattern); the other
constants (CLIP mean/std, fbank normalisation) are the ones the official weights were trained with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from xsearch.modalities import REGISTRY, Modality
from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg
from xsearch.preprocess.audio import AudioCfg
from xsearch.preprocess.image import ImageCfg
from xsearch.preprocess.imu import ImuCfg
from xsearch.preprocess.prepared import Preprocessed
from xsearch.preprocess.single_channel import SingleChannelCfg
from xsearch.preprocess.text import TextCfg, get_tokenizer, preprocess_text
from xsearch.preprocess.video import VideoCfg


class PreprocessCfg(Mapping):
    """The preprocessing configs of one model, one per registered modality: ``cfg[Modality.AUDIO]`` or
    ``cfg.audio``.

    Example
    -------
    >>> cfg = PreprocessCfg.for_model(IMAGEBIND_HUGE)
    >>> cfg.image.size, cfg.text.context_length
    (224, 77)
    """

    # The built-in modalities' configs, declared for readers and IDEs (``__getattr__`` serves any modality).
    image: ImageCfg
    video: VideoCfg
    text: TextCfg
    audio: AudioCfg
    depth: SingleChannelCfg
    thermal: SingleChannelCfg
    imu: ImuCfg

    def __init__(self, model: ImageBindCfg = IMAGEBIND_HUGE, overrides: Mapping | None = None):
        self.model = model
        self._cfgs = {m: s.cfg_for(model) for m, s in REGISTRY.items()}
        self._cfgs.update({Modality(k): v for k, v in (overrides or {}).items()})

    @classmethod
    def for_model(cls, model: ImageBindCfg, **overrides) -> PreprocessCfg:
        """Configs whose input shapes are ``model``'s; ``overrides`` replace whole configs by modality name."""
        return cls(model, overrides)

    def __getitem__(self, modality: Modality | str):
        modality = Modality(modality)
        if modality not in self._cfgs:  # registered after this config was made
            self._cfgs[modality] = modality.spec.cfg_for(self.model)
        return self._cfgs[modality]

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __iter__(self):
        return iter(self._cfgs)

    def __len__(self) -> int:
        return len(self._cfgs)

    def __reduce__(self):  # worker processes get the same configs
        return (PreprocessCfg, (self.model, dict(self._cfgs)))


def preprocess_with_metadata(
    path: str | os.PathLike, modality: Modality | str, cfg: PreprocessCfg | None = None, thumbnail: bool = True
) -> Preprocessed:
    """Model input for ``path`` as ``modality`` (images as ``uint8`` pixels, which ``Encoder.encode``
    normalises), with the size, duration and (when ``thumbnail``) a preview made from the pixels already
    decoded. Raises ``DecodeError`` naming the file on failure."""
    modality = Modality(modality)
    cfg = cfg if cfg is not None else PreprocessCfg()
    return modality.spec.preprocess_fn()(path, cfg[modality], thumbnail)


def preprocess_file(
    path: str | os.PathLike, modality: Modality | str, cfg: PreprocessCfg | None = None
) -> torch.Tensor:
    """Decode and preprocess one file as ``modality`` into model input; raises ``DecodeError`` naming the file
    on failure. (``preprocess_with_metadata`` may hand over ``uint8`` pixels, which the encoder normalises;
    this returns the float input the model takes.)"""
    modality = Modality(modality)
    cfg = cfg if cfg is not None else PreprocessCfg()
    tensor = preprocess_with_metadata(path, modality, cfg, thumbnail=False).tensor
    return cfg[modality].normalise(tensor) if tensor.dtype == torch.uint8 else tensor


__all__ = [
    "AudioCfg",
    "ImageCfg",
    "ImuCfg",
    "PreprocessCfg",
    "Preprocessed",
    "SingleChannelCfg",
    "TextCfg",
    "VideoCfg",
    "get_tokenizer",
    "preprocess_file",
    "preprocess_text",
    "preprocess_with_metadata",
]
