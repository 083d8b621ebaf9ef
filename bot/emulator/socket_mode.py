"""Socket Mode: Slack's requests to the bot over a WebSocket the bot opens, instead of signed HTTP requests.

The bot calls ``apps.connections.open`` with its app-level token (``xapp-...``) and connects to the URL it
gets; Slack says ``hello`` and then sends each request as an envelope (``slash_commands``, ``interactive``,
``events_api``) that the bot acknowledges with the envelope's id, optionally with a response payload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from .state import Json, WorkspaceState

log = logging.getLogger(__name__)

#: Envelope types by what Slack delivers.
ENVELOPE_TYPES = {"slash_command": "slash_commands", "event_callback": "events_api", "block_actions": "interactive",
                  "view_submission": "interactive", "view_closed": "interactive"}


class SocketModeServer:
    """The WebSocket side; ``connected`` once a bot said it is there (after ``hello``)."""

    def __init__(self, state: WorkspaceState) -> None:
        self.state = state
        self.app_tokens: set[str] = set()
        self.base_ws_url = ""
        self._ws: web.WebSocketResponse | None = None
        self._acks: dict[str, asyncio.Future[Json]] = {}
        self._tickets: set[str] = set()
        self.connected = asyncio.Event()

    def install(self, app: web.Application) -> None:
        app.router.add_get("/socket-mode", self.handle_ws)

    def open_connection(self, token: str | None) -> Json:
        """``apps.connections.open``: only an app-level token may open one."""
        if not token or token not in self.app_tokens:
            return {"ok": False, "error": "invalid_auth" if token and not token.startswith("xapp-") else "not_authed"}
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"ok": True, "url": f"{self.base_ws_url}socket-mode?ticket={ticket}"}

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        ticket = request.query.get("ticket", "")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        if ticket not in self._tickets:
            await ws.close(code=4001, message=b"invalid ticket")
            return ws
        self._tickets.discard(ticket)
        self._ws = ws
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1,
                                      "connection_info": {"app_id": self.state.app_id},
                                      "debug_info": {"host": "emulator", "approximate_connection_time": 3600}}))
        self.connected.set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                future = self._acks.pop(str(data.get("envelope_id") or ""), None)
                if future is not None and not future.done():
                    future.set_result(data)
        finally:
            if self._ws is ws:
                self._ws = None
                self.connected.clear()
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(ConnectionError("the bot's Socket Mode connection closed"))
            self._acks.clear()
        return ws

    async def send(self, kind: str, payload: Json, *, timeout: float, retry_attempt: int = 0,
                   retry_reason: str = "") -> tuple[int, str]:
        """Deliver one request; returns what the bot acknowledged as ``(status, body)`` (HTTP-like)."""
        ws = self._ws
        if ws is None:
            raise ConnectionError("no bot is connected in Socket Mode")
        envelope_id = str(uuid.uuid4())
        envelope: Json = {"envelope_id": envelope_id, "type": ENVELOPE_TYPES.get(kind, "events_api"),
                          "payload": payload, "accepts_response_payload": kind != "event_callback"}
        if kind == "event_callback":
            envelope.update(retry_attempt=retry_attempt, retry_reason=retry_reason)
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = future
        await ws.send_str(json.dumps(envelope))
        try:
            ack = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._acks.pop(envelope_id, None)
            return 504, ""
        body: Any = ack.get("payload")
        return 200, json.dumps(body) if body else ""

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
