"""``threadflow dev``: the real bot, a local Slack emulator, and a web page that works like a Slack channel.

A new user has no Slack app, tokens or API key, so the sandbox makes all three up: a random signing
secret, the bot token ``xoxb-sandbox`` and (without ``OPENAI_API_KEY``) the offline model. The bot is
started exactly as ``serve`` starts it (``start_server``, HTTP mode, signature checks on) and the page
never talks to the bot directly: it asks the emulator to act as a person (``/sandbox/*`` endpoints), and
the emulator sends the bot the same signed requests Slack would. What works here therefore works through
the same code a real workspace exercises, and the page is a view of ``emulator.subscribe()``.

Endpoints on the emulator's app (JSON in, JSON out):

- ``GET /`` the page; ``GET /sandbox/static/*`` its script and styles (no build step, no CDN)
- ``GET /sandbox/state?user=U..`` the workspace (ephemerals and modals of that user only)
- ``GET /sandbox/events`` server-sent events: ``snapshot`` first, then ``change`` per state change
- ``POST /sandbox/command`` ``{"text": "/flow run approval", "user", "channel"}``: a signed slash command
- ``POST /sandbox/message`` ``{"text", "user", "channel", "thread_ts"?}``: a person posts (``@threadflow``
  becomes ``<@U0BOT>``)
- ``POST /sandbox/click`` ``{"ts", "action_id", "block_id"?, "value"?, "user"}``: ``block_actions``
- ``POST /sandbox/view`` ``{"view_id", "values": {block_id: {action_id: value}}, "user"}``:
  ``view_submission``; ``POST /sandbox/view/close`` ``{"view_id"}`` dismisses a modal
- ``POST /sandbox/assistant`` ``{"user", "channel"?}``: the person opens the app's assistant container (a new
  assistant thread in their DM with the bot, ``assistant_thread_started``); they then write in it with
  ``/sandbox/message`` (``channel`` the DM, ``thread_ts`` the thread), its suggested prompts included
- ``GET /sandbox/faults`` how the local Slack behaves now; ``POST /sandbox/faults`` changes it, as the tests do
  with ``SlackEmulator.fail_next``/``slow``/``realistic``: ``{"realistic": true}`` (0.1-0.3 s per call and
  Slack's rate limits), ``{"latency": {"chat.update": 0.3}}`` (seconds, or ``[low, high]``; 0 removes it),
  ``{"fail_next": [{"method": "chat.postMessage", "status": 429, "times": 4, "retry_after": 1}]}`` (also
  ``error``, ``delay`` past the bot's timeout, ``drop``), ``{"clear_faults": true}`` (every failure and
  every latency; realistic mode stays until ``{"realistic": false}``)

Everything on the emulator's address (the page, its endpoints, the local Slack's Web API) answers only to the host
names 127.0.0.1/localhost (or the address it listens on), as the run inspector does without sign-in: a web page
that rebinds its DNS name to 127.0.0.1 is same-origin with the sandbox and could otherwise read its Slack and act
as anyone in it (the bot token ``xoxb-sandbox`` is no secret).

Streamed answers grow on the page as the bot appends to them (``message.updated`` carries the stream's state
and its task cards); feedback buttons under answers click like any button (``value`` ``positive``/``negative``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import re
import secrets
import sys
import webbrowser
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from .emulator import DeliveryResult, SlackEmulator, install_app
from .inspector import RunningInspector
from .inspector.command import start_for_sandbox
from .inspector.config import is_loopback
from .settings import Settings

if TYPE_CHECKING:
    from .app import SlackBot

log = logging.getLogger("threadflow.sandbox")

SANDBOX_BOT_TOKEN = "xoxb-sandbox"
PAGE_DIR = Path(__file__).with_name("sandbox_page")
#: Changes the page renders; Web API calls and deliveries stay out of the browser.
PAGE_CHANGES = ("message.", "ephemeral.", "view.", "assistant.")
HEARTBEAT_SECONDS = 15.0

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SandboxError(Exception):
    """The sandbox could not start; the message says what to change."""


def sandbox_settings(settings: Settings, *, api_url: str, signing_secret: str, host: str = "127.0.0.1") -> Settings:
    """The user's settings (database, model, workflows) with Slack replaced by the local emulator."""
    return settings.model_copy(update={
        "slack_bot_token": SecretStr(SANDBOX_BOT_TOKEN),
        "slack_signing_secret": SecretStr(signing_secret),
        "slack_app_token": None,  # never Socket Mode: the emulator delivers over HTTP
        "slack_api_url": api_url,
        "host": host,
    })


