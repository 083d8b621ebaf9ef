"""``SlackEmulator``: one local Slack (Web API + deliveries + state) for tests and ``threadflow dev``.

Tests drive it like a person would (slash commands, clicks, messages) and assert on what
the bot did through real HTTP; the dev sandbox will mount its page on ``emulator.app`` and
follow ``subscribe()``. Keeping both on one implementation means the sandbox can't drift
from what the tests prove.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .assistant import AssistantView
from .delivery import BotDelivery, DeliveryResult, action_payload, find_action
from .oauth import OAuthProvider
from .openid import OpenIdProvider
from .socket_mode import SocketModeServer
from .state import (
    ApiCall,
    Channel,
    Ephemeral,
    Json,
    Message,
    ResponseUrl,
    Subscription,
    User,
    View,
    WorkspaceState,
)
from .streams import Streams
from .web_api import SlackWebApi, apply_response

log = logging.getLogger(__name__)


@dataclass
class UserPost:
    """What ``post_as_user`` did: the stored message and the bot's answers to each event."""

    message: Message
    deliveries: list[DeliveryResult]

    @property
    def ts(self) -> str:
        return self.message.ts


class SlackEmulator:
    """A fake Slack workspace served over HTTP; see the module docstring for why it exists."""

    def __init__(self, signing_secret: str = "test-signing-secret", bot_token: str = "xoxb-test",
                 bot_url: str | None = None, *, echo_bot_messages: bool = False,
                 delivery_timeout: float = 10.0) -> None:
        self.signing_secret = signing_secret
        self.bot_token = bot_token
        self.state = WorkspaceState(bot_token)
        self.echo_bot_messages = echo_bot_messages
        self.delivery = BotDelivery(self.state, signing_secret, bot_url, timeout=delivery_timeout)
        self.web_api = SlackWebApi(self.state, on_bot_message=self._echo)
        self.socket_mode = SocketModeServer(self.state)
        self.web_api.open_socket = self.socket_mode.open_connection
        #: Streamed answers and the assistant container (Slack's AI app surfaces), in modules of their own.
        self.streams = Streams(self.state)
        self.streams.install(self.web_api.methods)
        self.assistant = AssistantView(self.state, self.delivery)
        self.assistant.install(self.web_api.methods)
        self.delivery.socket = self.socket_mode
        self.app = web.Application()  # add sandbox routes here before start()
        # Several workspaces share one Web API: each call goes to the workspace its token belongs to.
        self.app.router.add_route("*", "/api/{method}", self._route_api)
        self.app.router.add_post("/response_url/{id}", self._route_response_url)
        #: Other workspaces served beside this one (``add_workspace``), by team id.
        self.others: dict[str, SlackEmulator] = {}
        self.oauth = OAuthProvider(self)  # installs through OAuth (oauth.v2.access, token rotation)
        self.oauth.install(self.app)
        self.openid = OpenIdProvider(self.state, self.web_api)  # Sign in with Slack, channel membership
        self.openid.install(self.app)
        self.socket_mode.install(self.app)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def bot_url(self) -> str | None:
        return self.delivery.bot_url

    @bot_url.setter
    def bot_url(self, value: str | None) -> None:
        self.delivery.bot_url = value
        for other in self.others.values():
            other.delivery.bot_url = value

    @property
    def api_url(self) -> str:
        """Pass as ``base_url`` to slack_sdk clients; the trailing slash matters for urljoin."""
        return self.url + "api/"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> SlackEmulator:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}/"
        self.socket_mode.base_ws_url = f"ws://{bound_host}:{bound_port}/"
        self.delivery.response_url_base = self.url + "response_url/"
        for other in self.others.values():
            self._share_url(other)
        return self

    # -- several workspaces ----------------------------------------------------------------------
    def add_workspace(self, team_id: str, *, domain: str | None = None, enterprise_id: str | None = None) -> SlackEmulator:
        """Another workspace on this Slack (same Web API URL and signing secret, its own people, channels and
        tokens). The app gets a token there by being installed (``oauth``). Returns the workspace to act in,
        with every helper of this class (``slash_command``, ``click``, ``messages`` ...)."""
        if team_id == self.state.team_id or team_id in self.others:
            raise ValueError(f"workspace {team_id} exists already")
        other = SlackEmulator(self.signing_secret, bot_token=f"unused-{team_id}",
                              delivery_timeout=self.delivery.timeout)
        other.state.tokens.clear()  # no token until the app is installed there
        other.state.team_id, other.state.team_domain = team_id, domain or team_id.lower()
        other.state.enterprise_id = enterprise_id
        # Ids (response URLs, views, triggers, events) stay unique across the workspaces sharing one URL.
        other.state._counter = 10_000_000 * (len(self.others) + 1)
        other.delivery.bot_url = self.delivery.bot_url
        self.others[team_id] = other
        self._share_url(other)
        return other

    def _share_url(self, other: SlackEmulator) -> None:
        other.url = self.url
        other.delivery.response_url_base = self.url + "response_url/"

    def workspace(self, team_id: str | None = None) -> SlackEmulator:
        """The workspace with this team id (None: this one)."""
        if team_id is None or team_id == self.state.team_id:
            return self
        try:
            return self.others[team_id]
        except KeyError:
            raise LookupError(f"no workspace {team_id} on this emulator") from None

    @property
    def all_workspaces(self) -> list[SlackEmulator]:
        return [self, *self.others.values()]

    def _workspace_of_token(self, token: str | None) -> SlackEmulator:
        return next((w for w in self.all_workspaces if token and token in w.state.tokens), self)

    async def _route_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await SlackWebApi.parse_params(request)
        if method == "oauth.v2.access":
            body = self.oauth.access(request.headers, params)
            self.state.record_call(ApiCall(method, {k: v for k, v in params.items() if k not in (
                "client_secret", "code", "refresh_token")}, request.method, request.content_type, None,
                self.state.clock(), response={"ok": body.get("ok"), "error": body.get("error")}))
            return web.json_response(body)
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else params.get("token")
        if token and self.oauth.expired(token):
            return web.json_response({"ok": False, "error": "token_expired"})
        return await self._workspace_of_token(token).web_api.handle_api(request)

    async def _route_response_url(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        owner = next((w for w in self.all_workspaces if rid in w.state.response_urls), self)
        return await owner.web_api.handle_response_url(request)

    async def uninstall(self, team_id: str | None = None, **opts: Any) -> DeliveryResult:
        """Someone removes the app from the workspace: its tokens stop working, Slack sends ``app_uninstalled``."""
        workspace = self.workspace(team_id)
        self.oauth.revoke(workspace.state.team_id)
        return await workspace.deliver_event({"type": "app_uninstalled", "event_ts": workspace.state.next_ts()}, **opts)

    async def revoke_tokens(self, team_id: str | None = None, **opts: Any) -> DeliveryResult:
        """An admin revokes the app's bot token: it stops working, Slack sends ``tokens_revoked``."""
        workspace = self.workspace(team_id)
        bot = workspace.state.bot_user_id
        self.oauth.revoke(workspace.state.team_id)
        return await workspace.deliver_event({"type": "tokens_revoked", "tokens": {"oauth": [], "bot": [bot]},
                                              "event_ts": workspace.state.next_ts()}, **opts)

    async def stop(self) -> None:
        for other in self.others.values():
            other.state.close_subscriptions()
            await other.delivery.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.state.close_subscriptions()
        await self.socket_mode.close()
        await self.delivery.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- workspace setup -------------------------------------------------------------------
    def add_channel(self, name: str, channel_id: str | None = None) -> str:
        cid = channel_id or f"C0{name.upper().replace('-', '')}"
        self.state.channels[cid] = Channel(cid, name)
        return cid

    def add_app_token(self, token: str) -> str:
        """An app-level token (``xapp-...``) that may open Socket Mode connections."""
        self.socket_mode.app_tokens.add(token)
        return token

    def add_user(self, name: str, user_id: str | None = None) -> str:
        uid = user_id or f"U0{name.upper()}"
        self.state.users[uid] = User(uid, name)
        return uid

    def fail_next(self, method: str, status: int = 429, retry_after: int | None = 1, times: int = 1,
                  error: str | None = None, *, delay: float = 0.0, apply: bool = False, drop: bool = False,
                  when: Callable[[Json], bool] | None = None) -> None:
        """Make the next ``times`` calls of ``method`` ("*" = any) fail with ``status``.

        429 carries ``Retry-After`` and ``ratelimited``; 5xx carries ``internal_error`` (503:
        ``service_unavailable``); a 200 with ``error=...`` injects a plain Slack API error. ``delay`` holds the
        answer back (a client with a shorter timeout sees a timeout); ``apply=True`` makes the call take
        effect anyway (Slack did it, its answer was lost); ``drop=True`` closes the connection unanswered.
        ``when`` limits the fault to calls whose parameters it accepts (e.g. only posts with buttons).
        """
        self.web_api.fail_next(method, status=status, retry_after=retry_after, times=times, error=error,
                               delay=delay, apply=apply, drop=drop, when=when)

    def clear_faults(self) -> None:
        self.web_api.faults.clear()

    def slow(self, method: str, low: float, high: float | None = None) -> None:
        """Every call of ``method`` ("*" = any) takes ``low`` to ``high`` seconds to answer."""
        self.web_api.latency.set(method, low, high)

    def realistic(self, on: bool = True) -> None:
        """Answer like the real Web API: 0.1-0.3 s per call, and Slack's rate limits (429 + Retry-After)."""
        self.web_api.realistic(on)

    def enforce_rate_limits(self, on: bool = True) -> None:
        self.web_api.rate_limits.enabled = on

    @property
    def rate_limited(self) -> int:
        """How many calls Slack's rate limits refused (429) so far."""
        return self.web_api.rate_limits.limited

    # -- accessors -------------------------------------------------------------------------
    def messages(self, channel: str = "C0GENERAL") -> list[Message]:
        return self.state.channel_messages(channel)

    def thread(self, channel: str, ts: str) -> list[Message]:
        return self.state.thread_messages(channel, ts)

    def message(self, ts: str, channel: str | None = None) -> Message | None:
        return self.state.find_message(ts, channel)

    def ephemerals(self, user: str | None = None) -> list[Ephemeral]:
        return [e for e in self.state.ephemeral_messages if user is None or e.user == user]

    def calls(self, method: str | None = None) -> list[ApiCall]:
        return [c for c in self.state.api_calls if method is None or c.method == method]

    def views(self, user: str | None = None, *, open_only: bool = True) -> list[View]:
        return [v for v in self.state.views.values()
                if (user is None or v.user == user) and not (open_only and v.closed)]

    def response_url(self, response_url_id: str) -> ResponseUrl:
        return self.state.response_urls[response_url_id]

    def snapshot(self) -> Json:
        return self.state.snapshot()

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """Live change feed (async iterator / async context manager) for SSE or tests."""
        return self.state.subscribe(maxsize)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        return await self.state.wait_for(predicate, timeout)

    # -- acting as Slack users -------------------------------------------------------------
    async def slash_command(self, command: str, text: str = "", *, user: str = "U0ALICE",
                            channel: str = "C0GENERAL", **opts: Any) -> DeliveryResult:
        """Deliver a slash command; a non-empty 200 reply is shown like Slack does (ephemeral
        unless ``response_type`` is ``in_channel``) without using up the response_url."""
        ru = self.state.issue_response_url("command", user, channel)
        trigger = self.state.issue_trigger(user)
        url = self.delivery.response_url_base + ru.id
        form = self.delivery.slash_command_form(command, text, user, channel, url, trigger)
        result = await self.delivery.send_form("slash_command", form, dict(form), **opts)
        result.response_url_id, result.response_url, result.trigger_id = ru.id, url, trigger
        if result.status == 200 and result.body.strip():
            reply = result.json
            body = reply if isinstance(reply, dict) else {"text": result.body}
            if body.get("text") or body.get("blocks"):
                apply_response(self.state, ru, body, count_use=False)
        return result

    async def click(self, message: str | Message | Ephemeral | Mapping[str, Any], action_id: str, *,
                    user: str = "U0ALICE", value: str | None = None, block_id: str | None = None,
                    **opts: Any) -> DeliveryResult:
        """Click the element ``action_id`` on a stored message (ts, record or API dict).

        Given an API dict with ``blocks``, those blocks are clicked: a person's screen may still show buttons
        that an update already removed (Slack buttons cannot be disabled), which is how double clicks happen.
        """
        ts = message if isinstance(message, str) else (
            message["ts"] if isinstance(message, Mapping) else message.ts)
        stored = self.state.find_message(ts)
        eph = None if stored is not None else self.state.find_ephemeral(ts)
        if stored is None and eph is None:
            raise LookupError(f"no message with ts={ts}")
        blocks = stored.blocks if stored is not None else eph.blocks  # type: ignore[union-attr]
        channel = stored.channel if stored is not None else eph.channel  # type: ignore[union-attr]
        thread_ts = stored.thread_ts if stored is not None else eph.thread_ts  # type: ignore[union-attr]
        if isinstance(message, Mapping) and message.get("blocks"):
            blocks = list(message["blocks"])  # a stale copy: what a person saw before an update landed
        found_block, element = find_action(blocks, action_id, block_id)
        ru = self.state.issue_response_url("block_actions", user, channel, message_ts=ts,
                                           thread_ts=thread_ts, is_ephemeral=eph is not None)
        trigger = self.state.issue_trigger(user)
        url = self.delivery.response_url_base + ru.id
        action = action_payload(found_block, element, value, self.state.next_ts())
        payload = self.delivery.block_actions_payload(
            user=user, channel=channel, message=stored.to_api() if stored is not None else None,
            message_ts=ts, is_ephemeral=eph is not None, actions=[action], response_url=url,
            trigger_id=trigger)
        result = await self.delivery.send_interaction(payload, **opts)
        result.response_url_id, result.response_url, result.trigger_id = ru.id, url, trigger
        return result

    async def submit_view(self, view_id: str, values: Mapping[str, Any] | None = None, *,
                          user: str | None = None, **opts: Any) -> DeliveryResult:
        """Submit an open modal. ``values`` is ``{block_id: {action_id: value}}`` or
        ``{action_id: value}``; plain strings become ``plain_text_input`` values.

        The bot's ``response_action`` is applied: ``errors`` keeps the view open (see
        ``result.extra["errors"]``), ``update`` replaces it, empty/``clear`` closes it.
        """
        record = self.state.views[view_id]
        view = dict(record.view)
        view["state"] = {"values": self._state_values(view, values or {})}
        trigger = self.state.issue_trigger(user or record.user)
        payload = self.delivery.view_submission_payload(user=user or record.user, view=view, trigger_id=trigger)
        result = await self.delivery.send_interaction(payload, **opts)
        result.trigger_id = trigger
        reply = result.json if result.status == 200 else None
        action = reply.get("response_action") if isinstance(reply, dict) else None
        if action == "errors":
            result.extra["errors"] = reply.get("errors", {})  # type: ignore[union-attr]
        elif action in ("update", "push") and isinstance(reply, dict):
            record.view = self.web_api._render_view(record.id, reply.get("view", {}), self.state.bot_user_id)
            self.state.notify("view.updated", id=record.id, user=record.user, view=record.view)
        elif result.status == 200:
            for other in self.state.views.values():
                if other is record or (action == "clear" and other.user == record.user):
                    other.closed = True
                    self.state.notify("view.closed", id=other.id, user=other.user)
        return result

    def close_view(self, view_id: str) -> View:
        """The person dismissed the modal (its Close button or Escape); no request reaches the bot
        unless the view asked for ``notify_on_close``, which the bot's views do not."""
        record = self.state.views[view_id]
        if not record.closed:
            record.closed = True
            self.state.notify("view.closed", id=record.id, user=record.user)
        return record

    @staticmethod
    def _state_values(view: Json, values: Mapping[str, Any]) -> Json:
        block_of = {b.get("element", {}).get("action_id"): b.get("block_id") for b in view.get("blocks", [])
                    if b.get("type") == "input"}
        block_ids = set(block_of.values())
        out: Json = {}

        def as_value(raw: Any) -> Json:
            return raw if isinstance(raw, dict) else {"type": "plain_text_input", "value": raw}

        for key, raw in values.items():
            if key in block_ids and isinstance(raw, Mapping):
                out[key] = {aid: as_value(v) for aid, v in raw.items()}
            else:
                out.setdefault(block_of.get(key) or key, {})[key] = as_value(raw)
        return out

    async def post_as_user(self, text: str, *, user: str = "U0ALICE", channel: str = "C0GENERAL",
                           thread_ts: str | None = None, blocks: list[Json] | None = None,
                           files: list[Json] | None = None, **opts: Any) -> UserPost:
        """A person posts: store it like Slack, then deliver ``message`` (+ ``app_mention``) events.

        With ``files`` the message is a ``file_share`` (text plus attached files, as Slack sends it).
        Delivery is skipped when no ``bot_url`` is configured, so pure state tests work too.
        """
        msg = self.state.add_message(channel, text=text, user=user, blocks=blocks, thread_ts=thread_ts,
                                     files=[self.state.file_object(f, user) for f in files] if files else None)
        results = []
        if self.bot_url or self.socket_mode.connected.is_set():
            for event in self.delivery.message_events(msg):
                results.append(await self.delivery.send_event(self.delivery.event_envelope(event), **opts))
        return UserPost(msg, results)

    async def deliver_event(self, event: Json, **opts: Any) -> DeliveryResult:
        """Send an arbitrary Events API ``event`` wrapped in a fresh ``event_callback`` envelope."""
        return await self.delivery.send_event(self.delivery.event_envelope(event), **opts)

    async def redeliver(self, event_id: str, *, retry_num: int = 1, retry_reason: str = "http_timeout",
                        **opts: Any) -> DeliveryResult:
        return await self.delivery.redeliver(event_id, retry_num=retry_num, retry_reason=retry_reason, **opts)

    async def delete_as_user(self, ts: str, channel: str = "C0GENERAL", **opts: Any) -> DeliveryResult | None:
        """Someone (an admin, say) deletes a message: gone from the channel, and Slack sends ``message_deleted``."""
        msg = self.state.find_message(ts, channel)
        if msg is None:
            raise LookupError(f"no message with ts={ts}")
        self.state.delete_message(msg)
        if not self.bot_url:
            return None
        event = {"type": "message", "subtype": "message_deleted", "hidden": True, "channel": channel,
                 "ts": self.state.next_ts(), "deleted_ts": ts, "event_ts": self.state.next_ts(),
                 "previous_message": msg.to_api(), "channel_type": "channel"}
        return await self.deliver_event(event, **opts)

    def _echo(self, msg: Message) -> None:
        """Slack echoes a bot's own posts as ``message`` events with ``bot_id``; opt-in here."""
        if not (self.echo_bot_messages and self.bot_url):
            return

        async def deliver() -> None:
            for event in self.delivery.message_events(msg):
                try:
                    await self.delivery.send_event(self.delivery.event_envelope(event))
                except Exception:  # a dead bot must not break the API call that triggered this
                    log.exception("echo delivery of %s failed", msg.ts)

        task = asyncio.get_running_loop().create_task(deliver())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
