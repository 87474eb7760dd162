"""Odd and bad inputs per modality: handled when they are valid, a DecodeError naming the file when not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xsearch.errors import DecodeError, NoStreamError
from xsearch.preprocess import get_tokenizer, preprocess_file
from xsearch.preprocess.image import ImageCfg, image_to_tensor, load_image, preprocess_image
from xsearch.testing.media import gradient_image, tone, write_audio, write_imu, write_map, write_video, write_wav


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "1", "I;16"])
def test_image_modes(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    path = tmp_path / f"x.{fmt.lower()}"
    if mode == "I;16":
        Image.fromarray((np.linspace(0, 65535, 200 * 100).reshape(100, 200)).astype(np.uint16)).save(path)
    else:
        gradient_image(path, mode=mode, fmt=fmt)
    x = preprocess_image(path)
    assert x.shape == (3, 224, 224) and _finite(x)
    if mode != "I;16":  # 16-bit: scaled by its range, see the next test
        # The pixels are PIL's own conversion to RGB (over white where there is alpha), unchanged.
        original = Image.open(path)
        expected = original.convert("RGBA") if mode in ("RGBA", "LA") else original.convert("RGB")
        if expected.mode == "RGBA":
            expected = Image.alpha_composite(Image.new("RGBA", expected.size, "white"), expected).convert("RGB")
        np.testing.assert_array_equal(np.asarray(load_image(path)), np.asarray(expected))
        torch.testing.assert_close(x, image_to_tensor(expected))


def test_sixteen_bit_uses_full_range(tmp_path):
    """A 16-bit greyscale ramp must not saturate to white (Pillow's plain convert would)."""
    path = tmp_path / "ramp.png"
    Image.fromarray(np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16)).save(path)
    rgb = np.asarray(load_image(path))
    assert rgb.min() < 10 and rgb.max() > 245 and 100 < rgb.mean() < 155


def test_transparency_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (50, 50), (0, 0, 0, 0)).save(path)
    assert np.asarray(load_image(path)).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (300, 100), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(path, exif=exif)
    assert load_image(path).size == (100, 300)


def test_animated_gif_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (64, 64), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    pixel = np.asarray(load_image(path))[32, 32]
    assert pixel[0] > 200 and pixel[2] < 50


def test_tiny_image(tmp_path):
    """One pixel is scaled up to a uniform 224 x 224 input of that pixel's colour, normalised."""
    path = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (10, 200, 30)).save(path)
    expected = image_to_tensor(Image.new("RGB", (224, 224), (10, 200, 30)))
    torch.testing.assert_close(preprocess_image(path), expected, atol=1e-5, rtol=0)


def test_megapixel_cap_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(DecodeError, match=r"big.png: image is 3000x3000 .* above the 5 MP cap"):
        load_image(path, ImageCfg(max_megapixels=5))


def test_declared_huge_image_is_refused(tmp_path):
    """A PNG header that declares 20000 x 20000 with almost no data."""
    path = tmp_path / "declared.png"
    Image.new("1", (20000, 20000)).save(path)
    with pytest.raises(DecodeError, match="declared.png: image declares 400 MP, too large to decode safely"):
        preprocess_image(path, ImageCfg(max_megapixels=100))


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.jpg", b"", "not a readable image"),
        ("noise.jpg", bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "not a readable image"),
        ("text.png", b"hello, I am not a picture\n" * 10, "not a readable image"),
    ],
)
def test_bad_image_bytes(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DecodeError, match=reason) as exc:
        preprocess_image(tmp_path / name)
    assert name in str(exc.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, fmt):
    path = gradient_image(tmp_path / f"whole.{fmt.lower()}", size=(400, 300), fmt=fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DecodeError, match=rf"cut\.{fmt.lower()}: image data is corrupt or truncated"):
        preprocess_image(cut)


def test_png_with_jpg_extension(tmp_path):
    """The content decides the decoder, not the name: the same PNG named .jpg gives the same input."""
    named_jpg = gradient_image(tmp_path / "really_png.jpg", fmt="PNG")
    png = gradient_image(tmp_path / "same.png", fmt="PNG")
    torch.testing.assert_close(preprocess_image(named_jpg), preprocess_image(png), atol=0, rtol=0)


