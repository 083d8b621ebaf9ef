"""Keeping the HTTP side up when clients misbehave: slow requests, too many connections, no file descriptors.

- A client that never finishes sending a request's head is dropped after ``THREADFLOW_HTTP_TIMEOUT`` (aiohttp's
  idle timer, which starts when the connection opens); one that never finishes its body, after the same.
- At most ``max_connections`` connections are open at once; the next one gets a 503 and is closed.
- When ``accept()`` fails for lack of file descriptors, asyncio logs an error every second it retries: that
  is logged once per episode here, with how many were suppressed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("threadflow.bot.server")

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
         b"Connection: close\r\n\r\ntoo many connections\n")


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes: the connection limit is reached."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class BoundedTCPSite(web.TCPSite):
    """``web.TCPSite`` that refuses connections past ``max_connections``."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, max_connections: int) -> None:
        super().__init__(runner, host, port)
        self.max_connections = max_connections
        self.refused = 0

    async def bind(self) -> None:
        """Take the port without accepting connections yet: OSError when it is in use, before anything started.

        ``start`` then accepts them (and binds first if this was not called)."""
        await web.BaseSite.start(self)  # (registers the site: the runner's cleanup closes the socket)
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.Protocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                return _Refuse()
            return server()

        self._server = await asyncio.get_running_loop().create_server(protocol, self._host, self._port,
                                                                      backlog=self._backlog, start_serving=False)

    async def start(self) -> None:
        if self._server is None:
            await self.bind()
        assert isinstance(self._server, asyncio.Server)
        await self._server.start_serving()

    @property
    def bound_port(self) -> int:
        assert isinstance(self._server, asyncio.Server)
        return int(self._server.sockets[0].getsockname()[1])


class AcceptErrorsOncePerEpisode:
    """A loop exception handler that reports "out of file descriptors" once per episode, not every second."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
                 quiet_after: float = 30.0) -> None:
        self.previous = previous
        self.quiet_after = quiet_after
        self.suppressed = 0
        self._last = 0.0
        self.episodes = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last > self.quiet_after:
            self.episodes += 1
            extra = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
            exc = context.get("exception")
            log.error("cannot accept connections: %s%s; new connections wait until descriptors are free "
                      "(raise the open-files limit, or lower THREADFLOW_MAX_CONNECTIONS)",
                      type(exc).__name__ if exc else "out of resources", extra)
            self.suppressed = 0
        else:
            self.suppressed += 1
        self._last = now


def install_accept_error_filter(loop: asyncio.AbstractEventLoop) -> AcceptErrorsOncePerEpisode:
    current = loop.get_exception_handler()
    if isinstance(current, AcceptErrorsOncePerEpisode):
        return current
    handler = AcceptErrorsOncePerEpisode(current)
    loop.set_exception_handler(handler)
    return handler
