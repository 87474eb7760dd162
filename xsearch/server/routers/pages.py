"""The browser page (``/``: no data, served to anyone who can reach the server), the API's description
(``/docs``, ``/openapi.json``: under the token, offline) and the session cookie the page opens it with."""

from __future__ import annotations

import os
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from xsearch.server.dependencies import GUARDED, served
from xsearch.server.security import SESSION_COOKIE, SESSION_SECONDS

router = APIRouter(include_in_schema=False)


def docs_assets() -> str | None:
    """Swagger UI's files, packaged by fastapi-offline, so ``/docs`` needs no CDN."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    return os.path.join(os.path.dirname(fastapi_offline.__file__), "static")


@router.get("/", response_class=HTMLResponse)
def page() -> str:
    return resources.files("xsearch.server").joinpath("page.html").read_text(encoding="utf-8")


@router.post("/api/session", dependencies=GUARDED)
def session(request: Request) -> Response:
    """A cookie standing for the token (HttpOnly, same site only, for ``SESSION_SECONDS``), so that a browser
    can open ``/docs``."""
    serving = served(request)
    answer = Response(status_code=204)
    if serving.token is not None:
        cookie = serving.signer.session()
        answer.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, samesite="strict")
    return answer


@router.delete("/api/session", dependencies=GUARDED)
def end_sessions(request: Request) -> Response:
    """Revoke every session cookie handed out so far (a restart does too)."""
    served(request).signer.revoke_sessions()
    answer = Response(status_code=204)
    answer.delete_cookie(SESSION_COOKIE)
    return answer


@router.get("/openapi.json", dependencies=GUARDED)
def openapi(request: Request) -> dict:
    return request.app.openapi()


@router.get("/docs", response_class=HTMLResponse, dependencies=GUARDED)
def docs() -> HTMLResponse:
    if docs_assets() is None:
        raise HTTPException(404, "the API page needs the fastapi-offline package (pip install fastapi-offline)")
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="xsearch API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon.png",
    )
