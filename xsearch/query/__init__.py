"""The query layer: the algebra (``algebra``), the search engine (``engine``), results (``results``) and
zero-shot labels (``classify``)."""

from xsearch.query.algebra import FileTerm, ItemTerm, Query, QueryInput, Term, TextTerm, VectorTerm, combine
from xsearch.query.engine import Engine
from xsearch.query.results import Result, Results

__all__ = [
    "Engine",
    "FileTerm",
    "ItemTerm",
    "Query",
    "QueryInput",
    "Result",
    "Results",
    "Term",
    "TextTerm",
    "VectorTerm",
    "combine",
]
