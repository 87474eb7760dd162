"""Small media folders, checkpoints and command runs that the subject tests share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from xsearch.cli.main import app
from xsearch.model import save_checkpoint
from xsearch.testing.media import gradient_image

runner = CliRunner()


def search_json(db, *args, checkpoint=None):
    argv = ["search", "--db", str(db), *map(str, args), "--json"]
    if checkpoint:
        argv += ["--checkpoint", str(checkpoint)]
    result = runner.invoke(app, argv)
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def jpeg_folder(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gradient_image(folder / f"p{i}.jpg", seed=i)
    return folder


def index_cli(media: Path, db: Path, trial: Path, *more: str):
    return runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(trial), *more])


def one_photo_folder(tmp_path: Path) -> Path:
    """A media folder holding one picture, ``a.jpg``."""
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    return media


def basis_vector(i: int) -> np.ndarray:
    return np.eye(1024, dtype=np.float32)[i]


def tiny_checkpoint(tmp_path: Path, model) -> Path:
    return save_checkpoint(model, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})


def numbered_pictures(folder: Path, count: int, suffix: str = ".png", size=(320, 240)) -> Path:
    """``count`` distinct gradient images ``0<suffix>``, ``1<suffix>``... in a new ``folder``."""
    folder.mkdir()
    for i in range(count):
        gradient_image(folder / f"{i}{suffix}", size=size, seed=i)
    return folder
