"""xsearch: cross-modal vector search over media collections (ImageBind + LanceDB + FAISS).

The public API is what ``__all__`` lists. Heavy modules (torch, lancedb, faiss) load on first use of the
names that need them (``_LAZY``); type checkers and IDEs read the same names from the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from xsearch.errors import (
    CheckpointError,
    DecodeError,
    ItemNotFound,
    ModelMismatchError,
    NoStreamError,
    QueryError,
    SearchIndexError,
    StoreError,
    UsageError,
    XsearchError,
)
from xsearch.modalities import Modality, Tower
from xsearch.model.choice import ModelChoice
from xsearch.options import ClassifyOptions, EngineSettings, IndexOptions, SearchOptions, Selection

if TYPE_CHECKING:
    from xsearch.collection import Collection
    from xsearch.decode import Outcome
    from xsearch.encoder import Encoder
    from xsearch.indexer.pipeline import RunReport
    from xsearch.model import create_model, load_pretrained
    from xsearch.query import Engine, Query, Result, Results
    from xsearch.query.classify import Labels

__version__ = "0.1.0"

_LAZY = {
    "Collection": "xsearch.collection",
    "Encoder": "xsearch.encoder",
    "Engine": "xsearch.query",
    "Labels": "xsearch.query.classify",
    "Outcome": "xsearch.decode",
    "Query": "xsearch.query",
    "Result": "xsearch.query",
    "Results": "xsearch.query",
    "RunReport": "xsearch.indexer.pipeline",
    "create_model": "xsearch.model",
    "load_pretrained": "xsearch.model",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CheckpointError",
    "ClassifyOptions",
    "Collection",
    "DecodeError",
    "Encoder",
    "Engine",
    "EngineSettings",
    "IndexOptions",
    "ItemNotFound",
    "Labels",
    "Modality",
    "ModelChoice",
    "ModelMismatchError",
    "NoStreamError",
    "Outcome",
    "Query",
    "QueryError",
    "Result",
    "Results",
    "RunReport",
    "SearchIndexError",
    "SearchOptions",
    "Selection",
    "StoreError",
    "Tower",
    "UsageError",
    "XsearchError",
    "__version__",
    "create_model",
    "load_pretrained",
]
