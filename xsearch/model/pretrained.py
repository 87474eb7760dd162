"""Pretrained weights: where they come from, what they are checked against, and their licence.

Architecture (``config.py``) and weights are kept apart, as open_clip does: a weights entry names its
architecture, download URL, checksum and licence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PretrainedWeights:
    name: str
    architecture: str
    url: str
    filename: str
    license: str
    # Published checksum, when the publisher gives one. Meta publishes none for imagebind_huge.pth; the
    # first download records the file's sha256 beside it and every later load checks against that record.
    sha256: str | None = None


IMAGEBIND_LICENSE = (
    "The ImageBind weights are Meta's, released under CC-BY-NC 4.0: non-commercial use only "
    "(https://creativecommons.org/licenses/by-nc/4.0/). xsearch's own code is separate from them."
)

PRETRAINED: dict[str, PretrainedWeights] = {
    "imagebind_huge": PretrainedWeights(
        name="imagebind_huge",
        architecture="imagebind_huge",
        url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
        filename="imagebind_huge.pth",
        license=IMAGEBIND_LICENSE,
    ),
}


CHECKPOINT_ENV = "XSEARCH_CHECKPOINT"


def given_checkpoint(checkpoint: str | os.PathLike | None = None) -> str | None:
    """The checkpoint file the user named: ``checkpoint``, else ``$XSEARCH_CHECKPOINT`` (the one place that
    reads it), else ``None`` (the cached download of published weights)."""
    named = checkpoint or os.environ.get(CHECKPOINT_ENV)
    return os.fspath(named) if named else None


def xsearch_home() -> Path:
    """The cache directory: ``$XSEARCH_HOME``, else ``~/.cache/xsearch``."""
    return Path(os.environ.get("XSEARCH_HOME") or Path.home() / ".cache" / "xsearch").expanduser()


def checkpoint_dir() -> Path:
    return xsearch_home() / "checkpoints"
