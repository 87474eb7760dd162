"""Decoding within bounds: long audio read around its clips, large video and odd sample rates in bounded
memory, headers checked before data, oversized pictures and long texts refused or cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xsearch import Modality
from xsearch.errors import DecodeError
from xsearch.preprocess import preprocess_file
from xsearch.testing.media import gradient_image, tone, write_wav

from measure import peak_rss_growth_mb


def _without_duration(flac: Path) -> Path:
    """The FLAC as a pipe writes it: STREAMINFO's total-samples field is 0 (unknown)."""
    data = bytearray(flac.read_bytes())
    assert data[:4] == b"fLaC"
    data[8 + 13] &= 0xF0  # the low 36 bits of STREAMINFO bytes 13..17 count the samples
    data[8 + 14 : 8 + 18] = bytes(4)
    out = flac.with_name("piped_" + flac.name)
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("suffix", ["wav", "flac", "mp3"])
def test_a_long_audio_file_is_decoded_around_its_clips_with_the_same_result(tmp_path, suffix):
    from xsearch.preprocess import audio
    from xsearch.testing.media import tone, write_audio, write_wav

    path, samples = tmp_path / f"long.{suffix}", tone(37.3, 44100, channels=2, noise=0.3)
    write_wav(path, samples, 44100) if suffix == "wav" else write_audio(path, samples, 44100, suffix)
    cfg = audio.AudioCfg(whole_file_seconds=10)  # 37 s counts as long here
    whole = audio.waveform_to_clips(*audio.decode_audio(path, cfg), cfg)
    assert torch.equal(audio.prepare(path, cfg, thumbnail=False).tensor, whole)
    if suffix == "flac":  # no duration in the header: counted, then read around the clips in one pass
        piped = _without_duration(path)
        assert torch.equal(audio.prepare(piped, cfg, thumbnail=False).tensor, whole)
        with pytest.raises(DecodeError, match="above the 0.00833333 h limit"):  # 30 s: counted, not trusted
            audio.prepare(piped, audio.AudioCfg(whole_file_seconds=10, max_seconds=30), thumbnail=False)


@pytest.mark.slow
def test_long_audio_and_large_video_decode_in_bounded_memory(tmp_path):
    import soundfile

    from xsearch.testing.media import write_video

    flac = tmp_path / "twenty_minutes.flac"
    with soundfile.SoundFile(flac, "w", 48000, 2, subtype="PCM_16") as handle:
        block = 0.3 * np.sin(np.arange(480000) / 48000 * 2 * np.pi * 440, dtype=np.float32)
        for _ in range(120):
            handle.write(np.stack([block, block], 1))
    for path in (flac, _without_duration(flac)):  # decoding it whole held 1.9 GB (4 h: 22 GB)
        assert peak_rss_growth_mb(f"audio.prepare({str(path)!r}, audio.AudioCfg())") < 250
    clip = write_video(tmp_path / "sixty_fps.mp4", seconds=2.5, fps=60, size=(1024, 1024))
    # Every frame of each 2 s clip was held (120 x 1.5 MB); the model sees two of them.
    assert peak_rss_growth_mb(f"video.decode_video({str(clip)!r})") < 120


def test_a_npy_header_is_checked_before_its_data_is_read(tmp_path):
    from xsearch.preprocess.single_channel import load_single_channel

    sparse = tmp_path / "sparse_depth.npy"  # a 2 GB array in a 4 KB (sparse) file
    np.lib.format.open_memmap(sparse, mode="w+", dtype=np.float64, shape=(16384, 16384)).flush()
    with pytest.raises(DecodeError, match=r"shape \(16384, 16384\) has 268,435,456 values, above the"):
        load_single_channel(sparse)
    truncated = tmp_path / "truncated_depth.npy"
    np.save(truncated, np.zeros((100, 100)))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(DecodeError, match="truncated .npy file: its header promises 80,128 bytes, the file has"):
        load_single_channel(truncated)


def test_a_damaged_mp4_says_so_not_no_audio_stream(tmp_path):
    from xsearch.decode.work import Task, prepare
    from xsearch.testing.media import write_video

    path = write_video(tmp_path / "clip.mp4", seconds=2)
    data = bytearray(path.read_bytes())
    moov = data.find(b"moov")
    data[moov + 8 : moov + 200] = bytes(192)  # the box that lists the streams
    path.write_bytes(data)
    outcome = prepare(Task(str(path), Modality.VIDEO, len(data), 0.0)).decoded
    assert outcome.error == "no audio or video stream found (damaged or truncated file?)"


def test_a_picture_many_times_longer_than_wide_is_refused_before_it_is_scaled(tmp_path):
    path = tmp_path / "line.png"
    Image.new("RGB", (20_000, 1)).save(path)  # 99 bytes; scaled, 4.5M x 224 pixels (5.1 GB)
    with pytest.raises(DecodeError, match="longer than 50 times its width"):
        preprocess_file(path, "image")
    with pytest.raises(DecodeError, match="longer than 50 times its width"):
        preprocess_file(path, "depth")
    panorama = tmp_path / "panorama.png"
    gradient_image(panorama, size=(2400, 300))  # 8:1 is a picture
    assert preprocess_file(panorama, "image").shape == (3, 224, 224)


@pytest.mark.parametrize("rate", [22_051, 44_101])
def test_an_odd_sample_rate_is_resampled_in_bounded_memory(tmp_path, rate):
    """torchaudio's kernel for 22,051 Hz -> 16 kHz needed 6.9 GB; libswresample takes these rates."""
    path = write_wav(tmp_path / "odd.wav", tone(1.0, rate, noise=0.0), rate)
    reference = write_wav(tmp_path / "even.wav", tone(1.0, 22_050, noise=0.0), 22_050)
    growth = peak_rss_growth_mb(f"x = preprocess_file({str(path)!r}, 'audio')")
    assert growth < 300, f"{growth:.0f} MB"
    odd, even = preprocess_file(path, "audio"), preprocess_file(reference, "audio")
    assert float((odd - even).abs().mean()) < 0.1  # the same tone, heard the same


def test_long_words_and_texts_are_bounded():
    from xsearch.preprocess.text import MAX_WORD_BYTES, Tokenizer

    tokenizer = Tokenizer()
    ids = tokenizer(["a" * 100_000, "word " * 500_000])  # 100 k letters took 222 s; 2.5 MB of text too
    assert ids.shape == (2, 77) and int((ids[1] > 0).sum()) == 77
    assert max(len(word) for word in tokenizer._cache) <= MAX_WORD_BYTES + 1  # the cache holds no huge words
    short = tokenizer(["a dog barking in the rain"])
    assert short[0, :8].tolist() == [49406, 320, 1929, 32676, 530, 518, 2443, 49407]  # ordinary text unchanged
