"""The HTTP connection ``xsearch serve`` runs: uvicorn's h11 protocol, with a deadline for a request's head.

uvicorn arms its keep-alive timer only after a first response, and disarms it at the first byte, so a client
that connects and then says nothing, or a byte at a time, holds a connection for ever (1,100 such clients
blocked every search for 90 s). Here a connection whose first request line and headers have not arrived
within ``HEAD_SECONDS`` is closed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class TimelyH11Protocol(H11Protocol):
    HEAD_SECONDS = 20.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline = self.loop.call_later(self.HEAD_SECONDS, self._head_too_slow)

    def _head_too_slow(self) -> None:
        if self.cycle is None and not self.transport.is_closing():  # no request has begun
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline.cancel()
        super().connection_lost(exc)
