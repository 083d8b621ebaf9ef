"""Round trips to PostgreSQL counted on the wire: every request any asyncpg connection of this process sends.

Counting in SQLAlchemy (its ``begin``/``execute``/``commit`` events) misses whatever does not go through its
execution layer: the pool's pre-ping (``BEGIN``, ``;``, ``ROLLBACK``), a prepare, and statements sent on the
asyncpg connection directly. So the counter sits under asyncpg instead: while installed, every asyncpg
connection opened in the process has its transport's ``write`` wrapped, and the frontend messages it sends
are read by type (PostgreSQL's protocol: a type byte and a length). A round trip is a message after which
the client waits for the server: ``Q`` (a simple query: ``BEGIN``, ``COMMIT``, ``ROLLBACK``, ...), ``S``
(Sync, which ends every extended-protocol request: a prepared statement's Bind/Execute, an ``executemany``)
and ``H`` (Flush, which asyncpg sends to have a statement prepared and described). ``P`` (Parse) counts
the statements prepared, inside those round trips.

Connections opened before :meth:`WireCounter.install` are not seen: install it before the engine opens.
"""

from __future__ import annotations

import struct
from typing import Any

#: Frontend message types after which the client waits for the server's answer.
ROUND_TRIP_TYPES = (ord("Q"), ord("S"), ord("H"))
_LENGTH = struct.Struct("!i")


class WireCounter:
    def __init__(self) -> None:
        self.messages: dict[int, int] = {}
        self._original: Any = None

    def install(self) -> None:
        import asyncpg.connection

        cls = asyncpg.connection.Connection
        original = self._original = cls.__init__
        counter = self

        def __init__(conn: Any, protocol: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
            original(conn, protocol, transport, *args, **kwargs)
            counter._wrap(transport)

        cls.__init__ = __init__

    def uninstall(self) -> None:
        import asyncpg.connection

        if self._original is not None:
            asyncpg.connection.Connection.__init__ = self._original
            self._original = None

    def _wrap(self, transport: Any) -> None:
        write = transport.write
        messages = self.messages

        def counting_write(data: Any) -> None:
            # The startup exchange is over by the time asyncpg builds its Connection: from here on every
            # message starts with its type byte and its length (which includes itself, not the type).
            view = bytes(data)
            at = 0
            while at < len(view):
                kind = view[at]
                messages[kind] = messages.get(kind, 0) + 1
                at += 1 + _LENGTH.unpack_from(view, at + 1)[0]
            write(data)

        transport.write = counting_write

    def snapshot(self) -> dict[int, int]:
        return dict(self.messages)

    @staticmethod
    def since(before: dict[int, int], after: dict[int, int]) -> dict[str, int]:
        """What was sent between two snapshots: round trips, and the messages behind them by kind."""
        sent = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
        return {
            "round_trips": sum(sent.get(kind, 0) for kind in ROUND_TRIP_TYPES),
            "simple_queries": sent.get(ord("Q"), 0),
            "syncs": sent.get(ord("S"), 0),
            "flushes": sent.get(ord("H"), 0),
            "prepares": sent.get(ord("P"), 0),
            "executes": sent.get(ord("E"), 0),
        }
