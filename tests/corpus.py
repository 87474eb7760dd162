"""Corpora the indexer tests build on the fly: a small real-looking collection, and bad or odd files.

``good_corpus`` returns {path: modality}. ``bad_corpus`` returns {path: words the error row must contain} for
files that must fail, and {path: modality} for odd files that must still be indexed.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from xsearch.testing.media import gradient_image, tone, write_audio, write_imu, write_map, write_video, write_wav


def good_corpus(root: Path) -> dict[Path, str]:
    """Images, audio, video, text, depth, thermal and IMU, laid out the way a user would have them."""
    files: dict[Path, str] = {}
    (root / "photos" / "trip").mkdir(parents=True)
    for i in range(5):
        files[gradient_image(root / "photos" / f"img{i}.jpg", size=(200 + 20 * i, 150), seed=i)] = "image"
    files[gradient_image(root / "photos" / "trip" / "beach.png", size=(180, 240), seed=9)] = "image"
    (root / "sounds").mkdir()
    files[write_wav(root / "sounds" / "a440.wav", tone(2.5, 16000, 440), 16000)] = "audio"
    files[write_wav(root / "sounds" / "stereo.wav", tone(4.0, 44100, 220, channels=2, seed=1), 44100)] = "audio"
    files[write_audio(root / "sounds" / "noise.flac", tone(3.0, 22050, 880, noise=0.4, seed=2), 22050, "flac")] = (
        "audio"
    )
    files[write_audio(root / "sounds" / "beep.mp3", tone(2.0, 44100, 1000, seed=3), 44100, "libmp3lame")] = "audio"
    (root / "clips").mkdir()
    files[write_video(root / "clips" / "pan.mp4", seconds=2.0)] = "video"
    files[write_video(root / "clips" / "fade.webm", seconds=2.0, codec="libvpx-vp9", seed=1)] = "video"
    (root / "notes").mkdir()
    (root / "notes" / "caption.txt").write_text("a bird flying over the sea at sunset\n")
    files[root / "notes" / "caption.txt"] = "text"
    (root / "scans" / "depth").mkdir(parents=True)
    files[write_map(root / "scans" / "depth" / "room1.png", seed=1)] = "depth"
    files[write_map(root / "scans" / "kitchen_depth.npy", seed=2)] = "depth"
    (root / "scans" / "thermal").mkdir()
    files[write_map(root / "scans" / "thermal" / "street.png", bits=8, seed=3)] = "thermal"
    (root / "motion" / "imu").mkdir(parents=True)
    files[write_imu(root / "motion" / "imu" / "walk.npy")] = "imu"
    files[write_imu(root / "motion" / "imu" / "run.csv", samples=1500, seed=1)] = "imu"
    (root / "README.md").write_text("not media: ignored\n")
    (root / "photos" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return files


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width x height`` but holds one row of data: a cheap giant/bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def bad_corpus(root: Path) -> tuple[dict[Path, str], dict[Path, str]]:
    """``(bad, odd)``: bad files with the words their error must contain; odd files with their modality."""
    bad: dict[Path, str] = {}
    odd: dict[Path, str] = {}
    root.mkdir(parents=True, exist_ok=True)
    photo = gradient_image(root / "_source.jpg", size=(400, 300))
    png = gradient_image(root / "_source.png", size=(400, 300))
    wav = write_wav(root / "_source.wav", tone(3.0, 16000), 16000)
    mp3 = write_audio(root / "_source.mp3", tone(3.0, 44100), 44100, "libmp3lame")
    mp4 = write_video(root / "_source.mp4", seconds=2.0)
    sources = {p: p.read_bytes() for p in (photo, png, wav, mp3, mp4)}
    for p in sources:
        p.unlink()

    def write(name: str, data: bytes) -> Path:
        path = root / name
        path.write_bytes(data)
        return path

    # --- must fail, one errors row each ---
    bad[write("empty.jpg", b"")] = "empty"
    bad[write("empty.wav", b"")] = "empty"
    bad[write("truncated.jpg", sources[photo][: len(sources[photo]) // 3])] = "truncated"
    bad[write("truncated.png", sources[png][: len(sources[png]) // 3])] = "truncated"
    bad[write("truncated_header.wav", sources[wav][:30])] = "not a readable media file"
    bad[write("truncated_header.mp3", sources[mp3][:40])] = "media file"
    bad[write("truncated.mp4", sources[mp4][: len(sources[mp4]) // 2])] = "not a readable media file"
    bad[write("text.jpg", b"this is a shopping list, not a photo\n")] = "content is text"
    bad[write("pdf.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")] = "PDF document"
    rng = np.random.default_rng(0)
    bad[write("random.jpg", b"\x13\x37" + rng.bytes(5000))] = "not a readable image"
    bad[write("random.mp4", b"\x13\x37" + rng.bytes(5000))] = "not a readable media file"
    bad[write("random.wav", b"\x13\x37" + rng.bytes(5000))] = "not a readable media file"
    # 100 MP declared, one row of data: within the 178 MP cap, so decoded (PIL fills the rest), not a "bomb".
    odd[_png_with_size(root / "bomb.png", 10_000, 10_000)] = "image"
    bad[_png_with_size(root / "giant.png", 20_000, 20_000)] = "declares 400 MP"
    bad[write("latin1.txt", "café crème brûlée".encode("latin-1"))] = "not UTF-8"
    bad[write("blank.txt", b"   \n\n")] = "empty"
    audio_only = write_audio(root / "_a.m4a", tone(2.0, 44100), 44100, "aac")
    odd[audio_only.rename(root / "only_sound.mp4")] = "audio"
    bad[write_video(root / "no_sound.m4a", seconds=1.0)] = "no audio stream"
    (root / "imu").mkdir()
    np.save(root / "imu" / "three_axes.npy", np.zeros((3, 100), np.float32))
    bad[root / "imu" / "three_axes.npy"] = "6"
    bad[write("imu/garbage.npy", rng.bytes(300))] = "not a NumPy .npy file"
    (root / "depth").mkdir()
    np.save(root / "depth" / "nan.npy", np.full((64, 64), np.nan, np.float32))
    bad[root / "depth" / "nan.npy"] = "NaN"
    latin_name = os.fsdecode(b"caf\xe9.jpg")
    gradient_image(Path(os.path.join(str(root), latin_name)))
    bad[root / latin_name] = "not valid UTF-8"
    os.mkfifo(root / "pipe.wav")
    bad[root / "pipe.wav"] = "not a regular file"
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    bad[root / "loop_a.jpg"] = "symbolic link loop"
    bad[root / "loop_b.jpg"] = "symbolic link loop"
    os.symlink("missing.jpg", root / "dangling.jpg")
    bad[root / "dangling.jpg"] = "broken symbolic link"
    (root / "nested").mkdir()
    os.symlink("..", root / "nested" / "up")  # a folder loop
    bad[root / "nested" / "up"] = "already scanned"
    if os.geteuid() != 0:  # root reads anything; tests/test_indexer.py covers the message another way
        bad[gradient_image(root / "locked.jpg")] = "permission denied"
        os.chmod(root / "locked.jpg", 0)

    # --- odd but valid: indexed ---
    odd[write("png_named.jpg", sources[png])] = "image"
    odd[write("truncated_tail.wav", sources[wav][: len(sources[wav]) * 2 // 3])] = "audio"
    odd[gradient_image(root / "one_pixel.png", size=(1, 1))] = "image"
    odd[gradient_image(root / "cmyk.jpg", mode="CMYK")] = "image"
    odd[gradient_image(root / "palette.gif", mode="P")] = "image"
    Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)).save(root / "grey16.png")
    odd[root / "grey16.png"] = "image"
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue")]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    odd[root / "animated.gif"] = "image"
    odd[write_wav(root / "one_ms.wav", tone(0.001, 16000), 16000)] = "audio"
    odd[write_wav(root / "ten_minutes.wav", tone(600, 8000, noise=0.01), 8000)] = "audio"
    odd[write_wav(root / "silent.wav", np.zeros((32000, 1), np.float32), 16000)] = "audio"
    odd[write_wav(root / "rate8k.wav", tone(2.0, 8000), 8000)] = "audio"
    odd[write_audio(root / "rate96k.flac", tone(2.0, 96000), 96000, "flac")] = "audio"
    long_name = "a_very_long_file_name_" + "x" * 200 + ".png"
    odd[gradient_image(root / long_name, size=(64, 64))] = "image"
    odd[gradient_image(root / "no_extension", size=(64, 64), fmt="PNG")] = "image"
    return bad, odd
