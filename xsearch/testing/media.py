"""Small real-looking media made by the tests themselves: images, tones, noise, videos, maps, IMU."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from xsearch.preprocess.containers import local_file_url


def gradient_image(path: Path, size=(320, 240), mode="RGB", seed=0, fmt=None) -> Path:
    """A smooth image with some noise: gradients plus a coloured disc, so resizing has real work to do."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    r = (xx / max(w - 1, 1) * 255).astype(np.float32)
    g = (yy / max(h - 1, 1) * 255).astype(np.float32)
    b = (((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (min(w, h) / 3) ** 2) * 200.0
    rgb = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1, noise: float = 0.05, seed=0) -> np.ndarray:
    """``[n, channels]`` float32 sine + noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.shape)
    out = np.stack([mono * (0.6 + 0.4 * c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    import soundfile

    soundfile.write(path, samples, rate, subtype=subtype)
    return path


def write_audio(path: Path, samples: np.ndarray, rate: int, codec: str) -> Path:
    """Encode ``[n, channels]`` float samples with PyAV (mp3 / flac / libopus / vorbis / aac); PyAV converts
    the planar float frames to the codec's sample format and frame size."""
    layout = "mono" if samples.shape[1] == 1 else "stereo"
    with av.open(local_file_url(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        _mux(container, stream, _audio_frames(samples.T, rate, "fltp", layout))
    return path


def write_video(path: Path, seconds: float = 3.0, fps: int = 10, size=(160, 120), codec="libx264", seed=0) -> Path:
    """A moving-gradient video; frame i is brighter than frame i-1, so frame choice is visible in tests."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 60, (h, w, 3))
    frames = (
        np.clip(base + i * 4 + np.linspace(0, 120, w)[None, :, None], 0, 255).astype(np.uint8)
        for i in range(int(seconds * fps))
    )
    with av.open(local_file_url(path), "w") as container:
        _mux(container, _video_stream(container, codec, fps, size), map(_rgb_frame, frames))
    return path


def _video_stream(container, codec: str, fps: int, size, options: dict | None = None):
    stream = container.add_stream(codec, rate=fps, options=options or {})
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.time_base = Fraction(1, fps)
    return stream


def _rgb_frame(rgb: np.ndarray):
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def _mux(container, stream, frames) -> None:
    """Encode ``frames`` (numbered in order: their ``pts``) into ``stream``, then flush it."""
    for i, frame in enumerate(frames):
        frame.pts = i if frame.pts is None else frame.pts
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def event_recording(seconds: float, rate: int, event_at: float, event_seconds: float = 2.0, seed=0) -> np.ndarray:
    """``[n, 1]`` float32: quiet tones that change every 2 s over noise, with one distinctive event (a loud
    rising chirp over white noise, the same samples wherever it is put) of ``event_seconds`` from
    ``event_at``: a recording whose moment matters."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    pitch = 200.0 + 40.0 * rng.integers(0, 20, size=int(seconds // 2) + 1)[(t // 2).astype(int)]
    samples = 0.2 * np.sin(2 * np.pi * pitch * t) + 0.02 * rng.standard_normal(n)
    lo, hi = min(int(event_at * rate), n), min(int((event_at + event_seconds) * rate), n)
    local = t[lo:hi] - event_at
    burst = 0.3 * np.random.default_rng(1234).standard_normal(hi - lo)
    samples[lo:hi] = 0.6 * np.sin(2 * np.pi * (600 + 1500 * local) * local) + burst
    return samples.astype(np.float32)[:, None]


def write_event_video(
    path: Path,
    seconds: float,
    event_at: float,
    event_seconds: float = 2.0,
    fps: int = 4,
    size=(96, 96),
    seed=0,
    sound: np.ndarray | None = None,
    rate: int = 16000,
) -> Path:
    """A video of dim noise whose frames turn a bright red checkerboard for ``event_seconds`` from
    ``event_at`` (keyframes every second, so seeks land near any time); with ``sound`` (``[n, 1]`` float
    samples at ``rate``), a sound track of it, as 16-bit PCM (exact samples: use a .mkv or .mov path)."""
    rng = np.random.default_rng(seed)
    w, h = size
    checker = ((np.indices((h, w)) // 12).sum(axis=0) % 2).astype(np.uint8)
    red = np.stack([55 + 200 * checker, 20 * checker, 20 * checker], axis=-1).astype(np.uint8)
    frames = (
        red if event_at <= i / fps < event_at + event_seconds else rng.integers(20, 70, (h, w, 3)).astype(np.uint8)
        for i in range(int(seconds * fps))
    )
    with av.open(local_file_url(path), "w") as container:
        stream = _video_stream(container, "libx264", fps, size, {"g": str(fps)})
        if sound is not None:
            track = container.add_stream("pcm_s16le", rate=rate, layout="mono")
            pcm = (np.clip(sound[:, 0], -1, 1) * 32767).astype(np.int16)[None]
            _mux(container, track, _audio_frames(pcm, rate, "s16", "mono"))
        _mux(container, stream, map(_rgb_frame, frames))
    return path


def _audio_frames(samples: np.ndarray, rate: int, fmt: str, layout: str):
    """``[channels, n]`` samples (``[1, n]`` when packed) as frames of 4,096, timed by their first sample."""
    for start in range(0, samples.shape[1], 4096):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, start : start + 4096]), format=fmt, layout=layout
        )
        frame.sample_rate, frame.pts = rate, start
        yield frame


def write_map(path: Path, size=(200, 150), bits: int = 16, seed=0) -> Path:
    """A single-channel depth/thermal map (PNG, 8 or 16 bit, or .npy float)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(0.1, 0.9, w)[None, :] * np.linspace(0.5, 1.0, h)[:, None] + rng.normal(0, 0.02, (h, w))
    base = np.clip(base, 0, 1)
    if str(path).endswith(".npy"):
        np.save(path, base.astype(np.float32))
    elif bits == 16:
        Image.fromarray((base * 65535).astype(np.uint16)).save(path)
    else:
        Image.fromarray((base * 255).astype(np.uint8), "L").save(path)
    return path


def write_imu(path: Path, samples: int = 2000, layout: str = "channels_first", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 200.0
    data = np.stack([np.sin(2 * np.pi * (c + 1) * 0.5 * t) + 0.1 * rng.standard_normal(samples) for c in range(6)])
    data = data.astype(np.float32)
    if layout == "samples_first":
        data = data.T
    if str(path).endswith(".csv"):
        rows = data.T if layout == "channels_first" else data
        header = "ax,ay,az,gx,gy,gz\n"
        Path(path).write_text(header + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")
    else:
        np.save(path, data)
    return path
