"""JPEGs decoded in batches on the encoder's device (issue: indexing photos at the encoder's speed on a GPU).

Here the batched path runs on the CPU (torchvision's decoder; nvJPEG is the same call on CUDA): its model
input is within 0.01 (mean absolute difference, normalised units) of the PIL path's on a varied corpus, and an
index run that defers JPEGs to the encoder gives every file what the usual run gives: vectors within cosine
0.999, the same errors, thumbnails. The ``gpu`` test runs nvJPEG itself and skips, visibly, without CUDA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xsearch import Collection
from xsearch.encoder import Encoder
from xsearch.preprocess.image import ImageCfg, preprocess_image
from xsearch.preprocess.jpeg_batch import pixels_from_jpegs
from xsearch.testing.media import gradient_image

pytest.importorskip("torchvision", reason="the batched JPEG decoder is torchvision's (pip install 'xsearch[gpu]')")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("jpegs")
    files = [
        gradient_image(root / f"{i}.jpg", size=s, seed=i)
        for i, s in enumerate([(640, 480), (300, 900), (2000, 1500), (224, 224)])
    ]
    base = Image.open(files[0])
    base.convert("L").save(root / "gray.jpg")
    base.convert("CMYK").save(root / "cmyk.jpg")
    Image.open(files[2]).save(root / "progressive.jpg", progressive=True, quality=85)
    exif = base.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees": the upright picture is taller than wide
    base.save(root / "rotated.jpg", exif=exif)
    return [*files, root / "gray.jpg", root / "cmyk.jpg", root / "progressive.jpg", root / "rotated.jpg"]


def test_batched_decode_matches_the_pil_path(corpus):
    cfg = ImageCfg()
    batched = pixels_from_jpegs([f.read_bytes() for f in corpus], cfg.size, "cpu")
    for path, pixels in zip(corpus, batched):
        assert pixels is not None and pixels.dtype == torch.uint8, path.name
        difference = (cfg.normalise(pixels) - preprocess_image(path)).abs().mean()
        assert float(difference) <= 0.01, (path.name, float(difference))


def test_what_the_decoder_refuses_comes_back_as_none(tmp_path):
    assert pixels_from_jpegs([b"\xff\xd8\xff not really a jpeg"], 224, "cpu") == [None]


def test_an_index_run_deferring_jpegs_gives_what_the_usual_run_gives(corpus, tmp_path, tiny_model, monkeypatch):
    import xsearch.preprocess.jpeg_batch as jpeg_batch

    batched = []
    original = jpeg_batch.model_pixels_and_previews
    monkeypatch.setattr(
        jpeg_batch, "model_pixels_and_previews", lambda datas, *a: batched.append(len(datas)) or original(datas, *a)
    )
    media = tmp_path / "media"
    media.mkdir()
    for path in corpus:
        (media / path.name).write_bytes(path.read_bytes())
    (media / "truncated.jpg").write_bytes(corpus[2].read_bytes()[:5000])
    runs = {}
    for gpu_decode in (False, True):
        encoder = Encoder(tiny_model, device="cpu", precision="fp32")
        collection = Collection.open(tmp_path / f"db-{gpu_decode}", encoder=encoder)
        report = collection.index([media], workers=0, gpu_decode=gpu_decode)
        rows = collection.store.items().scan(["uri", "embedding", "thumbnail", "width", "height"]).to_pylist()
        runs[gpu_decode] = (report, {Path(r["uri"]).name: r for r in rows})
    (usual, usual_rows), (deferred, deferred_rows) = runs[False], runs[True]
    assert sum(batched) == len(corpus) + 1  # every JPEG went through the batched decoder, in the deferred run only
    assert set(usual_rows) == set(deferred_rows) and [f.uri for f in usual.failures] == [
        f.uri for f in deferred.failures
    ]
    for name, row in usual_rows.items():
        other = deferred_rows[name]
        assert float(np.dot(row["embedding"], other["embedding"])) >= 0.999, name
        assert other["thumbnail"] and (other["width"], other["height"]) == (row["width"], row["height"]), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_nvjpeg_matches_the_cpu_decoder(corpus):
    cfg = ImageCfg()
    datas = [f.read_bytes() for f in corpus]
    for cpu, gpu in zip(pixels_from_jpegs(datas, cfg.size, "cpu"), pixels_from_jpegs(datas, cfg.size, "cuda")):
        if gpu is not None:  # nvJPEG may refuse some (CMYK): the CPU path takes those
            assert float((cfg.normalise(gpu.cpu()) - cfg.normalise(cpu)).abs().mean()) <= 0.01
