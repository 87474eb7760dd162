"""The warm search service (``xsearch serve``): ``create_app(collection)`` and its browser page."""

from xsearch.server.app import create_app

__all__ = ["create_app"]