class Sandbox:
    """The emulator (serving the page) plus the bot, started and stopped together.

    Usable in-process (tests) as ``async with Sandbox(settings, port=0) as sb``; ``threadflow dev``
    wraps it in :func:`run_sandbox`.
    """

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8080, bot_port: int = 0,
                 ui_port: int = 0, realistic_slack: bool = False, workspaces: int = 1) -> None:
        self.host, self.port, self.bot_port, self.ui_port = host, port, bot_port, ui_port
        self.emulator = SlackEmulator(signing_secret=secrets.token_urlsafe(32), bot_token=SANDBOX_BOT_TOKEN)
        self.emulator.app.middlewares.append(local_hosts_only(host))
        #: Answer like the real Web API: 0.1-0.3 s per call and Slack's rate limits (429 + Retry-After).
        self.emulator.realistic(realistic_slack)
        self.page = SandboxPage(self.emulator, settings.command, model=settings.model_name)
        self.page.install(self.emulator.app)
        #: With more than one workspace the app is installed in each through the emulator's OAuth flow (as a
        #: distributed app is), and each workspace has its page: ``/`` for the first, ``/w/TEAM/`` for the others.
        self.pages: dict[str, SandboxPage] = {self.emulator.state.team_id: self.page}
        for n in range(2, max(1, workspaces) + 1):
            team = f"T{n}SANDBOX"
            other = self.emulator.add_workspace(team, domain=f"sandbox-{n}")
            other.realistic(realistic_slack)
            page = SandboxPage(other, settings.command, model=settings.model_name)
            page.install(self.emulator.app, prefix=f"/w/{team}/")
            self.pages[team] = page
        self.base_settings = settings
        self.settings = settings
        self.bot: SlackBot | None = None
        self._bot_runner: web.AppRunner | None = None
        self.inspector: RunningInspector | None = None

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/``."""
        return self.emulator.url

    async def start(self) -> Sandbox:
        from .runtime import build_engine
        from .server import start_server

        try:
            await self.emulator.start(self.host, self.port)
        except OSError as exc:
            await self.emulator.stop()
            raise SandboxError(f"The sandbox page cannot listen on {self.host}:{self.port} ({exc.strerror or exc}). "
                               "Pass another port, e.g. `threadflow dev --port 8081`.") from exc
        self.settings = sandbox_settings(self.base_settings, api_url=self.emulator.api_url,
                                         signing_secret=self.emulator.signing_secret, host=self.host)
        if len(self.pages) > 1:
            self.settings = self._oauth_settings(self.settings)
        engine = build_engine(self.settings)
        try:
            self._bot_runner, self.bot, bound = await start_server(self.settings, engine, host=self.host,
                                                                   port=self.bot_port)
        except BaseException as exc:
            await engine.close()
            await self.emulator.stop()
            if isinstance(exc, OSError):
                raise SandboxError(f"The bot cannot listen on {self.host}:{self.bot_port} ({exc.strerror or exc}). "
                                   "Pass another port with --bot-port, or 0 for any free port.") from exc
            raise
        self.emulator.bot_url = f"http://{self.host}:{bound}/slack/events"
        if len(self.pages) > 1:
            await self._install_everywhere(f"http://{self.host}:{bound}")
        try:
            self.inspector = await start_for_sandbox(engine, self.emulator, host=self.host, port=self.ui_port,
                                                     approvers=tuple(self.settings.approvers))
        except OSError as exc:
            await self.stop()
            raise SandboxError(f"The run inspector cannot listen on {self.host}:{self.ui_port} "
                               f"({exc.strerror or exc}). Pass another port with --ui-port.") from exc
        self.page.inspector_url = self.inspector.url + "runs"
        return self

    def _oauth_settings(self, settings: Settings) -> Settings:
        """Several workspaces: the bot runs as a distributed app (OAuth installs, no single bot token)."""
        from cryptography.fernet import Fernet

        client_id, client_secret = "sandbox.app", secrets.token_urlsafe(24)
        self.emulator.oauth.register_app(client_id, client_secret)
        return settings.model_copy(update={
            "slack_bot_token": None, "slack_client_id": client_id, "slack_client_secret": SecretStr(client_secret),
            "slack_state_secret": SecretStr(secrets.token_urlsafe(24)),
            "encryption_key": SecretStr(Fernet.generate_key().decode()),
        })

    async def _install_everywhere(self, bot_base_url: str) -> None:
        """Install the app in every workspace through the OAuth flow, as their admins would."""
        for app in self.emulator.oauth.apps.values():
            app.redirect_url = f"{bot_base_url}/slack/oauth_redirect"
        for team in self.pages:
            try:
                await install_app(bot_base_url, team)
            except (RuntimeError, aiohttp.ClientError) as exc:
                await self.stop()
                raise SandboxError(f"Installing the app in sandbox workspace {team} failed: {exc}") from exc

    @property
    def workspace_urls(self) -> dict[str, str]:
        """Each workspace's page."""
        return {team: self.url if team == self.emulator.state.team_id else f"{self.url}w/{team}/"
                for team in self.pages}

    async def stop(self) -> None:
        """End the page's event streams, stop the bot (its runs are handed back), then the emulator."""
        self.emulator.state.close_subscriptions()
        if self.inspector is not None:
            await self.inspector.stop()
            self.inspector = None
        if self._bot_runner is not None:
            await self._bot_runner.cleanup()  # closes the bot and its engine (server.py's on_cleanup)
            self._bot_runner = None
        await self.emulator.stop()

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class PageError(Exception):
    """A bad request from the page: answered as ``{"ok": false, "error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SandboxPage:
    """The page and its JSON endpoints; every action goes through the emulator as a person would."""

    def __init__(self, emulator: SlackEmulator, command: str = "/flow", *, model: str = "offline") -> None:
        self.emulator = emulator
        self.state = emulator.state
        self.command = command
        self.model = model
        self.inspector_url: str | None = None

    def install(self, app: web.Application, prefix: str = "/") -> None:
        """The page at ``prefix`` and its endpoints under ``{prefix}sandbox/`` (the script and styles are shared)."""
        app.router.add_get(prefix, self.index)
        if prefix == "/":
            app.router.add_static("/sandbox/static/", PAGE_DIR, append_version=False)
        app.router.add_get(f"{prefix}sandbox/state", self.get_state)
        app.router.add_get(f"{prefix}sandbox/events", self.events)
        for path, handler in (("command", self.post_command), ("message", self.post_message),
                              ("click", self.post_click), ("view", self.post_view),
                              ("view/close", self.post_view_close), ("assistant", self.post_assistant),
                              ("faults", self.post_faults)):
            app.router.add_post(f"{prefix}sandbox/{path}", self._json_endpoint(handler))
        app.router.add_get(f"{prefix}sandbox/faults", self.get_faults)

    # -- reading -------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    def page_state(self, user: str | None = None) -> Json:
        """The snapshot plus what the page needs to know about the bot; ``user`` hides others' ephemerals."""
        snap = self.emulator.snapshot()
        if user:
            snap["ephemerals"] = [e for e in snap["ephemerals"] if e["user"] == user]
            snap["views"] = [v for v in snap["views"] if v["user"] == user]
        snap["bot_user_id"] = self.state.bot_user_id
        snap["command"] = self.command
        snap["model"] = self.model
        snap["inspector_url"] = self.inspector_url
        snap["people"] = [u.id for u in self.state.users.values() if not u.bot_id]
        snap["streams"] = self.emulator.streams.snapshot()
        threads = self.emulator.assistant.snapshot()
        snap["assistant"] = {"enabled": self.emulator.assistant.enabled,
                             "threads": [t for t in threads if not user or t["user"] == user]}
        return snap

    async def get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.page_state(request.query.get("user")))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: a full ``snapshot``, then each ``change``; a fresh snapshot after drops."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        sub = self.emulator.subscribe()
        snapshot = self.page_state()  # taken right after subscribing: no change falls in between
        dropped = 0
        try:
            await resp.write(b"retry: 1000\n\n" + sse("snapshot", snapshot))
            while True:
                try:
                    change = await sub.get(timeout=HEARTBEAT_SECONDS)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                except StopAsyncIteration:
                    break  # the sandbox is stopping
                if sub.dropped != dropped:  # the tab fell behind: resync instead of patching
                    dropped = sub.dropped
                    await resp.write(sse("snapshot", self.page_state()))
                elif change.kind.startswith(PAGE_CHANGES):
                    await resp.write(sse("change", change.to_json()))
        except ConnectionResetError:
            pass  # the tab was closed
        finally:
            sub.close()
        return resp

    # -- acting as a person --------------------------------------------------------------------

    @staticmethod
    def _json_endpoint(handler: Callable[[Json], Awaitable[Json]]) -> Handler:
        async def endpoint(request: web.Request) -> web.Response:
            if request.content_type != "application/json":
                # A page from another site can make the person's browser POST text/plain to 127.0.0.1 without
                # asking first; a JSON body it can send only after a CORS preflight, which nothing here answers.
                return web.json_response({"ok": False, "error": "Send the body as JSON, with the header "
                                          "Content-Type: application/json (curl: --json '{...}')."}, status=415)
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return web.json_response({"ok": False, "error": "The body must be a JSON object."}, status=400)
            try:
                return web.json_response(await handler(body))
            except PageError as exc:
                return web.json_response({"ok": False, "error": str(exc)}, status=exc.status)

        return endpoint

    def _person(self, body: Json) -> str:
        user = str(body.get("user") or "U0ALICE")
        person = self.state.users.get(user)
        if person is None or person.bot_id:
            people = ", ".join(u.id for u in self.state.users.values() if not u.bot_id)
            raise PageError(f"Unknown user {user!r}; act as one of {people}.")
        return user

    def _channel(self, body: Json) -> str:
        channel = str(body.get("channel") or "C0GENERAL")
        if channel not in self.state.channels:
            raise PageError(f"Unknown channel {channel!r}; known: {', '.join(self.state.channels)}.")
        return channel

    async def _deliver(self, what: str, send: Awaitable[DeliveryResult]) -> DeliveryResult | str:
        """Send to the bot; a failure becomes Slack's error code (the bot may be restarting)."""
        try:
            return await send
        except TimeoutError:
            log.warning("%s: the bot did not answer in time", what)
            return "operation_timeout"
        except (aiohttp.ClientError, RuntimeError) as exc:
            log.warning("%s: could not reach the bot (%s)", what, type(exc).__name__)
            return "dispatch_failed"

    async def post_command(self, body: Json) -> Json:
        user, channel = self._person(body), self._channel(body)
        text = str(body.get("text") or "").strip()
        name, _, rest = text.partition(" ")
        if not name.startswith("/"):
            raise PageError("A command starts with '/', e.g. '/flow help'.")
        if name != self.command:
            self.state.add_ephemeral(channel, user, text=f"`{name}` is not a valid command. "
                                     f"In this sandbox, try `{self.command} help`.", source="sandbox")
            return {"ok": False, "error": "unknown_command"}
        result = await self._deliver(text, self.emulator.slash_command(name, rest.strip(), user=user, channel=channel))
        if isinstance(result, str) or result.status != 200:
            error = result if isinstance(result, str) else "http_service_error"
            self.state.add_ephemeral(channel, user, text=f"`{name}` failed with the error \"{error}\".",
                                     source="sandbox")
            return {"ok": False, "error": error}
        return {"ok": True, "status": result.status}

    async def post_message(self, body: Json) -> Json:
        user, channel = self._person(body), self._channel(body)
        text = self.slack_text(str(body.get("text") or ""))
        if not text.strip():
            raise PageError("The message is empty.")
        thread_ts = body.get("thread_ts") or None
        if thread_ts is not None and self.state.find_message(str(thread_ts), channel) is None:
            raise PageError(f"No message with ts {thread_ts} in this channel to reply to.", status=404)
        msg = self.state.add_message(channel, text=text, user=user, thread_ts=thread_ts)
        delivered = True
        for event in self.emulator.delivery.message_events(msg):
            result = await self._deliver("message", self.emulator.deliver_event(event))
            delivered = delivered and not isinstance(result, str) and result.status == 200
        return {"ok": True, "ts": msg.ts, "delivered": delivered}

    def slack_text(self, text: str) -> str:
        """What Slack's client sends: ``&<>`` escaped, ``@name`` of a member turned into ``<@ID>``."""
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        by_name = {u.name.lower(): u.id for u in self.state.users.values()}

        def mention(match: re.Match[str]) -> str:
            uid = by_name.get(match.group(1).lower())
            return f"<@{uid}>" if uid else match.group(0)

        return re.sub(r"(?<![\w<])@([A-Za-z0-9._-]+)", mention, text)

    async def post_click(self, body: Json) -> Json:
        user = self._person(body)
        ts, action_id = str(body.get("ts") or ""), str(body.get("action_id") or "")
        value = body.get("value")
        try:
            send = self.emulator.click(ts, action_id, user=user, block_id=body.get("block_id") or None,
                                       value=None if value is None else str(value))
            result = await self._deliver(f"click {action_id}", send)
        except LookupError as exc:
            raise PageError(f"Nothing to click: {exc}.", status=404) from None
        if isinstance(result, str):
            return {"ok": False, "error": result}
        return {"ok": result.status == 200, "status": result.status}

    async def post_view(self, body: Json) -> Json:
        view_id = str(body.get("view_id") or "")
        record = self.state.views.get(view_id)
        if record is None or record.closed:
            raise PageError(f"No open modal {view_id!r}.", status=404)
        user = self._person({"user": body.get("user") or record.user})
        values = body.get("values") or {}
        if not isinstance(values, dict):
            raise PageError("'values' must be an object: {block_id: {action_id: value}}.")
        result = await self._deliver("view submission", self.emulator.submit_view(view_id, values, user=user))
        if isinstance(result, str):
            return {"ok": False, "error": result}
        return {"ok": result.status == 200, "status": result.status, "errors": result.extra.get("errors", {})}

    async def post_assistant(self, body: Json) -> Json:
        """The person opens the assistant container (from the channel they are in): a new assistant thread."""
        user = self._person(body)
        context = self._channel(body) if body.get("channel") else None
        try:
            opened = self.emulator.assistant.open_thread(user, context_channel=context)
            result = await self._deliver("assistant thread", _first(opened))
        except LookupError as exc:
            raise PageError(f"The assistant is not available: {exc}.", status=409) from None
        thread = self.emulator.assistant.threads_of(user)[-1]
        if isinstance(result, str):
            return {"ok": False, "error": result, "channel": thread.channel, "thread_ts": thread.thread_ts}
        return {"ok": True, "channel": thread.channel, "thread_ts": thread.thread_ts}

    async def post_view_close(self, body: Json) -> Json:
        try:
            self.emulator.close_view(str(body.get("view_id") or ""))
        except KeyError:
            raise PageError(f"No modal {body.get('view_id')!r}.", status=404) from None
        return {"ok": True}


    # -- how the local Slack behaves ---------------------------------------------------------------

    def slack_behaviour(self) -> Json:
        web_api = self.emulator.web_api
        return {"ok": True, "realistic": web_api.rate_limits.enabled,
                "latency": {method: list(span) for method, span in web_api.latency.ranges.items()},
                "faults": [{"method": f.method, "status": f.status, "error": f.error, "times": f.times,
                            "retry_after": f.retry_after, "delay": f.delay, "drop": f.drop} for f in web_api.faults],
                "rate_limited": self.emulator.rate_limited}

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.slack_behaviour())

    async def post_faults(self, body: Json) -> Json:
        """Make the local Slack slow, rate-limited or failing, as a person trying the bot against a bad day."""
        try:
            change = SlackBehaviour.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
            raise PageError(f"Invalid fault settings ({problems}). See GET /sandbox/faults for the shape.") from None
        known = set(self.emulator.web_api.methods) | {"*"}
        named = [f.method for f in change.fail_next] + list(change.latency or {})
        unknown = sorted({m for m in named if m not in known})
        if unknown:
            raise PageError(f"Unknown Web API method {', '.join(unknown)}; use '*' or one of "
                            f"{', '.join(sorted(self.emulator.web_api.methods))}.")
        if change.clear_faults:
            self._clear_faults()
        if change.realistic is not None:
            self.emulator.realistic(change.realistic)
        for method, span in (change.latency or {}).items():
            low, high = span if isinstance(span, tuple) else (span, span)
            if high <= 0:
                self.emulator.web_api.latency.ranges.pop(method, None)
            else:
                self.emulator.slow(method, low, high)
        for fault in change.fail_next:
            self.emulator.fail_next(fault.method, status=fault.status, retry_after=fault.retry_after, times=fault.times,
                                    error=fault.error, delay=fault.delay, drop=fault.drop)
        return self.slack_behaviour()

    def _clear_faults(self) -> None:
        """``clear_faults``: every pending failure and every slowed method go, so the README's reset line resets;
        realistic mode (its latency and Slack's limits) stays until ``"realistic": false``."""
        web_api = self.emulator.web_api
        self.emulator.clear_faults()
        web_api.latency.ranges.clear()
        if web_api.rate_limits.enabled:
            self.emulator.realistic(True)


