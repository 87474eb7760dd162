"""xsearch: cross-modal vector search over media collections (ImageBind + LanceDB + FAISS).

Heavy modules (torch, lancedb, faiss) load on first use of the names that need them.
"""

from __future__ import annotations

import importlib

from xsearch.errors import (
    CheckpointError,
    DecodeError,
    NoStreamError,
    QueryError,
    SearchIndexError,
    StoreError,
    UsageError,
    XsearchError,
)
from xsearch.modalities import Modality, Tower

__version__ = "0.1.0"

_LAZY = {
    "Collection": "xsearch.collection",
    "Encoder": "xsearch.encoder",
    "Engine": "xsearch.query",
    "Query": "xsearch.query",
    "create_model": "xsearch.model",
    "load_pretrained": "xsearch.model",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xsearch' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Collection",
    "DecodeError",
    "Encoder",
    "Engine",
    "Modality",
    "NoStreamError",
    "Query",
    "QueryError",
    "SearchIndexError",
    "StoreError",
    "Tower",
    "UsageError",
    "XsearchError",
    "__version__",
    "create_model",
    "load_pretrained",
]
