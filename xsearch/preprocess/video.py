"""Video: file -> ``[15, 3, 2, 224, 224]`` (5 clips x 3 spatial crops, 2 frames each).

As the reference: 5 clips of 2 s at evenly spaced starts (``i * (duration - 2) / 5``); in each clip, the
first and last frame with ``start <= t < end``; frames scaled to [0, 1], shorter side to 224 (bilinear),
CLIP mean/std, then 3 crops along the longer side (start, centre, end). The model averages the 15
embeddings. Only the frames around each clip are decoded (a seek per clip), so a two-hour film costs about
as much as a short one.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import av
import numpy as np
import torch
import torch.nn.functional as F

from xsearch.errors import DecodeError, NoStreamError
from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg
from xsearch.preprocess.audio import clip_starts
from xsearch.preprocess.containers import describe, open_container, true_duration
from xsearch.preprocess.image import CLIP_MEAN, CLIP_STD, check_aspect
from xsearch.preprocess.prepared import Preprocessed


@dataclass(frozen=True)
class VideoCfg:
    size: int = IMAGEBIND_HUGE.image_size
    clip_seconds: int = 2
    clips: int = 5
    frames_per_clip: int = IMAGEBIND_HUGE.video_frames
    spatial_crops: int = 3
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    max_pixels_per_frame: int = 8192 * 8192
    max_seconds: float = 24 * 3600.0  # longer videos are refused (their real length, whatever the header says)

    @classmethod
    def for_model(cls, model: ImageBindCfg) -> VideoCfg:
        return cls(size=model.image_size, frames_per_clip=model.video_frames)


def _duration(stream, container) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _frame_time(frame, stream) -> float | None:
    if frame.pts is None:
        return None
    start = stream.start_time or 0
    return float((frame.pts - start) * stream.time_base)


def _frames_in(container, stream, start: float, end: float, keep) -> tuple[dict, int, object]:
    """Decode ``[start, end)`` after a seek, holding only the frames ``keep(index)`` asks for (``None``: the
    first and the last).

    ``(kept frames by index, frames in the clip, the last frame before it)``: a 2 s clip of a 60 fps 8K
    video is 120 frames of 100 MB each, and the model looks at two of them.
    """
    offset = int(start / stream.time_base) + (stream.start_time or 0) if stream.time_base else 0
    container.seek(max(offset, 0), stream=stream, backward=True, any_frame=False)
    kept, count, before = {}, 0, None
    for frame in container.decode(stream):
        t = _frame_time(frame, stream)
        if t is None:
            continue
        if t >= end:
            break
        if t < start:
            before = frame
            continue
        if keep is None:  # the first and the latest
            kept = {0: frame} if count == 0 else {0: kept[0], count: frame}
        elif keep(count):
            kept[count] = frame
        count += 1
    return kept, count, before


def _clip_frames(container, stream, start: float, end: float, count: int) -> list[np.ndarray]:
    """``count`` frames evenly spread over ``[start, end)`` (the first and last for ``count == 2``)."""
    if count <= 2:  # the first and the latest so far: one pass
        kept, total, before = _frames_in(container, stream, start, end, None)
    else:  # count the clip's frames first, then decode again keeping the picks
        _, total, before = _frames_in(container, stream, start, end, lambda i: False)
        wanted = set(torch.linspace(0, max(total - 1, 0), count).long().tolist())
        kept, total, before = _frames_in(container, stream, start, end, wanted.__contains__)
    if not total:
        # The clip holds no frame (a stream sparser than 2 s, or a short video): use the nearest earlier one.
        return [before.to_ndarray(format="rgb24")] * count if before is not None else []
    picks = torch.linspace(0, total - 1, count).long().tolist()
    return [kept[i].to_ndarray(format="rgb24") for i in picks]


def short_side_scale(clip: torch.Tensor, size: int) -> torch.Tensor:
    """``[C, T, H, W]`` -> shorter side ``size``, bilinear (pytorchvideo's ``short_side_scale``)."""
    _, _, h, w = clip.shape
    if w < h:
        new_h, new_w = int(math.floor(h / w * size)), size
    else:
        new_h, new_w = size, int(math.floor(w / h * size))
    return F.interpolate(clip, size=(new_h, new_w), mode="bilinear", align_corners=False)


def spatial_crops(clip: torch.Tensor, size: int, count: int = 3) -> list[torch.Tensor]:
    """Crops at the start, centre and end of the longer side of ``[C, T, H, W]``."""
    h, w = clip.shape[-2:]
    y, x = int(math.ceil((h - size) / 2)), int(math.ceil((w - size) / 2))
    if count == 1:
        return [clip[..., y : y + size, x : x + size]]
    crops = []
    for position in (0, 1, 2):
        if h > w:
            yy = {0: 0, 1: y, 2: h - size}[position]
            crops.append(clip[..., yy : yy + size, x : x + size])
        else:
            xx = {0: 0, 1: x, 2: w - size}[position]
            crops.append(clip[..., y : y + size, xx : xx + size])
    return crops


def frames_to_clips(clip_frames: list[list[np.ndarray]], cfg: VideoCfg = VideoCfg()) -> torch.Tensor:
    """Per clip, a list of ``H x W x 3`` uint8 frames -> ``[clips * crops, 3, T, size, size]``."""
    mean = torch.tensor(cfg.mean).view(3, 1, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1, 1)
    out = []
    for frames in clip_frames:
        clip = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 255.0  # C, T, H, W
        clip = (short_side_scale(clip, cfg.size) - mean) / std
        out.extend(spatial_crops(clip, cfg.size, cfg.spatial_crops))
    return torch.stack(out)


def _video_stream(container, name: str, cfg: VideoCfg):
    """The first video stream, its size checked against the caps, and its duration."""
    if not container.streams.video:
        raise NoStreamError(name, "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    ctx = stream.codec_context
    if ctx.width and ctx.height and ctx.width * ctx.height > cfg.max_pixels_per_frame:
        raise DecodeError(name, f"video frames are {ctx.width}x{ctx.height}, too large")
    if ctx.width and ctx.height:
        check_aspect(name, ctx.width, ctx.height, "video frame")
    declared = _duration(stream, container)
    if declared is None:
        raise DecodeError(name, "video duration is unknown")
    duration = true_duration(container, stream, declared)  # clips and moments only where frames are
    if duration > cfg.max_seconds:
        raise DecodeError(name, f"video is {duration / 3600:.1f} h long, above the {cfg.max_seconds / 3600:g} h limit")
    return stream, duration


def decode_video(path: str | os.PathLike, cfg: VideoCfg = VideoCfg()) -> tuple[list[list[np.ndarray]], float]:
    """``(frames of each clip, duration in seconds)``, decoded with one seek per clip."""
    name = os.fspath(path)
    with open_container(path) as container:
        stream, duration = _video_stream(container, name, cfg)
        clips = []
        try:
            for start in clip_starts(duration, cfg.clip_seconds, cfg.clips):
                frames = _clip_frames(
                    container, stream, float(start), float(start + cfg.clip_seconds), cfg.frames_per_clip
                )
                if not frames:
                    raise DecodeError(name, f"no decodable frame near {float(start):.2f} s")
                clips.append(frames)
        except av.FFmpegError as exc:
            raise DecodeError(name, f"video data is corrupt ({describe(exc)})") from None
    return clips, float(duration)


def _windows_in_one_pass(container, stream, windows: list[tuple[float, float]]) -> list[list]:
    """The first and the last frame of each ``[start, end)`` window (the nearest earlier frame for a window
    that holds none), decoding once from the first window on: dense windows share their keyframes."""
    first_start, last_end = min(a for a, _ in windows), max(b for _, b in windows)
    offset = int(first_start / stream.time_base) + (stream.start_time or 0) if stream.time_base else 0
    container.seek(max(offset, 0), stream=stream, backward=True, any_frame=False)
    firsts, lasts, before = [None] * len(windows), [None] * len(windows), [None] * len(windows)
    for frame in container.decode(stream):
        t = _frame_time(frame, stream)
        if t is None:
            continue
        if t >= last_end:
            break
        for i, (start, end) in enumerate(windows):
            if t < start:
                before[i] = frame
            elif t < end:
                if firsts[i] is None:
                    firsts[i] = frame
                lasts[i] = frame
    return [
        [first, last] if first is not None else ([near, near] if near is not None else [])
        for first, last, near in zip(firsts, lasts, before)
    ]


def decode_segments(path: str | os.PathLike, segments: list[list[float]], cfg: VideoCfg = VideoCfg()) -> torch.Tensor:
    """The clips of consecutive segments of one file (``segments``: each one's clip starts in seconds) ->
    ``[S, clips * crops, 3, T, size, size]``, each clip made as the whole-file path makes a clip."""
    name = os.fspath(path)
    windows = [(float(s), float(s) + cfg.clip_seconds) for clips in segments for s in clips]
    with open_container(path) as container:
        stream, _ = _video_stream(container, name, cfg)
        try:
            if cfg.frames_per_clip == 2:
                frames = [
                    [f.to_ndarray(format="rgb24") for f in pair]
                    for pair in _windows_in_one_pass(container, stream, windows)
                ]
            else:
                frames = [_clip_frames(container, stream, a, b, cfg.frames_per_clip) for a, b in windows]
        except av.FFmpegError as exc:
            raise DecodeError(name, f"video data is corrupt ({describe(exc)})") from None
    for (start, _), clip in zip(windows, frames):
        if not clip:
            raise DecodeError(name, f"no decodable frame near {start:.2f} s")
    per_segment = len(windows) // len(segments)
    return torch.stack([frames_to_clips(frames[i : i + per_segment], cfg) for i in range(0, len(frames), per_segment)])


def preprocess_video(path: str | os.PathLike, cfg: VideoCfg = VideoCfg()) -> torch.Tensor:
    """Video file -> ``[15, 3, 2, 224, 224]`` float32 model input."""
    return frames_to_clips(decode_video(path, cfg)[0], cfg)


def capture_tags(path) -> dict:
    """When and where the clip was shot, from its container's tags (its header only: no frame is read);
    ``DecodeError`` when the file cannot be opened."""
    from xsearch.capture import container_tags

    with open_container(path) as container:
        return container_tags(dict(container.metadata))


def prepare(path, cfg: VideoCfg, thumbnail: bool = True) -> Preprocessed:
    """Model input, frame size, duration and (when ``thumbnail``) the middle clip's first frame as preview."""
    from xsearch import thumbnails

    clips, duration = decode_video(path, cfg)
    first = clips[0][0]
    meta = {"width": first.shape[1], "height": first.shape[0], "duration": duration}
    with contextlib.suppress(DecodeError):  # the frames were read: a header that will not open again has no tags
        meta.update(capture_tags(path))
    if thumbnail:
        meta["thumbnail"] = thumbnails.frame_thumbnail(clips[len(clips) // 2][0])
    return Preprocessed(frames_to_clips(clips, cfg), meta)
