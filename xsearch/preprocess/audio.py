"""Audio: file -> ``[3, 1, 128, 204]`` normalised log-mel clips.

As the reference: resample to 16 kHz (``torchaudio.functional.resample``), cut ``clips`` windows of 2 s at
evenly spaced starts (``i * (duration - 2) / clips``), per clip subtract the mean, Kaldi fbank (128 mel bins,
Hanning window, 25 ms frames, 10 ms shift, no dither), pad or crop to 204 frames, normalise with the
AudioSet mean/std. Decoding goes through PyAV (FFmpeg bundled: WAV, FLAC, MP3, OGG/Opus, M4A, and the
audio track of videos). Multi-channel audio is averaged to mono (the reference reads channel 0 only); a clip
shorter than one 25 ms frame is zero-padded to one frame instead of failing.

Memory stays bounded whatever the length: files longer than two minutes are decoded only around their
three clips (a seek each, with the same samples a decode from the start gives), and samples are counted
against ``max_seconds`` as they arrive, so a header without a duration cannot bypass the cap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
import torchaudio

from xsearch.errors import DecodeError, NoStreamError
from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg
from xsearch.preprocess.containers import describe, open_container
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
    max_seconds: float = 24 * 3600.0  # longer files are refused (counted as decoded, whatever the header says)
    whole_file_seconds: float = 120.0  # longer files are decoded only around their clips

    @classmethod
    def for_model(cls, model: ImageBindCfg) -> AudioCfg:
        return cls(mel_bins=model.audio_mel_bins, target_frames=model.audio_target_len)


_PREROLL_SECONDS = 1.0


class _LongerThan(Exception):
    """Internal: the whole-file decode passed the sample count it was allowed."""


def _audio_stream(container, name: str, cfg: AudioCfg):
    """The first audio stream, its sample rate and its duration from the header (``None`` when absent)."""
    if not container.streams.audio:
        raise NoStreamError(name, "no audio stream")
    stream = container.streams.audio[0]
    rate = stream.sample_rate or stream.codec_context.sample_rate
    if not rate:
        raise DecodeError(name, "audio stream has no sample rate")
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    if duration is not None and duration > cfg.max_seconds:
        raise DecodeError(name, _too_long(duration, cfg))
    return stream, int(rate), duration


def _too_long(seconds: float, cfg: AudioCfg) -> str:
    return f"audio is {seconds / 3600:.1f} h long, above the {cfg.max_seconds / 3600:g} h limit"


def _mono_pieces(container, stream, rate: int, name: str) -> Iterator[tuple[int | None, np.ndarray]]:
    """Decoded audio as ``(index of its first sample or None, mono float32 samples)`` pieces.

    The index comes from the frame's timestamp, so pieces after a seek are placed exactly; a damaged tail
    ends the stream (as players do), damage before any sample is an error.
    """
    resampler = av.AudioResampler(format="flt", rate=rate)  # packed float at the native rate and layout
    origin = stream.start_time or 0
    decoded = False
    try:
        for frame in container.decode(stream):
            first = None
            if frame.pts is not None and stream.time_base:
                first = round((frame.pts - origin) * stream.time_base * rate)
            for out in resampler.resample(frame):
                decoded = True
                yield first, out.to_ndarray().reshape(-1, out.layout.nb_channels).mean(axis=1, dtype=np.float32)
                first = None
        for out in resampler.resample(None):
            yield None, out.to_ndarray().reshape(-1, out.layout.nb_channels).mean(axis=1, dtype=np.float32)
    except av.FFmpegError as exc:
        if not decoded:
            raise DecodeError(name, f"audio data is corrupt ({describe(exc)})") from None


def _checked(name: str, pieces: list[np.ndarray]) -> np.ndarray:
    mono = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if mono.shape[0] == 0:
        raise DecodeError(name, "no audio samples")
    if not np.isfinite(mono).all():
        raise DecodeError(name, "audio contains NaN or infinite samples")
    return mono


def decode_audio(
    path: str | os.PathLike, cfg: AudioCfg = AudioCfg(), max_samples: int | None = None
) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream to a mono float32 waveform ``[1, N]`` in [-1, 1] and its rate.

    Samples are counted as they arrive: a file longer than ``cfg.max_seconds`` is refused whatever its
    header says (a FLAC written to a pipe has no duration).
    """
    name = os.fspath(path)
    with open_container(path) as container:
        stream, rate, _ = _audio_stream(container, name, cfg)
        pieces = list(_counted_pieces(container, stream, rate, name, cfg, max_samples))
    return torch.from_numpy(_checked(name, pieces)).unsqueeze(0), rate


def _count_samples(name: str, cfg: AudioCfg) -> int:
    """The samples of a file whose header does not say, by decoding and discarding them."""
    with open_container(name) as container:
        stream, rate, _ = _audio_stream(container, name, cfg)
        return sum(len(piece) for piece in _counted_pieces(container, stream, rate, name, cfg))


