"""Audio: file -> ``[3, 1, 128, 204]`` normalised log-mel clips.

As the reference: resample to 16 kHz (``torchaudio.functional.resample``), cut ``clips`` windows of 2 s at
evenly spaced starts (``i * (duration - 2) / clips``), per clip subtract the mean, Kaldi fbank (128 mel bins,
Hanning window, 25 ms frames, 10 ms shift, no dither), pad or crop to 204 frames, normalise with the
AudioSet mean/std. Decoding goes through PyAV (FFmpeg bundled: WAV, FLAC, MP3, OGG/Opus, M4A, and the
audio track of videos). Multi-channel audio is averaged to mono (the reference reads channel 0 only); a clip
shorter than one 25 ms frame is zero-padded to one frame instead of failing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
import torchaudio

from xsearch.errors import DecodeError, NoStreamError
from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg
from xsearch.preprocess._av import describe, open_container
from xsearch.preprocess.prepared import Preprocessed


@dataclass(frozen=True)
class AudioCfg:
    sample_rate: int = 16000
    clip_seconds: int = 2
    clips: int = 3
    mel_bins: int = IMAGEBIND_HUGE.audio_mel_bins
    target_frames: int = IMAGEBIND_HUGE.audio_target_len
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    mean: float = -4.268
    std: float = 9.138
    max_seconds: float = 4 * 3600.0  # longer files are refused: decoding them whole would take gigabytes

    @classmethod
    def for_model(cls, model: ImageBindCfg) -> AudioCfg:
        return cls(mel_bins=model.audio_mel_bins, target_frames=model.audio_target_len)


def decode_audio(path: str | os.PathLike, cfg: AudioCfg = AudioCfg()) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream to a mono float32 waveform ``[1, N]`` in [-1, 1] and its rate."""
    name = os.fspath(path)
    with open_container(path) as container:
        if not container.streams.audio:
            raise NoStreamError(name, "no audio stream")
        stream = container.streams.audio[0]
        rate = stream.sample_rate or stream.codec_context.sample_rate
        if not rate:
            raise DecodeError(name, "audio stream has no sample rate")
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        if duration is not None and duration > cfg.max_seconds:
            raise DecodeError(
                name, f"audio is {duration / 3600:.1f} h long, above the {cfg.max_seconds / 3600:g} h limit"
            )
        # Packed float at the native rate and layout: channel averaging happens below, in float.
        resampler = av.AudioResampler(format="flt", rate=rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1, out.layout.nb_channels))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1, out.layout.nb_channels))
        except av.FFmpegError as exc:
            if not chunks:
                raise DecodeError(name, f"audio data is corrupt ({describe(exc)})") from None
            # A truncated tail: keep what decoded, as players do.
    if not chunks:
        raise DecodeError(name, "no audio samples")
    samples = np.concatenate(chunks, axis=0)
    if samples.shape[0] == 0:
        raise DecodeError(name, "no audio samples")
    mono = samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise DecodeError(name, "audio contains NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(mono)).unsqueeze(0), int(rate)


def clip_starts(duration: float, clip_seconds: float, clips: int) -> list[Fraction]:
    """Evenly spaced clip starts in seconds, as pytorchvideo's ``ConstantClipsPerVideoSampler``."""
    step = Fraction(max(duration - clip_seconds, 0)) / clips
    return [step * i for i in range(clips)]


def waveform_to_fbank(waveform: torch.Tensor, cfg: AudioCfg = AudioCfg()) -> torch.Tensor:
    """One zero-mean clip ``[1, n]`` at ``cfg.sample_rate`` -> log-mel ``[1, mel_bins, target_frames]``."""
    frame = int(cfg.sample_rate * cfg.frame_length_ms / 1000)
    if waveform.shape[-1] < frame:
        waveform = torch.nn.functional.pad(waveform, (0, frame - waveform.shape[-1]))
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform,
        htk_compat=True,
        sample_frequency=cfg.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=cfg.mel_bins,
        dither=0.0,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
    ).transpose(0, 1)
    missing = cfg.target_frames - fbank.shape[1]
    if missing > 0:
        fbank = torch.nn.functional.pad(fbank, (0, missing))
    return fbank[:, : cfg.target_frames].unsqueeze(0)


def waveform_to_clips(waveform: torch.Tensor, sample_rate: int, cfg: AudioCfg = AudioCfg()) -> torch.Tensor:
    """Mono waveform ``[1, N]`` -> normalised clips ``[clips, 1, mel_bins, target_frames]``."""
    if sample_rate != cfg.sample_rate:
        waveform = torchaudio.functional.resample(waveform, orig_freq=sample_rate, new_freq=cfg.sample_rate)
    duration = waveform.shape[1] / cfg.sample_rate
    # The reference subtracts each clip's mean in place, on a view of the whole waveform, so overlapping
    # clips (files shorter than 6 s) see the earlier clips' offsets. The released weights were evaluated
    # with that pipeline; we reproduce it on a copy.
    waveform = waveform.clone()
    clips = []
    for start in clip_starts(duration, cfg.clip_seconds, cfg.clips):
        lo = int(start * cfg.sample_rate)
        hi = int((start + cfg.clip_seconds) * cfg.sample_rate)
        clip = waveform[:, lo:hi]
        clip -= clip.mean()
        clips.append(waveform_to_fbank(clip, cfg))
    return (torch.stack(clips) - cfg.mean) / cfg.std


def preprocess_audio(path: str | os.PathLike, cfg: AudioCfg = AudioCfg()) -> torch.Tensor:
    """Audio file -> ``[3, 1, 128, 204]`` float32 model input (3 clips of 2 s)."""
    waveform, rate = decode_audio(path, cfg)
    return waveform_to_clips(waveform, rate, cfg)


def prepare(path, cfg: AudioCfg, thumbnail: bool = True) -> Preprocessed:
    """Model input, duration, sample rate and (when ``thumbnail``) a picture of the whole waveform."""
    from xsearch import thumbnails

    waveform, rate = decode_audio(path, cfg)
    meta = {"duration": waveform.shape[-1] / rate, "sample_rate": rate}
    if thumbnail:
        meta["thumbnail"] = thumbnails.waveform_thumbnail(waveform[0].numpy())
    return Preprocessed(waveform_to_clips(waveform, rate, cfg), meta)