#: Seconds a call of the sandbox's Slack may be made to take.
Seconds = Annotated[float, Field(ge=0, le=60)]


class FaultSpec(BaseModel):
    """The next ``times`` calls of ``method`` fail (see ``SlackEmulator.fail_next``)."""

    model_config = ConfigDict(extra="forbid")
    method: str = "*"
    status: int = Field(429, ge=200, le=599)
    times: int = Field(1, ge=1, le=100_000)
    retry_after: int | None = Field(1, ge=0, le=3600)
    error: str | None = None
    delay: float = Field(0.0, ge=0, le=600)
    drop: bool = False


class SlackBehaviour(BaseModel):
    """A change to how the sandbox's Slack behaves; what is left out stays as it is."""

    model_config = ConfigDict(extra="forbid")
    realistic: bool | None = None
    latency: dict[str, Seconds | tuple[Seconds, Seconds]] | None = None
    fail_next: list[FaultSpec] = []
    clear_faults: bool = False


def local_hosts_only(host: str) -> Middleware:
    """Refuse requests whose Host is not 127.0.0.1/localhost, or the IP address the sandbox listens on: no DNS
    rebinding (a name can be rebound, an address cannot), as the run inspector (``bot/inspector/app.py``)."""
    own = _ip_address(host)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.url.host or ""
        if not (is_loopback(name) or (own is not None and _ip_address(name) == own)):
            log.warning("refused %s %s for the host name %r: the sandbox answers only on 127.0.0.1 or localhost",
                        request.method, request.path, name)
            return web.Response(status=403, text="The sandbox answers only on 127.0.0.1 or localhost: open the "
                                                 "address `threadflow dev` printed.")
        return await handler(request)

    return guard


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address (None for a name, or for 0.0.0.0 and ``::``, which are every address)."""
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return None
    return None if address.is_unspecified else address


async def _first(pair: Awaitable[tuple[Any, DeliveryResult | None]]) -> DeliveryResult:
    """The delivery of an assistant thread's start (the bot is always connected to the sandbox)."""
    _, result = await pair
    if result is None:
        raise RuntimeError("no bot to deliver to")
    return result


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


