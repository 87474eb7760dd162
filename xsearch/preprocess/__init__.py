"""Preprocessing: one module per modality, each a pure function ``file -> model-ready tensor``.

``preprocess_file(path, modality)`` dispatches; ``PreprocessCfg`` gathers the per-modality configs whose
defaults are the constants that belong to the official ImageBind weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from xsearch.modalities import Modality
from xsearch.preprocess.audio import AudioCfg, decode_audio, waveform_to_clips
from xsearch.preprocess.image import ImageCfg, image_to_tensor, load_image
from xsearch.preprocess.imu import ImuCfg, preprocess_imu
from xsearch.preprocess.single_channel import (
    DEPTH,
    THERMAL,
    SingleChannelCfg,
    load_single_channel,
    map_to_tensor,
)
from xsearch.preprocess.text import TextCfg, get_tokenizer, preprocess_text, preprocess_text_file
from xsearch.preprocess.video import VideoCfg, decode_video, frames_to_clips


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
    return preprocess_with_metadata(path, modality, cfg, thumbnail=False).tensor


@dataclass
class Preprocessed:
    """Model input for one file plus what a results page shows about it (``items`` metadata columns)."""

    tensor: torch.Tensor
    metadata: dict = field(default_factory=dict)  # width, height, duration, sample_rate, thumbnail (JPEG)


def preprocess_with_metadata(
    path: str | os.PathLike, modality: Modality | str, cfg: PreprocessCfg = PreprocessCfg(), thumbnail: bool = True
) -> Preprocessed:
    """Model input for ``path`` as ``modality``, with the size, duration and (when ``thumbnail``) a preview
    made from the pixels already decoded. The one place that maps a modality to its preprocessing."""
    from xsearch import thumbnails

    modality = Modality.parse(modality)
    if modality is Modality.IMAGE:
        image = load_image(path, cfg.image)
        meta = {"width": image.width, "height": image.height}
        if thumbnail:
            meta["thumbnail"] = thumbnails.jpeg_thumbnail(image)
        return Preprocessed(image_to_tensor(image, cfg.image), meta)
    if modality is Modality.VIDEO:
        clips, duration = decode_video(path, cfg.video)
        first = clips[0][0]
        meta = {"width": first.shape[1], "height": first.shape[0], "duration": duration}
        if thumbnail:
            meta["thumbnail"] = thumbnails.frame_thumbnail(clips[len(clips) // 2][0])
        return Preprocessed(frames_to_clips(clips, cfg.video), meta)
    if modality is Modality.AUDIO:
        waveform, rate = decode_audio(path, cfg.audio)
        meta = {"duration": waveform.shape[-1] / rate, "sample_rate": rate}
        return Preprocessed(waveform_to_clips(waveform, rate, cfg.audio), meta)
    if modality in (Modality.DEPTH, Modality.THERMAL):
        map_cfg = cfg.depth if modality is Modality.DEPTH else cfg.thermal
        array = load_single_channel(path, map_cfg)
        meta = {"width": array.shape[1], "height": array.shape[0]}
        if thumbnail:
            meta["thumbnail"] = thumbnails.map_thumbnail(array)
        return Preprocessed(map_to_tensor(array, map_cfg), meta)
    if modality is Modality.TEXT:
        return Preprocessed(preprocess_text_file(path, cfg.text))
    if modality is Modality.IMU:
        return Preprocessed(preprocess_imu(path, cfg.imu))
    raise ValueError(f"no preprocessing for {modality}")


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
    "preprocess_with_metadata",
    "preprocess_text",
]
