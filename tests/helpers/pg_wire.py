"""TCP proxies in front of PostgreSQL that fail the network between client and server at awkward points.

- :class:`CommitCutter` cuts a connection right after the server committed a transaction, before its answer reaches
  the client (a network failure or a proxy restart at that moment). The client then sees a dropped connection for
  a COMMIT that did happen: a commit of unknown outcome.
- :class:`Blackhole` makes every open connection go silent at once, as clients of a primary that died (power loss,
  a kernel panic, a network partition) see during a failover, or refuses and drops them all (an outage).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy.engine import make_url

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class _Proxy:
    """A TCP proxy on 127.0.0.1 (``port``) in front of a PostgreSQL server; each connection is served (``_serve``) in a
    task of its own, canceled at :meth:`close`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class CommitCutter(_Proxy):
    """``cutter.arm(n)``: the next ``n`` answers to a ``COMMIT`` are not delivered; their connections are cut.

    ``cutter.hold(b"SQL text")``: the next statement whose SQL contains the text is held on its way to the server
    (a slow network at that moment) until ``cutter.release()``; ``cutter.held`` is set once it is.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self.armed = 0
        self.cut = 0
        self._hold_pattern: bytes | None = None
        self.held = asyncio.Event()
        self._released = asyncio.Event()

    def hold(self, pattern: bytes) -> None:
        self._hold_pattern = pattern
        self.held.clear()
        self._released.clear()

    def release(self) -> None:
        self._hold_pattern = None
        self._released.set()

    def arm(self, n: int = 1) -> None:
        self.armed = n

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            self._tasks.discard(task)
            return
        single_bytes = [0]  # answers of one byte the server owes (SSL / GSSENC requests)
        done = asyncio.Event()

        def cut() -> None:
            for w in (c_writer, s_writer):
                try:
                    w.transport.abort()
                except Exception:
                    pass
            done.set()

        async def client_to_server() -> None:
            try:
                started = False
                while not started:  # untyped startup packets
                    head = await c_reader.readexactly(4)
                    (length,) = struct.unpack("!i", head)
                    body = await c_reader.readexactly(length - 4)
                    code = struct.unpack("!i", body[:4])[0] if len(body) >= 4 else 0
                    if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                        single_bytes[0] += 1
                    else:
                        started = True
                    s_writer.write(head + body)
                    await s_writer.drain()
                statements: dict[bytes, bytes] = {}  # prepared statement name -> its SQL
                while True:
                    head = await c_reader.readexactly(5)
                    kind = head[:1]
                    (length,) = struct.unpack("!i", head[1:])
                    body = await c_reader.readexactly(length - 4)
                    sql = b""
                    if kind == b"P":  # Parse: name, query
                        name, query = body.split(b"\0")[:2]
                        statements[name] = query
                    elif kind == b"B":  # Bind: portal, statement name: the statement is executed with it
                        sql = statements.get(body.split(b"\0")[1], b"")
                    elif kind == b"Q":
                        sql = body
                    pattern = self._hold_pattern
                    if pattern is not None and sql and pattern in sql:
                        self._hold_pattern = None
                        self.held.set()
                        await self._released.wait()
                    s_writer.write(head + body)
                    await s_writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            cut()

        async def server_to_client() -> None:
            try:
                while True:
                    if single_bytes[0]:
                        b = await s_reader.readexactly(1)
                        single_bytes[0] -= 1
                        c_writer.write(b)
                        await c_writer.drain()
                        continue
                    head = await s_reader.readexactly(5)
                    kind = head[:1]
                    (length,) = struct.unpack("!i", head[1:])
                    body = await s_reader.readexactly(length - 4)
                    if kind == b"C" and body.rstrip(b"\0") == b"COMMIT" and self.armed > 0:
                        self.armed -= 1
                        self.cut += 1
                        break  # committed on the server; the client never hears of it
                    c_writer.write(head + body)
                    await c_writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            cut()

        try:
            await asyncio.gather(client_to_server(), server_to_client())
        finally:
            self._tasks.discard(task)


@asynccontextmanager
async def commit_cutter(url: str) -> AsyncIterator[tuple[CommitCutter, str]]:
    """A proxy in front of ``url``'s server, and the URL that goes through it."""
    async with _in_front(CommitCutter, url) as proxied:
        yield proxied


P = TypeVar("P", bound=_Proxy)


@asynccontextmanager
async def _in_front(kind: type[P], url: str) -> AsyncIterator[tuple[P, str]]:
    """A ``kind`` proxy started in front of ``url``'s server, the URL that goes through it; closed afterwards."""
    parsed = make_url(url)
    proxy = kind(parsed.host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    try:
        yield proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        await proxy.close()


class Blackhole(_Proxy):
    """Nothing answers on the old connections after :meth:`fail_over` and nothing closes them (no RST, no FIN: the
    host is gone), while new connections reach the server (the new primary, where DNS or the proxy now points).
    ``refusing``: new connections are dropped at once (the server is down); :meth:`cut_all` drops the open ones."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.generation = 0
        self.refusing = False
        self._writers: list[asyncio.StreamWriter] = []
        self.silenced = 0
        #: ``hold_on``: the first client message holding these bytes is not forwarded; ``held`` is set then.
        self.hold_on: bytes | None = None
        self.held = asyncio.Event()

    def fail_over(self) -> None:
        """Every connection open now goes silent for good; new ones reach the server."""
        self.generation += 1

    def cut_all(self) -> None:
        """Every connection open now is closed at once (the server restarted, or the old primary's host answers RST)."""
        for w in self._writers:
            try:
                w.transport.abort()
            except Exception:
                pass
        self._writers.clear()

    async def close(self) -> None:
        self.cut_all()  # (a silent connection never ends by itself)
        await super().close()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.refusing:
            c_writer.transport.abort()
            self._tasks.discard(task)
            return
        born = self.generation
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.transport.abort()
            self._tasks.discard(task)
            return
        self._writers += [c_writer, s_writer]
        silent = asyncio.Event()

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    if writer is s_writer and self.hold_on is not None and self.hold_on in data:
                        self.hold_on = None
                        self.held.set()
                        await asyncio.Event().wait()  # never forwarded (the test cuts the connection)
                    if self.generation != born:
                        if not silent.is_set():
                            silent.set()
                            self.silenced += 1
                        await asyncio.Event().wait()  # the host is gone: nothing arrives, nothing is closed
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            for w in (c_writer, s_writer):
                try:
                    w.transport.abort()
                except Exception:
                    pass

        try:
            await asyncio.gather(pump(c_reader, s_writer), pump(s_reader, c_writer))
        except asyncio.CancelledError:
            pass  # closed (a silent connection never ends by itself): a normal end, not an error asyncio logs
        finally:
            self._tasks.discard(task)


@asynccontextmanager
async def blackhole(url: str) -> AsyncIterator[tuple[Blackhole, str]]:
    """A :class:`Blackhole` in front of ``url``'s server, and the URL that goes through it."""
    async with _in_front(Blackhole, url) as proxied:
        yield proxied