# -- the command ---------------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """The database URL without its password, for printing."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # the engine has already opened it, so this is only a printing concern
        return "(unparsable URL)"


def open_browser(url: str) -> None:
    """Open the page, but only where a graphical browser can appear: on a headless box Python's
    ``webbrowser`` would start a console browser that takes over this terminal."""
    if sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            pass  # the address is printed; opening it is a convenience


def run_sandbox(settings: Settings, args: argparse.Namespace) -> int:
    """Start the sandbox, print the page's address, and run until SIGINT/SIGTERM."""
    from .commands_server import configure_logging, wait_for_stop_signal

    configure_logging(settings)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema migration chatter on every start

    async def main() -> int:
        sandbox = Sandbox(settings, port=args.port, bot_port=args.bot_port, ui_port=args.ui_port,
                          realistic_slack=bool(getattr(args, "realistic_slack", False)),
                          workspaces=int(getattr(args, "workspaces", 1) or 1))
        try:
            await sandbox.start()
        except SandboxError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            print(f"threadflow sandbox: open {sandbox.url}", flush=True)
            print(f"  bot {sandbox.emulator.bot_url} · model {sandbox.settings.model_name} · "
                  f"database {safe_url(sandbox.settings.database_url)} · Ctrl+C to stop", flush=True)
            print(f"  run inspector {sandbox.page.inspector_url}", flush=True)
            if len(sandbox.pages) > 1:
                for team, url in sandbox.workspace_urls.items():
                    print(f"  workspace {team} (installed through OAuth): {url}", flush=True)
            if getattr(args, "realistic_slack", False):
                print("  Slack answers like the real one: 0.1-0.3 s per call, and its rate limits", flush=True)
            if not args.no_browser:
                await asyncio.get_running_loop().run_in_executor(None, open_browser, sandbox.url)
            await wait_for_stop_signal()
        finally:
            await sandbox.stop()
        return 0

    return asyncio.run(main())
