"""Preprocessing against the reference's ``imagebind.data``: token ids, image tensors, audio fbank clips,
video clips. Where the reference's own loader cannot run here, the same reference code is fed by a loader
that can (stated per test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xsearch.preprocess.audio import preprocess_audio
from xsearch.preprocess.image import preprocess_image
from xsearch.preprocess.text import Tokenizer, preprocess_text
from xsearch.preprocess.video import preprocess_video
from xsearch.testing.media import gradient_image, tone, write_video, write_wav

TEXTS = [
    "a dog barking",
    "A photo of a BIRD at sea, with waves!",
    "naïve café résumé — 東京タワー 🐦",
    "don't won't it's we'll they've I'm you'd",
    "&amp; html &lt;tags&gt; and    spaces\tand\nnewlines",
    "numbers 1234567 and 3.14159",
    "a very long sentence " * 30,
    "",
]


def test_token_ids_match_reference(reference):
    ref_tokenizer = reference.preprocessors.SimpleTokenizer(bpe_path=reference.data.return_bpe_path())
    ours = Tokenizer()
    for text in TEXTS:
        assert torch.equal(ours(text)[0], ref_tokenizer(text)), text


def test_token_ids_match_reference_loader(reference):
    expected = reference.data.load_and_transform_text(TEXTS, "cpu")
    got = torch.stack([preprocess_text(t) for t in TEXTS])
    assert torch.equal(got, expected)


def test_tokenizer_roundtrip():
    tok = Tokenizer()
    assert tok.decode(tok.encode("a photo of a dog")).strip() == "a photo of a dog"
    ids = tok("x " * 200)[0]
    assert ids[0] == tok.start_id and ids[-1] == tok.end_id and ids.shape == (77,)


@pytest.mark.parametrize(
    "size,fmt", [((320, 240), "JPEG"), ((240, 400), "PNG"), ((100, 60), "PNG"), ((1001, 999), "JPEG")]
)
def test_image_tensor_matches_reference(reference, tmp_path, size, fmt):
    path = gradient_image(tmp_path / f"img.{fmt.lower()}", size=size, fmt=fmt)
    expected = reference.data.load_and_transform_vision_data([str(path)], "cpu")[0]
    got = preprocess_image(path)
    assert got.shape == (3, 224, 224)
    assert (got - expected).abs().max().item() <= 1e-5


def _soundfile_load(path):
    """Stands in for ``torchaudio.load``, which needs torchcodec and system FFmpeg (absent here)."""
    import soundfile

    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(samples.T.copy()), rate


@pytest.mark.parametrize("seconds,rate", [(3.3, 44100), (10.0, 16000), (0.7, 8000), (5.0, 48000), (2.0, 22050)])
def test_audio_clips_match_reference(reference, tmp_path, monkeypatch, seconds, rate):
    path = write_wav(tmp_path / "a.wav", tone(seconds, rate, freq=330.0), rate)
    monkeypatch.setattr(reference.data.torchaudio, "load", _soundfile_load)
    expected = reference.data.load_and_transform_audio_data([str(path)], "cpu")[0]
    got = preprocess_audio(path)
    assert got.shape == expected.shape == (3, 1, 128, 204)
    assert (got - expected).abs().max().item() <= 1e-5


def _reference_video(reference, path):
    """The reference's video pipeline, with pytorchvideo's PyAV decoder in place of decord (the reference's
    ``EncodedVideo.from_path(..., sample_rate=...)`` call fails upstream)."""
    from pytorchvideo import transforms as pv_transforms
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
    from pytorchvideo.data.encoded_video import EncodedVideo
    from torchvision import transforms

    data = reference.data
    video = EncodedVideo.from_path(str(path), decoder="pyav", decode_audio=False)
    sampler = ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=5)
    subsample = pv_transforms.UniformTemporalSubsample(num_samples=2)
    normalise = transforms.Compose(
        [
            pv_transforms.ShortSideScale(224),
            data.NormalizeVideo(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)),
        ]
    )
    clips = []
    for start, end in data.get_clip_timepoints(sampler, video.duration):
        clips.append(normalise(subsample(video.get_clip(start, end)["video"]) / 255.0))
    return torch.stack(data.SpatialCrop(224, num_crops=3)(clips))


@pytest.mark.parametrize(
    "seconds,size,codec",
    [(12.0, (160, 120), "libx264"), (0.5, (120, 160), "libx264"), (2.9, (200, 112), "libvpx-vp9")],
)
def test_video_clips_match_reference(reference, tmp_path, seconds, size, codec):
    # MP4 records the stream duration. WebM does not: pytorchvideo then decodes the whole file and takes the
    # last frame's timestamp (one frame short of the container's duration, which we use, without decoding).
    path = write_video(tmp_path / "v.mp4", seconds=seconds, size=size, codec=codec)
    expected = _reference_video(reference, path)
    got = preprocess_video(path)
    assert got.shape == expected.shape == (15, 3, 2, 224, 224)
    assert (got - expected).abs().max().item() <= 1e-5


def test_video_clips_differ_over_time(tmp_path):
    """The 5 clips come from different times: a brightening video gives increasing clip means."""
    got = preprocess_video(write_video(tmp_path / "v.mp4", seconds=12.0))
    means = got.view(5, 3, -1).mean(dim=(1, 2)).numpy()
    assert np.all(np.diff(means) > 0)
