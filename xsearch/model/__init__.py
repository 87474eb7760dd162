"""Our ImageBind implementation: configs, model, checkpoint loading.

The configs (``xsearch.model.config``) import no torch; the model and checkpoint names load torch on first
use, so that commands needing no model (``search --item``, ``info``) never pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from xsearch.model.config import (
    IMAGEBIND_HUGE,
    TINY_TEST,
    ImageBindCfg,
    TransformerCfg,
    architecture_of,
    get_config,
    is_random_weights,
)
from xsearch.model.pretrained import PRETRAINED, xsearch_home

if TYPE_CHECKING:
    from xsearch.model.checkpoint import (
        TowerSource,
        load_checkpoint,
        load_pretrained,
        open_checkpoint,
        resolve_checkpoint,
        save_checkpoint,
        save_random_checkpoint,
    )
    from xsearch.model.imagebind import ImageBind, create_model

_LAZY = {
    "ImageBind": "xsearch.model.imagebind",
    "create_model": "xsearch.model.imagebind",
    "load_checkpoint": "xsearch.model.checkpoint",
    "load_pretrained": "xsearch.model.checkpoint",
    "open_checkpoint": "xsearch.model.checkpoint",
    "TowerSource": "xsearch.model.checkpoint",
    "resolve_checkpoint": "xsearch.model.checkpoint",
    "save_checkpoint": "xsearch.model.checkpoint",
    "save_random_checkpoint": "xsearch.model.checkpoint",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xsearch.model' has no attribute {name!r}")


__all__ = [
    "IMAGEBIND_HUGE",
    "PRETRAINED",
    "TINY_TEST",
    "ImageBind",
    "ImageBindCfg",
    "TransformerCfg",
    "architecture_of",
    "create_model",
    "get_config",
    "is_random_weights",
    "load_checkpoint",
    "load_pretrained",
    "open_checkpoint",
    "TowerSource",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_random_checkpoint",
    "xsearch_home",
]
