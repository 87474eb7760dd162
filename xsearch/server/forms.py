"""Options classes as form fields: each spelled field of ``SearchOptions`` or ``ClassifyOptions`` becomes a
form parameter of its route (name, type, default, help and bounds from the field's ``Spelling``), and the
route gets the options object, built and checked once. A new search option reaches the API with no edit here.
"""

from __future__ import annotations

import inspect
from typing import Annotated

from fastapi import Form

from xsearch.options import edge_fields, served
from xsearch.server.dependencies import http_errors


def options_form(cls: type):
    """A FastAPI dependency that reads ``cls``'s fields from the form and returns ``cls(...)``: a bad value
    is a 400 naming it, a relative path glob is refused (``served``)."""
    given = edge_fields(cls)

    def options(**values):
        with http_errors():
            return cls(**served(values))

    options.__signature__ = inspect.Signature([_form_field(f) for f in given], return_annotation=cls)
    options.__name__ = f"{cls.__name__}_form"
    return options


def _form_field(field) -> inspect.Parameter:
    spelling = field.spelling
    form = Form(description=spelling.help, ge=spelling.minimum, le=spelling.most)
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=Annotated[field.type, form]
    )
