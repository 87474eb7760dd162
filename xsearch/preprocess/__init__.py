"""Preprocessing: one module per modality, each a pure function ``file -> model-ready tensor``.

``preprocess_file(path, modality)`` dispatches; ``PreprocessCfg`` gathers the per-modality configs whose
defaults are the constants that belong to the official ImageBind weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from xsearch.modalities import Modality
from xsearch.preprocess.audio import AudioCfg, preprocess_audio
from xsearch.preprocess.image import ImageCfg, preprocess_image
from xsearch.preprocess.imu import ImuCfg, preprocess_imu
from xsearch.preprocess.single_channel import DEPTH, THERMAL, SingleChannelCfg, preprocess_depth, preprocess_thermal
from xsearch.preprocess.text import TextCfg, get_tokenizer, preprocess_text, preprocess_text_file
from xsearch.preprocess.video import VideoCfg, preprocess_video


@dataclass(frozen=True)
class PreprocessCfg:
    image: ImageCfg = field(default_factory=ImageCfg)
    video: VideoCfg = field(default_factory=VideoCfg)
    text: TextCfg = field(default_factory=TextCfg)
    audio: AudioCfg = field(default_factory=AudioCfg)
    depth: SingleChannelCfg = DEPTH
    thermal: SingleChannelCfg = THERMAL
    imu: ImuCfg = field(default_factory=ImuCfg)


def preprocess_file(
    path: str | os.PathLike, modality: Modality | str, cfg: PreprocessCfg = PreprocessCfg()
) -> torch.Tensor:
    """Decode and preprocess one file as ``modality``; raises ``DecodeError`` naming the file on failure."""
    modality = Modality.parse(modality)
    if modality is Modality.IMAGE:
        return preprocess_image(path, cfg.image)
    if modality is Modality.VIDEO:
        return preprocess_video(path, cfg.video)
    if modality is Modality.TEXT:
        return preprocess_text_file(path, cfg.text)
    if modality is Modality.AUDIO:
        return preprocess_audio(path, cfg.audio)
    if modality is Modality.DEPTH:
        return preprocess_depth(path, cfg.depth)
    if modality is Modality.THERMAL:
        return preprocess_thermal(path, cfg.thermal)
    if modality is Modality.IMU:
        return preprocess_imu(path, cfg.imu)
    raise ValueError(f"no preprocessing for {modality}")


__all__ = [
    "AudioCfg",
    "ImageCfg",
    "ImuCfg",
    "PreprocessCfg",
    "SingleChannelCfg",
    "TextCfg",
    "VideoCfg",
    "get_tokenizer",
    "preprocess_file",
    "preprocess_text",
]