@pytest.mark.parametrize(
    "seconds,rate,channels",
    [(0.001, 16000, 1), (0.3, 8000, 1), (3.0, 96000, 2), (600.0, 8000, 1), (2.0, 44100, 2)],
)
def test_audio_lengths_and_rates(tmp_path, seconds, rate, channels):
    """Any length, rate and channel count gives 3 clips of 128 x 204 fbank frames; a 440 Hz tone peaks in
    the same mel bin whatever rate it was recorded at (resampling keeps the pitch)."""
    path = write_wav(tmp_path / "a.wav", tone(seconds, rate, channels=channels, noise=0.0), rate)
    x = preprocess_file(path, "audio")
    assert x.shape == (3, 1, 128, 204) and _finite(x)
    if seconds >= 0.3:
        reference = write_wav(tmp_path / "ref.wav", tone(0.3, 16000, noise=0.0), 16000)
        expected_bin = int(preprocess_file(reference, "audio")[0, 0, :, 5:25].mean(-1).argmax())
        assert int(x[0, 0, :, 5:25].mean(-1).argmax()) == expected_bin


def test_silent_audio_is_the_floor_in_every_bin_of_every_frame(tmp_path):
    """Silence has no energy anywhere: every mel bin of every frame that holds samples is the log floor
    (the quietest bin of a tone reaches the same value), and only the frames padded onto the end of a
    short clip (as the reference pads) hold anything else."""
    path = write_wav(tmp_path / "silence.wav", np.zeros((32000, 1), np.float32), 16000)
    x = preprocess_file(path, "audio")
    assert _finite(x)
    floor = float(preprocess_file(write_wav(tmp_path / "tone.wav", tone(2.0, 16000), 16000), "audio").min())
    padded = (x != floor).any(dim=2)  # [clips, 1, frames]: frames with anything but the floor
    assert float(x.min()) == floor
    frames = x.shape[-1]
    for clip in padded[:, 0]:
        first = int(torch.nonzero(clip)[0]) if clip.any() else frames
        assert first > frames // 2 and bool(clip[first:].all())  # only a tail, and all of it


@pytest.mark.parametrize("codec,ext", [("libmp3lame", "mp3"), ("flac", "flac"), ("libopus", "ogg"), ("aac", "m4a")])
def test_audio_codecs(tmp_path, codec, ext):
    rate = 48000 if codec == "libopus" else 44100
    path = write_audio(tmp_path / f"a.{ext}", tone(2.5, rate, channels=2), rate, codec)
    reference = preprocess_file(write_wav(tmp_path / "a.wav", tone(2.5, rate, channels=2), rate), "audio")
    x = preprocess_file(path, "audio")
    # Lossy codecs shift the spectrum a little; the clips must still be close to the uncompressed ones.
    assert torch.nn.functional.cosine_similarity(x.flatten(), reference.flatten(), dim=0) > 0.95


def test_stereo_is_averaged(tmp_path):
    left = tone(2.0, 16000, freq=300.0)
    stereo = np.concatenate([left, np.zeros_like(left)], axis=1)
    mixed = preprocess_file(write_wav(tmp_path / "s.wav", stereo, 16000, "FLOAT"), "audio")
    mono = preprocess_file(write_wav(tmp_path / "m.wav", left * 0.5, 16000, "FLOAT"), "audio")
    assert (mixed - mono).abs().max() < 1e-4


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.wav", b"", "empty"),
        ("noise.mp3", bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)), "not a readable media"),
    ],
)
def test_bad_audio(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DecodeError, match=f"{name}: .*{reason}"):
        preprocess_file(tmp_path / name, "audio")


def test_truncated_wav_keeps_what_decodes(tmp_path):
    """A WAV cut short (its header still promising 3 s) gives what a WAV of the surviving samples gives."""
    samples = tone(3.0, 16000)
    path = write_wav(tmp_path / "a.wav", samples, 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(path.read_bytes()[:30000])
    kept = (30000 - 44) // 2  # a 44-byte header, then 16-bit mono samples
    whole = write_wav(tmp_path / "kept.wav", samples[:kept], 16000, subtype="PCM_16")
    torch.testing.assert_close(preprocess_file(cut, "audio"), preprocess_file(whole, "audio"))


def test_video_without_audio_as_audio(tmp_path):
    with pytest.raises(NoStreamError, match="v.mp4: no audio stream"):
        preprocess_file(write_video(tmp_path / "v.mp4", seconds=1.0), "audio")


def test_truncated_video(tmp_path):
    path = write_video(tmp_path / "v.mp4", seconds=3.0)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(DecodeError, match="cut.mp4: not a readable media file"):
        preprocess_file(cut, "video")


def test_webm_video(tmp_path):
    """VP9 in WebM decodes to the same clips as the same frames in H.264/MP4 (within lossy coding)."""
    x = preprocess_file(write_video(tmp_path / "v.webm", seconds=2.5, codec="libvpx-vp9"), "video")
    y = preprocess_file(write_video(tmp_path / "v.mp4", seconds=2.5), "video")
    assert x.shape == y.shape == (15, 3, 2, 224, 224) and _finite(x)
    assert float((x - y).abs().mean()) < 0.05


@pytest.mark.parametrize("name,bits", [("d16.png", 16), ("d8.png", 8), ("d.npy", 32)])
def test_depth_and_thermal_maps(tmp_path, name, bits):
    path = write_map(tmp_path / name, bits=bits)
    depth, thermal = preprocess_file(path, "depth"), preprocess_file(path, "thermal")
    assert depth.shape == thermal.shape == (1, 224, 224)
    assert 0.0 <= thermal.min() and thermal.max() <= 1.0 + 1e-3
    assert (depth - (thermal - 0.0418) / 0.0295).abs().max() < 1e-3


def test_eight_and_sixteen_bit_maps_agree(tmp_path):
    a = preprocess_file(write_map(tmp_path / "a.png", bits=16), "thermal")
    b = preprocess_file(write_map(tmp_path / "b.png", bits=8), "thermal")
    assert (a - b).abs().max() < 0.01


def test_map_with_wrong_shape(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 5)))
    with pytest.raises(DecodeError, match="2-D map"):
        preprocess_file(tmp_path / "cube.npy", "depth")


