"""The HTTP server: bolt at ``POST /slack/events``, ``GET /healthz``, ``GET /metrics``, and the engine in the same
event loop.

In Socket Mode (``SLACK_APP_TOKEN``) Slack's requests arrive over the socket, and ``/slack/events`` is not
served: there is no signing secret to verify HTTP requests with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest

from workflows import Engine

from .app import SlackBot
from .http_limits import BoundedTCPSite, install_accept_error_filter
from .metrics import CONTENT_TYPE, Metrics
from .settings import Settings

log = logging.getLogger("threadflow.bot.server")

BOT_KEY: web.AppKey[SlackBot] = web.AppKey("bot", SlackBot)
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)

#: Slack's requests are small; a body larger than this is not from Slack.
MAX_BODY = 1024 * 1024


FORM = "application/x-www-form-urlencoded"


def form_fields(raw_body: str, content_type: str | None) -> dict[str, str] | None:
    """The fields of a form-encoded body that is not an interaction (no ``payload`` field), else None.

    bolt takes any form body in which the letters ``payload`` occur *anywhere* for an interaction
    (``payload={json}``): a slash command whose text, channel or user name holds the word would reach bolt as
    ``{}`` and be answered 404. The fields parsed here are what bolt should have seen."""
    if content_type != FORM or raw_body.startswith("{"):
        return None
    fields = dict(parse_qsl(raw_body, keep_blank_values=True))
    return None if "payload" in fields else fields


class SlackRequest(AsyncBoltRequest):
    """A bolt request whose form body is parsed by its fields, not by a substring (see ``form_fields``).

    The signature is still verified on ``raw_body``, the bytes Slack signed; only ``body`` (what listeners see)
    and the context built from it change."""

    def __init__(self, *, body: str | dict[str, Any], query: Any = None,
                 headers: Any = None, context: dict[str, Any] | None = None,
                 mode: str = "http") -> None:
        super().__init__(body=body, query=query, headers=headers, context=context, mode=mode)
        fields = form_fields(self.raw_body, self.content_type)
        if fields is not None and fields != self.body:
            self.body = fields
            self.context = build_async_context(self.context, self.body)

    def to_copyable(self) -> SlackRequest:
        """A copy for a lazy listener, parsed the same way (bolt's own copy would re-parse the raw body)."""
        return SlackRequest(body=self.raw_body if self.mode == "http" else self.body, query=self.query,
                            headers=dict(self.headers), context=self.context.to_copyable(), mode=self.mode)


async def slack_request(request: web.Request) -> SlackRequest:
    """What bolt's aiohttp adapter (``to_bolt_request``) builds, parsed as ``SlackRequest``."""
    return SlackRequest(body=await request.text(), query=request.query_string,
                        headers=dict(request.headers))


async def slack_events(request: web.Request) -> web.Response:
    """Every Slack request (commands, interactivity, events) arrives here; bolt verifies the signature.

    The body must arrive within ``THREADFLOW_HTTP_TIMEOUT``: a client that trickles it is dropped."""
    bot = request.app[BOT_KEY]
    timeout = bot.settings.http_timeout
    try:
        async with asyncio.timeout(timeout):
            await request.read()  # cached: bolt reads it below
    except TimeoutError:
        log.warning("dropped a Slack request whose body did not arrive within %s s", timeout)
        return web.json_response({"error": "request body too slow"}, status=408)
    try:
        bolt_request = await slack_request(request)  # reads the body already read above
        bolt_response = await bot.app.async_dispatch(bolt_request)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        # A signed request bolt cannot parse or route (malformed payload): a client error, not a crash.
        log.warning("refused a malformed Slack request: %s", type(exc).__name__)
        return web.json_response({"error": "malformed request"}, status=400)
    return await to_aiohttp_response(bolt_response)


async def slack_oauth(request: web.Request) -> web.Response:
    """``GET /slack/install`` (the "Add to Slack" page) and ``GET /slack/oauth_redirect`` (Slack sends the person
    back with a code): bolt's OAuth flow, which stores the install (tokens encrypted) in the database."""
    flow = request.app[BOT_KEY].app.oauth_flow
    if flow is None:
        raise web.HTTPNotFound()
    bolt_request = await to_bolt_request(request)
    if request.path == flow.install_path:
        bolt_response = await flow.handle_installation(bolt_request)
    else:
        bolt_response = await flow.handle_callback(bolt_request)
    return await to_aiohttp_response(bolt_response)


#: How long ``GET /healthz`` waits for the database: under Kubernetes' default probe timeout (1 s). A read
#: otherwise retries through an outage for ``RETRY_SECONDS`` (10), and a probe would time out, not see the 503.
HEALTH_TIMEOUT = 0.8


async def healthz(request: web.Request) -> web.Response:
    bot = request.app[BOT_KEY]
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await bot.engine.store.count_runs("running")
    except TimeoutError:
        failing = bot.engine.db.failing()
        if failing is None:  # no error seen: slow, or every connection busy (a heavy moment), not down
            return web.json_response({"ok": True, "database": bot.engine.db.dialect, "owner": bot.engine.owner,
                                      "busy": f"no answer within {HEALTH_TIMEOUT:g} s, and no error"})
        return web.json_response({"ok": False, "database": f"unreachable: no answer within {HEALTH_TIMEOUT:g} s "
                                                           f"({failing} failing)"}, status=503)
    except Exception as exc:
        return web.json_response({"ok": False, "database": f"unreachable: {type(exc).__name__}"}, status=503)
    return web.json_response({"ok": True, "database": bot.engine.db.dialect, "owner": bot.engine.owner})


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text format; gauges that live in the database are read now."""
    body = await request.app[METRICS_KEY].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def create_web_app(bot: SlackBot, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[BOT_KEY] = bot
    app[METRICS_KEY] = metrics or bot.metrics
    if not bot.settings.socket_mode:
        app.router.add_post("/slack/events", slack_events)
    if bot.installs is not None:
        app.router.add_get("/slack/install", slack_oauth)
        app.router.add_get("/slack/oauth_redirect", slack_oauth)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)

    async def on_cleanup(app_: web.Application) -> None:
        await bot.close()
        await bot.engine.close()
        app_[METRICS_KEY].close()

    app.on_cleanup.append(on_cleanup)  # (the bot is started by start_server, once its port is taken)
    return app


async def connect_socket_mode(bot: SlackBot, settings: Settings) -> Any:
    """Connect out to Slack in Socket Mode (``SLACK_APP_TOKEN``); returns the handler to ``close_async()``."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    assert settings.slack_app_token is not None
    handler = AsyncSocketModeHandler(bot.app, settings.slack_app_token.get_secret_value())
    await handler.connect_async()  # type: ignore[no-untyped-call]
    return handler


async def start_server(settings: Settings, engine: Engine, *, host: str | None = None, port: int | None = None,
                       before_start: Callable[[], Awaitable[None]] | None = None,
                       **bot_kwargs: Any) -> tuple[web.AppRunner, SlackBot, int]:
    """Start the bot's HTTP server; returns the runner (for cleanup), the bot and the bound port.

    The port is taken first, then ``before_start`` runs (``serve --ui`` takes the inspector's port there), and
    only then does the bot start, with its engine: a port in use raises OSError before this process has claimed
    a run, so a restart loop on a taken port never starts (and abandons) a run's steps. Connections are accepted
    once the bot has started. On any failure what was started is closed again, its runs handed back."""
    bot = SlackBot(settings, engine, **bot_kwargs)
    install_accept_error_filter(asyncio.get_running_loop())
    runner = web.AppRunner(create_web_app(bot), access_log=None, keepalive_timeout=settings.http_timeout)
    await runner.setup()
    site = BoundedTCPSite(runner, host or settings.host, settings.port if port is None else port,
                          max_connections=settings.max_connections)
    try:
        await site.bind()
        if before_start is not None:
            await before_start()
        await bot.start()
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, bot, site.bound_port