def _counted_pieces(container, stream, rate: int, name: str, cfg: AudioCfg, limit: int | None = None):
    """Mono pieces, counted as they arrive: past ``cfg.max_seconds`` a ``DecodeError``, past ``limit``
    samples (when below that cap) ``_LongerThan``."""
    cap, count = int(cfg.max_seconds * rate), 0
    for _, piece in _mono_pieces(container, stream, rate, name):
        count += len(piece)
        if limit is not None and limit < cap and count > limit:
            raise _LongerThan()
        if count > cap:
            raise DecodeError(name, _too_long(count / rate, cfg))
        yield piece


def _clip_windows(
    samples: int, rate: int, cfg: AudioCfg, starts: list | None = None
) -> list[tuple[int, int, int, int]]:
    """Per clip (at ``starts`` seconds; default: the file's evenly spaced ones): the native-rate span to
    decode and where the clip lies in its resampled output.

    ``(in_start, in_stop, clip_start, clip_stop)``. Spans start on a multiple of ``rate / gcd(rate, 16k)``
    input samples, where the resampler's output grid meets the input grid, so resampling a span gives the
    same samples as resampling the whole file; the margin covers the resampling filter's reach.
    """
    total_out = -(-samples * cfg.sample_rate // rate)  # the resampled length, as torchaudio makes it
    if starts is None:
        starts = clip_starts(total_out / cfg.sample_rate, cfg.clip_seconds, cfg.clips)
    windows = []
    for start in starts:
        lo = int(start * cfg.sample_rate)
        hi = min(int((start + cfg.clip_seconds) * cfg.sample_rate), total_out)
        windows.append(_output_window(lo, hi, samples, rate, cfg))
    return windows


def _output_window(lo: int, hi: int, samples: int, rate: int, cfg: AudioCfg) -> tuple[int, int, int, int]:
    """Resampled samples ``[lo, hi)`` -> ``(in_start, in_stop, lo, hi)`` with ``lo, hi`` made relative to
    the output of resampling the input span alone (see ``_clip_windows``)."""
    g = math.gcd(rate, cfg.sample_rate)
    step_in, step_out = rate // g, cfg.sample_rate // g
    margin = cfg.sample_rate // 4
    first = max(lo - margin, 0) // step_out
    last = -(-(hi + margin) // step_out)
    return first * step_in, min(last * step_in, samples), lo - first * step_out, hi - first * step_out


def _read_spans(name: str, spans: list[tuple[int, int]], cfg: AudioCfg, seek: bool) -> list[np.ndarray]:
    """The native-rate mono samples of each ``[start, stop)`` span: a seek per span, or one pass."""
    buffers = [np.zeros(stop - start, np.float32) for start, stop in spans]
    filled = [0] * len(spans)

    def copy(pieces, wanted: list[int], counting: bool) -> None:
        position = 0 if counting else None  # a pass from the start counts; after a seek, timestamps place
        for first, piece in pieces:
            position = first if first is not None else position
            if position is None:
                raise DecodeError(name, "audio frames carry no timestamps after a seek")
            for i in wanted:
                start, stop = spans[i]
                lo, hi = max(start, position), min(stop, position + len(piece))
                if hi > lo:
                    buffers[i][lo - start : hi - start] = piece[lo - position : hi - position]
                    filled[i] += hi - lo
            position += len(piece)
            if position >= spans[wanted[-1]][1]:
                return

    with open_container(name) as container:
        stream, rate, _ = _audio_stream(container, name, cfg)
        preroll = int(_PREROLL_SECONDS * rate)
        near_start = [i for i, (start, _) in enumerate(spans) if not seek or start < preroll]
        if near_start:
            copy(_mono_pieces(container, stream, rate, name), near_start, counting=True)
        for i in sorted(set(range(len(spans))) - set(near_start)):
            # Seek a little before the span: the first frames after a seek can decode wrong (MP3's bit
            # reservoir), and the span's own samples must equal those of a decode from the start.
            at = (spans[i][0] - preroll) / rate
            container.seek(int(at / stream.time_base) + (stream.start_time or 0), stream=stream)
            copy(_mono_pieces(container, stream, rate, name), [i], counting=False)
            if filled[i] < len(buffers[i]) // 2:
                raise DecodeError(name, f"could not seek to {spans[i][0] / rate:.1f} s in the audio")
    return buffers


def _windowed_clips(name: str, samples: int, rate: int, cfg: AudioCfg, seek: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Clips of a long file, decoding only the spans around them: ``(clips, the spans' samples)``."""
    windows = _clip_windows(samples, rate, cfg)
    spans = _read_spans(name, [(a, b) for a, b, _, _ in windows], cfg, seek)
    clips = []
    for (_, _, lo, hi), span in zip(windows, spans):
        resampled = torch.from_numpy(_checked(name, [span])).unsqueeze(0)
        resampled = resample(resampled, rate, cfg.sample_rate)
        clip = resampled[:, lo:hi].clone()
        clip -= clip.mean()
        clips.append(waveform_to_fbank(clip, cfg))
    return (torch.stack(clips) - cfg.mean) / cfg.std, np.concatenate(spans)


def segment_clips(
    path: str | os.PathLike, segments: list[list[float]], cfg: AudioCfg = AudioCfg(), seconds: float | None = None
) -> torch.Tensor:
    """The clips of consecutive segments of one file (``segments``: each one's clip starts in seconds) ->
    ``[S, clips, 1, mel_bins, target_frames]``, decoding only the span they cover (one seek).

    Each clip is cut and normalised exactly as a file of that clip alone would be (``waveform_to_clips``
    on a 2 s file), so a moment's input equals the input of the same seconds cut out as a file.
    ``seconds``: the stream's length when its header does not say (known from decoding it whole once),
    so a long file's chunks seek instead of each decoding it from the start.
    """
    name = os.fspath(path)
    with open_container(name) as container:
        _, rate, duration = _audio_stream(container, name, cfg)
    duration = duration if duration is not None else seconds
    seek = duration is not None
    samples = round(duration * rate) if seek else _count_samples(name, cfg)
    total_out = -(-samples * cfg.sample_rate // rate)
    starts = [start for clips in segments for start in clips]
    bounds = [(int(s * cfg.sample_rate), min(int((s + cfg.clip_seconds) * cfg.sample_rate), total_out)) for s in starts]
    lo, hi = min(a for a, _ in bounds), max(b for _, b in bounds)
    in_start, in_stop, offset, _ = _output_window(lo, hi, samples, rate, cfg)
    (span,) = _read_spans(name, [(in_start, in_stop)], cfg, seek)
    resampled = resample(torch.from_numpy(_checked(name, [span])).unsqueeze(0), rate, cfg.sample_rate)
    first = lo - offset  # the output sample at resampled[0]
    clips = []
    for a, b in bounds:
        clip = resampled[:, max(a - first, 0) : max(b - first, 0)].clone()
        if clip.shape[-1] == 0:
            raise DecodeError(name, f"no audio samples at {a / cfg.sample_rate:.1f} s")
        clip -= clip.mean()
        clips.append(waveform_to_fbank(clip, cfg))
    stacked = (torch.stack(clips) - cfg.mean) / cfg.std
    return stacked.unflatten(0, (len(segments), -1))


# torchaudio's sinc resampler (the reference's) builds a kernel of about (rate / g) x (16000 / g) floats,
# g = gcd(rate, 16000): small for the usual rates (44.1 kHz: 441 x 160), 1.4 GB for a 22,051 Hz file.
ODD_RATE_STEP = 1000  # rate / g above this: resampled by FFmpeg's libswresample instead, in bounded memory


def resample(waveform: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """Mono ``[1, n]`` at ``rate`` -> at ``target``: torchaudio's resampler, as the reference, for the rates
    recordings use; libswresample for odd rates, whose torchaudio kernel would be unbounded."""
    if rate == target:
        return waveform
    if rate // math.gcd(rate, target) <= ODD_RATE_STEP:
        return torchaudio.functional.resample(waveform, orig_freq=rate, new_freq=target)
    frame = av.AudioFrame.from_ndarray(waveform.reshape(1, -1).numpy().astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    pieces = [out.to_ndarray().reshape(-1) for out in [*resampler.resample(frame), *resampler.resample(None)]]
    return torch.from_numpy(np.concatenate(pieces) if pieces else np.zeros(0, np.float32)).unsqueeze(0)


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
    waveform = resample(waveform, sample_rate, cfg.sample_rate)
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
    """Model input, duration, sample rate and (when ``thumbnail``) a picture of the waveform.

    Files up to ``cfg.whole_file_seconds`` are decoded whole, as the reference does. Longer ones (by their
    header, or found longer while decoding) are decoded only around their three clips, so memory does not
    grow with length; their picture shows the three clips side by side.
    """
    from xsearch import thumbnails

    name = os.fspath(path)
    with open_container(name) as container:
        _, rate, duration = _audio_stream(container, name, cfg)
    seek = duration is not None
    if duration is None or duration <= cfg.whole_file_seconds:
        try:
            waveform, rate = decode_audio(name, cfg, max_samples=int(cfg.whole_file_seconds * 1.25 * rate) + rate)
        except _LongerThan:  # the header said less than the stream holds, or said nothing
            seek = False
        else:
            meta = {"duration": waveform.shape[-1] / rate, "sample_rate": rate}
            if thumbnail:
                meta["thumbnail"] = thumbnails.waveform_thumbnail(waveform[0].numpy())
            return Preprocessed(waveform_to_clips(waveform, rate, cfg), meta)
    samples = round(duration * rate) if seek else _count_samples(name, cfg)
    clips, heard = _windowed_clips(name, samples, rate, cfg, seek)
    meta = {"duration": samples / rate, "sample_rate": rate}
    if thumbnail:
        meta["thumbnail"] = thumbnails.waveform_thumbnail(heard)
    return Preprocessed(clips, meta)
