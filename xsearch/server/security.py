"""Who may ask, and how much: the token, the page's session cookie, signed preview and media URLs, and the
guard every request passes before FastAPI reads it (body size and time, cross-origin POSTs).

With a token, every ``/api`` route needs it as ``Authorization: Bearer``; the previews and media a search
returns carry short-lived signatures instead (an ``<img>`` or ``<audio>`` cannot send a header), so the token
itself never appears in a URL, a log or the browser's history. The page asks for a session cookie standing
for the token (HttpOnly, same site only), with which ``/docs`` opens in the browser.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time

from fastapi.responses import JSONResponse

from xsearch.errors import UsageError

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
FIELDS_BYTES = 8 << 20  # a request's texts and other fields, above its uploads
BODY_SECONDS = 120.0  # a request body must arrive within this (a slow client cannot hold a worker for ever)
MAX_INPUTS = 16  # files, texts and items in one search: each file is decoded and encoded while others wait
MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "xsearch_session"
SIGNATURE_SECONDS = 3600  # how long a preview or media URL from a search stays valid
SESSION_SECONDS = 12 * 3600  # how long the page's session cookie stands for the token


def check_token(token: str | None) -> None:
    """A token must be hard to guess: at least 16 characters (``UsageError`` otherwise)."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(
            f"a token of {len(token)} characters is easy to guess; use at least {MIN_TOKEN_LENGTH} "
            '(python -c "import secrets; print(secrets.token_urlsafe())")',
            argument="token",
        )


class Signer:
    """Short-lived signed URLs for previews and media, so that a token never travels in a URL: an HMAC of
    the item, the kind and an expiry time, keyed by the token (no token: plain URLs)."""

    def __init__(self, token: str | None):
        self.key = hashlib.sha256(token.encode()).digest() if token else None
        self._sessions = secrets.token_bytes(16)  # new per server: a restart or ``revoke_sessions`` ends them

    def _signature(self, item_id, kind: str, expires: int) -> str:
        message = f"{item_id}:{kind}:{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def url(self, item_id: int, kind: str) -> str:
        url = f"/api/items/{item_id}/{kind}"
        if self.key is None:
            return url
        expires = int(time.time()) + SIGNATURE_SECONDS
        return f"{url}?expires={expires}&signature={self._signature(item_id, kind, expires)}"

    def session(self, expires: int | None = None) -> str:
        """A session cookie's value: its expiry and an HMAC of it under the token and this server's session
        key (useless elsewhere, after ``SESSION_SECONDS``, or once revoked)."""
        expires = int(time.time()) + SESSION_SECONDS if expires is None else expires
        return f"{expires}.{hmac.new(self.key, self._sessions + str(expires).encode(), hashlib.sha256).hexdigest()}"

    def valid_session(self, value: str) -> bool:
        expires, _, _ = value.partition(".")
        if self.key is None or not value.isascii() or not expires.isdigit() or len(expires) > 12:
            return False
        return int(expires) >= time.time() and hmac.compare_digest(value, self.session(int(expires)))

    def revoke_sessions(self) -> None:
        self._sessions = secrets.token_bytes(16)

    def valid(self, item_id: str, kind: str, query) -> bool:
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            return False
        if expires < time.time():
            return False
        given = query.get("signature", "")
        if not given.isascii():  # compare_digest refuses non-ASCII text (a TypeError, which was a 500)
            return False
        return hmac.compare_digest(given, self._signature(item_id, kind, expires))


class RequestGuard:
    """Every request, before FastAPI reads it: a body larger than ``max_body`` is refused from its
    Content-Length, or as soon as it streams past it (413), a body slower than ``seconds`` is cut (408), and,
    a cross-origin POST (any web page the user opens could send one; ``Origin: null`` is a sandboxed frame's or
    a ``file:`` page's) is refused (403)."""

    def __init__(self, app, max_body: int, seconds: float):
        self.app, self.max_body, self.seconds = app, max_body, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        deadline = time.monotonic() + self.seconds
        received, complete, refused, told = 0, False, None, False

        async def bounded_receive():
            nonlocal received, complete, refused
            if complete:  # the body is in: later calls wait for a disconnect, for as long as a response takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                refused = (408, f"the request body did not arrive within {self.seconds:g} s")
                raise _Refused from None
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if received > self.max_body:
                refused = (413, self._too_large())
                raise _Refused
            return message

        async def tell():
            nonlocal told
            if not told:
                told = True
                await JSONResponse({"detail": refused[1]}, status_code=refused[0])(scope, receive, send)

        async def answer(message):
            # Whatever the app makes of a body cut short (FastAPI: "error parsing the body"), the client is
            # told why it was cut.
            if refused is None:
                return await send(message)
            if message["type"] == "http.response.start":
                await tell()

        try:
            await self.app(scope, bounded_receive, answer)
        except _Refused:
            await tell()

    def _too_large(self) -> str:
        uploads = (self.max_body - FIELDS_BYTES) / (1 << 20)
        return f"the request is larger than {uploads:g} MB of uploads and {FIELDS_BYTES >> 20} MB of fields"

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str] | None:
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self.max_body:
            return 413, self._too_large()
        origin = headers.get("origin")
        if scope["method"] in ("POST", "DELETE") and origin is not None:
            if origin == "null" or origin.split("://", 1)[-1] != headers.get("host", ""):
                return 403, "cross-origin requests are refused"
        return None


class _Refused(Exception):
    """A request body cut short by ``RequestGuard`` (the reason is the guard's)."""
