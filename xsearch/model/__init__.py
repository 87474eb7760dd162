"""Our ImageBind implementation: configs, model, checkpoint loading."""

from xsearch.model.checkpoint import (
    load_checkpoint,
    load_pretrained,
    resolve_checkpoint,
    save_checkpoint,
    save_random_checkpoint,
)
from xsearch.model.config import (
    IMAGEBIND_HUGE,
    TINY_TEST,
    ImageBindCfg,
    TransformerCfg,
    architecture_of,
    get_config,
    is_random_weights,
)
from xsearch.model.imagebind import ImageBind, create_model
from xsearch.model.pretrained import PRETRAINED, xsearch_home

__all__ = [
    "IMAGEBIND_HUGE",
    "PRETRAINED",
    "TINY_TEST",
    "ImageBind",
    "ImageBindCfg",
    "TransformerCfg",
    "create_model",
    "get_config",
    "load_checkpoint",
    "load_pretrained",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_random_checkpoint",
    "architecture_of",
    "is_random_weights",
    "xsearch_home",
]