@pytest.mark.parametrize(
    "name,samples,layout",
    [("a.npy", 2000, "channels_first"), ("b.npy", 3100, "samples_first"), ("c.csv", 900, "channels_first")],
)
def test_imu(tmp_path, name, samples, layout):
    x = preprocess_file(write_imu(tmp_path / name, samples=samples, layout=layout), "imu")
    assert x.shape == (6, 2000) and _finite(x)
    if samples < 2000:
        assert torch.all(x[:, samples:] == 0)


def test_imu_csv_and_npy_agree(tmp_path):
    a = preprocess_file(write_imu(tmp_path / "a.npy"), "imu")
    b = preprocess_file(write_imu(tmp_path / "a.csv"), "imu")
    assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("bad.csv", "1,2,3\n4,5\n", "different numbers of columns"),
        ("nan.csv", "1,2,3,4,5,nan\n" * 5, "NaN"),
        ("words.csv", "a,b,c,d,e,f\n1,2,3,4,5,6\nx,y,z,u,v,w\n", "line 3 is not numeric"),
        ("three.csv", "1,2,3\n" * 10, "expected 6 x N"),
    ],
)
def test_bad_imu(tmp_path, name, content, reason):
    (tmp_path / name).write_text(content)
    with pytest.raises(DecodeError, match=reason):
        preprocess_file(tmp_path / name, "imu")


def test_text_files(tmp_path):
    (tmp_path / "ok.txt").write_text("\ufeffa dog barking in the rain", encoding="utf-8")
    expected = get_tokenizer(77)(["a dog barking in the rain"])[0]  # the byte-order mark is not text
    torch.testing.assert_close(preprocess_file(tmp_path / "ok.txt", "text"), expected, atol=0, rtol=0)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DecodeError, match="latin1.txt: not UTF-8"):
        preprocess_file(tmp_path / "latin1.txt", "text")
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(DecodeError, match="empty"):
        preprocess_file(tmp_path / "blank.txt", "text")


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(DecodeError, match="gone.jpg: file not found"):
        preprocess_file(tmp_path / "gone.jpg", "image")
    with pytest.raises(DecodeError, match="gone.mp4: file not found"):
        preprocess_file(tmp_path / "gone.mp4", "video")


def test_directory_given_as_file(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(DecodeError, match="folder.jpg: is a directory"):
        preprocess_file(tmp_path / "folder.jpg", "image")
    with pytest.raises(DecodeError, match="folder.jpg: is a directory"):
        preprocess_file(tmp_path / "folder.jpg", "text")


def test_images_are_handed_over_as_pixels_and_normalised_exactly_where_encoded(tmp_path):
    """Decode workers send uint8 pixels (a quarter of float32's bytes); normalising them gives exactly the
    model input the float path gives."""
    from xsearch.preprocess import PreprocessCfg, preprocess_with_metadata

    path = gradient_image(tmp_path / "p.jpg", size=(640, 480))
    cfg = PreprocessCfg()
    handed = preprocess_with_metadata(path, "image", cfg, thumbnail=False).tensor
    assert handed.dtype == torch.uint8 and handed.shape == (3, 224, 224)
    assert handed.numel() * handed.element_size() == 150_528  # 150 KB, not 600 KB
    torch.testing.assert_close(cfg.image.normalise(handed), preprocess_image(path), atol=0, rtol=0)
