"""A pass-through in front of the Slack emulator that can drop or hold chosen requests at the wire (a connection
reset, or no answer at all), to play a network fault on one Slack endpoint the emulator cannot fail by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import web


class FlakyProxy:
    """Forwards every request to ``target``; ``drop`` and ``hang`` pick the ones that get no answer."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        #: (method path, form params) -> True: drop the connection without an answer
        self.drop: Callable[[str, dict[str, str]], bool] = lambda path, params: False
        self.unanswered: list[str] = []
        #: (method path, form params) -> True: hold the request without an answer until ``release`` is set
        self.hang: Callable[[str, dict[str, str]], bool] = lambda path, params: False
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> FlakyProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/"
        self._session = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        params: dict[str, str] = {}
        if request.content_type == "application/x-www-form-urlencoded":
            params = {k: str(v) for k, v in (await request.post()).items()}
        if self.drop(request.path, params):
            self.unanswered.append(request.path)
            assert request.transport is not None
            request.transport.close()  # no answer at all: the client sees the connection reset
            raise web.HTTPInternalServerError()  # (never reaches the client)
        if self.hang(request.path, params):
            self.unanswered.append(request.path)
            await self.release.wait()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        assert self._session is not None
        async with self._session.request(request.method, self.target + request.path_qs, data=body, headers=headers,
                                         allow_redirects=False) as resp:
            data = await resp.read()
            out = web.Response(status=resp.status, body=data)
            for k, v in resp.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "date", "server"):
                    out.headers[k] = v
            return out
