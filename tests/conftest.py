from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from xsearch import Collection
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.model import save_checkpoint, save_random_checkpoint
from xsearch.testing.media import gradient_image, tone, write_wav

sys.path.insert(0, str(Path(__file__).parent))  # tests/corpus.py, tests/faulty.py (imported by decode workers)

from trials import jpeg_folder  # noqa: E402  (tests/ on the path first)

runner = CliRunner()


@pytest.fixture(scope="session")
def tiny_model():
    """The test-only tiny ImageBind, random weights, seeded."""
    from xsearch.model import create_model

    torch.manual_seed(0)
    return create_model("tiny_test")


@pytest.fixture(scope="session")
def reference():
    """Meta's reference implementation (PyPI ``imagebind-unofficial``, installed with --no-deps).

    Its ``data`` module imports pytorchvideo 0.1.5, which wants ``torchvision.transforms.functional_tensor``,
    a module newer torchvision dropped; it is an alias of ``functional`` for what pytorchvideo uses.
    """
    import torchvision.transforms.functional as tv_functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)
    try:
        import imagebind.data as data
        from imagebind.models import imagebind_model, multimodal_preprocessors
    except ImportError as exc:  # a broken install must fail the parity tests, never skip them
        pytest.fail(f"the reference implementation is not importable ({exc}); install it as README says")
    return type("Reference", (), {"data": data, "model": imagebind_model, "preprocessors": multimodal_preprocessors})


@pytest.fixture(scope="module")
def s3():
    """A real S3 server (moto's, on 127.0.0.1) with the AWS environment pointing at it: ``objectstore.S3``."""
    from objectstore import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    """A checkpoint that names its architecture, as xsearch's own (``random-checkpoint``) do: no --model."""
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.pt", notes={"architecture": "tiny_test"})


@pytest.fixture
def collection(tmp_path, tiny_model):
    """A small indexed collection: photos under photos/, a sound; made with the tiny model."""
    media = tmp_path / "media"
    (media / "photos").mkdir(parents=True)
    for i in range(3):
        gradient_image(media / "photos" / f"p{i}.jpg", seed=i)
    gradient_image(media / "cover.png", seed=9)
    write_wav(media / "tone.wav", tone(2.0, 16000), 16000)
    db = tmp_path / "db"
    Collection.open(db, encoder=Encoder(tiny_model, device="cpu", precision="fp32")).index([media], workers=0)
    return media, db


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    """A trial checkpoint, as ``xsearch random-checkpoint trial.pt`` writes it."""
    return save_random_checkpoint(tmp_path_factory.mktemp("trial") / "trial.pt", "tiny_test", seed=0)


@pytest.fixture(scope="module")
def trial_db(tmp_path_factory, trial) -> tuple[Path, Path]:
    """Three photos and a tone indexed with the trial checkpoint."""
    root = tmp_path_factory.mktemp("trialdb")
    media = jpeg_folder(root / "media" / "photos")
    write_wav(media.parent / "tone.wav", tone(2.0, 16000), 16000)
    db = root / "db"
    done = runner.invoke(app, ["index", str(media.parent), "--db", str(db), "--checkpoint", str(trial), "-q"])
    assert done.exit_code == 0, done.output
    return media.parent, db


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """Three pictures and a tone, indexed with the tiny model: ``(media folder, Collection)``."""
    root = tmp_path_factory.mktemp("hostile")
    for i in range(3):
        gradient_image(root / f"p{i}.jpg", seed=i)
    write_wav(root / "tone.wav", tone(2.0, 16000), 16000)
    db = tmp_path_factory.mktemp("hostile-db") / "db"  # one per module that uses it: none sees another's files
    collection = Collection.open(db, encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    collection.index([root], workers=0)
    return root, collection
