"""A fake Slack Web API (``/api/<method>``) and ``response_url`` endpoint served by aiohttp.

The bot talks to this over real HTTP through slack_sdk, so the request encoding (JSON vs
form vs query string), auth headers, error shapes and rate-limit headers all have to match
what Slack does; otherwise a bot that passes here could still break against real Slack.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .limits import block_problems, text_too_long
from .realism import REALISTIC_LATENCY, Latency, RateLimits
from .state import ApiCall, Json, Message, ResponseUrl, View, WorkspaceState, truthy

JSON_FIELDS = ("blocks", "attachments", "view", "metadata")
Handler = Callable[[Json, str], Json]


class ApiError(Exception):
    """Raised by a method handler to answer ``{"ok": false, "error": ...}`` (HTTP 200, as Slack)."""

    def __init__(self, error: str, messages: list[str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        #: Slack's reasons, answered as ``response_metadata.messages`` (``invalid_blocks`` lists them).
        self.messages = messages or []


@dataclass
class Fault:
    """An injected failure for the next ``times`` calls of ``method`` (``"*"`` = any method).

    ``delay`` holds the answer back that many seconds (longer than the client waits: a timeout); with
    ``apply`` the call still takes effect (Slack did it, the answer was lost). ``drop`` closes the connection
    without an answer. ``when`` limits the fault to calls whose parameters it accepts.
    """

    method: str
    status: int
    error: str
    retry_after: int | None
    times: int
    delay: float = 0.0
    apply: bool = False
    drop: bool = False
    when: Callable[[Json], bool] | None = None


def default_error(status: int) -> str:
    if status == 429:
        return "ratelimited"
    if status == 503:
        return "service_unavailable"
    return "internal_error" if status >= 500 else "fatal_error"


def apply_response(state: WorkspaceState, ru: ResponseUrl, body: Json, *, count_use: bool = True) -> tuple[int, Json]:
    """Apply a response_url body (or a slash command's immediate reply) like Slack does.

    ``delete_original``/``replace_original`` act on the message the interaction came from;
    otherwise ``response_type`` picks an in-channel bot message or (default) an ephemeral.
    """
    if count_use:
        if ru.uses >= 5:
            return 404, {"ok": False, "error": "used_too_many_times"}
        ru.uses += 1
        ru.posts.append(body)
    text, blocks = body.get("text", ""), body.get("blocks")
    if truthy(body.get("delete_original")) or truthy(body.get("replace_original")):
        original = state.find_message(ru.message_ts or "", ru.channel) if ru.message_ts else None
        eph = state.find_ephemeral(ru.message_ts or "") if ru.message_ts else None
        if truthy(body.get("delete_original")):
            if original is not None:
                state.delete_message(original)
            elif eph is not None:
                state.ephemeral_messages.remove(eph)
                state.notify("ephemeral.deleted", channel=eph.channel, user=eph.user, ts=eph.ts)
            return 200, {"ok": True}
        if original is not None:
            state.update_message(original, editor=state.bot_user_id, text=text, blocks=blocks or [])
            return 200, {"ok": True}
        if eph is not None:
            eph.text, eph.blocks = text, blocks
            state.notify("ephemeral.updated", channel=eph.channel, user=eph.user, ts=eph.ts,
                         message=eph.to_api())
            return 200, {"ok": True}
        return 404, {"ok": False, "error": "message_not_found"}
    if not text and not blocks:
        return 400, {"ok": False, "error": "no_text"}
    thread_ts = body.get("thread_ts") or ru.thread_ts
    if body.get("response_type") == "in_channel":
        state.add_message(ru.channel, text=text, user=state.bot_user_id, blocks=blocks, thread_ts=thread_ts)
    else:
        state.add_ephemeral(ru.channel, ru.user, text=text, blocks=blocks, thread_ts=thread_ts,
                            source=f"response_url:{ru.kind}")
    return 200, {"ok": True}


class SlackWebApi:
    """Route table plus method implementations operating on a ``WorkspaceState``."""

    def __init__(self, state: WorkspaceState, on_bot_message: Callable[[Message], None] | None = None) -> None:
        self.state = state
        self.faults: list[Fault] = []
        self.latency = Latency()
        self.rate_limits = RateLimits()
        self.open_socket: Callable[[str | None], Json] | None = None
        self.on_bot_message = on_bot_message
        #: Refuse messages over Slack's limits as Slack does (``msg_too_long``, ``invalid_blocks``).
        self.enforce_limits = True
        self.methods: dict[str, Handler] = {
            "auth.test": self.auth_test,
            "chat.postMessage": self.chat_post_message,
            "chat.update": self.chat_update,
            "chat.delete": self.chat_delete,
            "chat.postEphemeral": self.chat_post_ephemeral,
            "conversations.history": self.conversations_history,
            "conversations.replies": self.conversations_replies,
            "conversations.info": self.conversations_info,
            "users.info": self.users_info,
            "views.open": self.views_open,
            "views.update": self.views_update,
        }

    def install(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/{method}", self.handle_api)
        app.router.add_post("/response_url/{id}", self.handle_response_url)

    def fail_next(self, method: str, *, status: int = 429, retry_after: int | None = 1, times: int = 1,
                  error: str | None = None, delay: float = 0.0, apply: bool = False, drop: bool = False,
                  when: Callable[[Json], bool] | None = None) -> None:
        self.faults.append(Fault(method, status, error or default_error(status), retry_after, times, delay, apply,
                                 drop, when))

    def realistic(self, on: bool = True, *, latency: tuple[float, float] = REALISTIC_LATENCY) -> None:
        """Behave like the real Web API: every call takes ``latency`` seconds, Slack's rate limits apply."""
        if on:
            self.latency.set("*", *latency)
        else:
            self.latency.ranges.pop("*", None)
        self.rate_limits.enabled = on

    def _take_fault(self, method: str, params: Json) -> Fault | None:
        for fault in self.faults:
            if fault.method in (method, "*") and (fault.when is None or fault.when(params)):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    # -- HTTP plumbing ---------------------------------------------------------------------
    @staticmethod
    async def parse_params(request: web.Request) -> Json:
        """Merge query string and body the way Slack does; JSON-in-form fields are decoded."""
        params: Json = dict(request.query)
        if request.body_exists:
            if request.content_type == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
            else:
                params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        for key in JSON_FIELDS:
            if isinstance(params.get(key), str) and params[key]:
                try:
                    params[key] = json.loads(params[key])
                except ValueError:
                    pass
        return params

    async def handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self.parse_params(request)
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else params.pop("token", None)
        params.pop("token", None)
        call = ApiCall(method, params, request.method, request.content_type, token, self.state.clock())
        headers: dict[str, str] = {}
        latency = self.latency.of(method)
        if latency > 0:
            await asyncio.sleep(latency)
        fault = self._take_fault(method, params)
        wait = self.rate_limits.check(self.state.team_id, method, self._channel_id(params)) if fault is None else 0.0
        if fault is not None and not fault.apply:
            call.status, body = fault.status, {"ok": False, "error": fault.error}
            if fault.retry_after is not None and fault.status == 429:
                headers["Retry-After"] = str(fault.retry_after)
        elif wait > 0:
            call.status, body = 429, {"ok": False, "error": "ratelimited"}
            headers["Retry-After"] = str(self.rate_limits.retry_after(wait))
        else:
            body = self._answer(method, params, token)
            if fault is not None and fault.status != 200:  # it took effect, and the answer says it failed
                call.status, body = fault.status, {"ok": False, "error": fault.error}
        call.response = body
        self.state.record_call(call)
        if fault is not None and fault.delay > 0:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.drop:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)  # never reaches the client: the connection is gone
        return web.json_response(body, status=call.status, headers=headers)

    def _answer(self, method: str, params: Json, token: str | None) -> Json:
        if method == "apps.connections.open" and self.open_socket is not None:
            return self.open_socket(token)  # app-level tokens only, not the bot's
        if method not in self.methods:
            return {"ok": False, "error": "unknown_method"}
        if not token:
            return {"ok": False, "error": "not_authed"}
        if token not in self.state.tokens:
            return {"ok": False, "error": "invalid_auth"}
        try:
            return {"ok": True, **self.methods[method](params, self.state.tokens[token])}
        except ApiError as exc:
            if exc.messages:
                return {"ok": False, "error": exc.error, "response_metadata": {"messages": exc.messages}}
            return {"ok": False, "error": exc.error}

    def _channel_id(self, params: Json) -> str | None:
        channel = self.state.resolve_channel(params.get("channel")) if params.get("channel") else None
        return channel.id if channel is not None else None

    async def handle_response_url(self, request: web.Request) -> web.Response:
        ru = self.state.response_urls.get(request.match_info["id"])
        if ru is None:
            return web.json_response({"ok": False, "error": "no_service"}, status=404)
        try:
            body = await request.json() if request.content_type == "application/json" else dict(await request.post())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"ok": False, "error": "invalid_payload"}, status=400)
        if isinstance(body.get("blocks"), str):
            body["blocks"] = json.loads(body["blocks"])
        status, result = apply_response(self.state, ru, body)
        self.state.notify("response_url.posted", id=ru.id, status=status, body=body)
        if status == 200:
            return web.Response(text="ok")  # real Slack answers a bare "ok"
        return web.json_response(result, status=status)

    # -- helpers ---------------------------------------------------------------------------
    def _channel(self, params: Json) -> str:
        channel = self.state.resolve_channel(params.get("channel"))
        if channel is None:
            raise ApiError("channel_not_found")
        return channel.id

    def _message(self, params: Json, channel: str) -> Message:
        msg = self.state.find_message(str(params.get("ts", "")), channel)
        if msg is None:
            raise ApiError("message_not_found")
        return msg

    def _within_limits(self, params: Json) -> None:
        """Slack's limits on one message (see :mod:`bot.emulator.limits`)."""
        if not self.enforce_limits:
            return
        if text_too_long(params.get("text")):
            raise ApiError("msg_too_long")
        problems = block_problems(params.get("blocks"))
        if problems:
            raise ApiError("invalid_blocks", [f"[ERROR] {p}" for p in problems])

    @staticmethod
    def _page(items: list[Any], params: Json) -> tuple[list[Any], Json]:
        """Cursor pagination: the cursor is simply the offset, opaque enough for clients."""
        limit = int(params.get("limit") or 100) or 100
        start = int(params.get("cursor") or 0)
        page = items[start:start + limit]
        more = start + limit < len(items)
        return page, {"has_more": more, "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    # -- methods ---------------------------------------------------------------------------
    def auth_test(self, params: Json, caller: str) -> Json:
        user = self.state.users[caller]
        out: Json = {"url": f"https://{self.state.team_domain}.slack.com/", "team": "Threadflow Dev",
                     "user": user.name, "team_id": self.state.team_id, "user_id": user.id,
                     "is_enterprise_install": False}
        if user.bot_id:
            out["bot_id"] = user.bot_id
        return out

    def chat_post_message(self, params: Json, caller: str) -> Json:
        channel = self._channel(params)
        text, blocks, attachments = params.get("text") or "", params.get("blocks"), params.get("attachments")
        if not text and not blocks and not attachments:
            raise ApiError("no_text")
        self._within_limits(params)
        try:
            msg = self.state.add_message(
                channel, text=text, user=caller, blocks=blocks, attachments=attachments,
                thread_ts=params.get("thread_ts") or None, metadata=params.get("metadata"),
                reply_broadcast=truthy(params.get("reply_broadcast")))
        except KeyError:
            raise ApiError("thread_not_found") from None
        if self.on_bot_message is not None and msg.bot_id:
            self.on_bot_message(msg)
        return {"channel": channel, "ts": msg.ts, "message": msg.to_api()}

    def chat_update(self, params: Json, caller: str) -> Json:
        channel = self._channel(params)
        msg = self._message(params, channel)
        if msg.user != caller:
            raise ApiError("cant_update_message")
        if not params.get("text") and params.get("blocks") is None and params.get("attachments") is None:
            raise ApiError("no_text")
        self._within_limits(params)
        self.state.update_message(msg, editor=caller, text=params.get("text"), blocks=params.get("blocks"),
                                  attachments=params.get("attachments"), metadata=params.get("metadata"))
        return {"channel": channel, "ts": msg.ts, "text": msg.text, "message": msg.to_api()}

    def chat_delete(self, params: Json, caller: str) -> Json:
        channel = self._channel(params)
        msg = self._message(params, channel)
        if msg.user != caller:
            raise ApiError("cant_delete_message")
        self.state.delete_message(msg)
        return {"channel": channel, "ts": msg.ts}

    def chat_post_ephemeral(self, params: Json, caller: str) -> Json:
        channel = self._channel(params)
        user = params.get("user")
        if user not in self.state.users:
            raise ApiError("user_not_found")
        if not params.get("text") and not params.get("blocks"):
            raise ApiError("no_text")
        self._within_limits(params)
        eph = self.state.add_ephemeral(channel, user, text=params.get("text") or "", blocks=params.get("blocks"),
                                       thread_ts=params.get("thread_ts") or None)
        return {"message_ts": eph.ts}

    def conversations_history(self, params: Json, caller: str) -> Json:
        channel = self._channel(params)
        inclusive = truthy(params.get("inclusive"))
        oldest, latest = float(params.get("oldest") or 0), float(params.get("latest") or "inf")

        def within(ts: float) -> bool:
            if inclusive:
                return oldest <= ts <= latest
            return oldest < ts < latest

        msgs = [m.to_api() for m in reversed(self.state.channel_messages(channel)) if within(float(m.ts))]
        page, meta = self._page(msgs, params)
        return {"messages": page, "pin_count": 0, **meta}

    def conversations_replies(self, params: Json, caller: str) -> Json:
        channel = self._channel(params)
        msgs = self.state.thread_messages(channel, str(params.get("ts", "")))
        if not msgs:
            raise ApiError("thread_not_found")
        page, meta = self._page([m.to_api() for m in msgs], params)
        return {"messages": page, **meta}

    def conversations_info(self, params: Json, caller: str) -> Json:
        channel = self.state.channels.get(params.get("channel") or "")
        if channel is None:
            raise ApiError("channel_not_found")
        return {"channel": channel.to_api()}

    def users_info(self, params: Json, caller: str) -> Json:
        user = self.state.users.get(params.get("user") or "")
        if user is None:
            raise ApiError("user_not_found")
        return {"user": user.to_api(self.state.team_id)}

    def _render_view(self, view_id: str, view: Json, caller: str) -> Json:
        state = self.state
        return {"id": view_id, "team_id": state.team_id, "type": view.get("type", "modal"),
                "title": view.get("title"), "submit": view.get("submit"), "close": view.get("close"),
                "blocks": view.get("blocks", []), "private_metadata": view.get("private_metadata", ""),
                "callback_id": view.get("callback_id", ""), "external_id": view.get("external_id", ""),
                "state": {"values": {}}, "hash": state.next_id("hash."), "clear_on_close": False,
                "notify_on_close": bool(view.get("notify_on_close")), "root_view_id": view_id,
                "previous_view_id": None, "app_id": state.app_id, "bot_id": state.users[caller].bot_id}

    def views_open(self, params: Json, caller: str) -> Json:
        trigger_id = params.get("trigger_id")
        if trigger_id not in self.state.triggers:
            raise ApiError("invalid_trigger_id")
        view = params.get("view")
        if not isinstance(view, dict):
            raise ApiError("invalid_arguments")
        user, _issued = self.state.triggers.pop(trigger_id)  # single use, as in Slack
        view_id = self.state.next_id("V")
        rendered = self._render_view(view_id, view, caller)
        self.state.views[view_id] = View(view_id, user, rendered, trigger_id)
        self.state.notify("view.opened", id=view_id, user=user, view=rendered)
        return {"view": rendered}

    def views_update(self, params: Json, caller: str) -> Json:
        target = next((v for v in self.state.views.values()
                       if v.id == params.get("view_id") or
                       (params.get("external_id") and v.view.get("external_id") == params.get("external_id"))),
                      None)
        view = params.get("view")
        if target is None:
            raise ApiError("not_found")
        if not isinstance(view, dict):
            raise ApiError("invalid_arguments")
        if params.get("hash") and params["hash"] != target.view["hash"]:
            raise ApiError("hash_conflict")
        rendered = self._render_view(target.id, view, caller)
        rendered["state"] = target.view["state"]
        target.view = rendered
        self.state.notify("view.updated", id=target.id, user=target.user, view=rendered)
        return {"view": rendered}

