"""The HTTP server: bolt at ``POST /slack/events``, ``GET /healthz``, ``GET /metrics``, and the engine in the same
event loop."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

from workflows import Engine

from .app import SlackBot
from .metrics import CONTENT_TYPE, Metrics
from .settings import Settings

log = logging.getLogger("threadflow.bot.server")

BOT_KEY: web.AppKey[SlackBot] = web.AppKey("bot", SlackBot)
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


async def slack_events(request: web.Request) -> web.Response:
    """Every Slack request (commands, interactivity, events) arrives here; bolt verifies the signature."""
    bot = request.app[BOT_KEY]
    try:
        bolt_request = await to_bolt_request(request)
        if await bot.is_replay(bolt_request.raw_body, bolt_request.headers):
            log.warning("refused a replayed Slack request (same signature seen before)")
            return web.json_response({"error": "replayed request"}, status=401)
        problem = malformed_interaction(bolt_request.body)
        if problem is not None:
            log.warning("refused a malformed Slack interaction: %s", problem)
            return web.json_response({"error": f"malformed request: {problem}"}, status=400)
        bolt_response = await bot.app.async_dispatch(bolt_request)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        # A signed request bolt cannot parse or route (malformed payload): a client error, not a crash.
        log.warning("refused a malformed Slack request: %s", type(exc).__name__)
        return web.json_response({"error": "malformed request"}, status=400)
    return await to_aiohttp_response(bolt_response)


def malformed_interaction(body: Any) -> str | None:
    """What is wrong with an interaction payload bolt would choke on (it answers those with a 500)."""
    if not isinstance(body, dict) or body.get("type") not in ("block_actions", "view_submission"):
        return None
    user = body.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        return "no user"
    if body["type"] == "block_actions":
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions:
            return "no actions"
        if not all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions):
            return "an action without action_id"
    elif not isinstance(body.get("view"), dict):
        return "no view"
    return None


async def healthz(request: web.Request) -> web.Response:
    bot = request.app[BOT_KEY]
    try:
        await bot.engine.store.count_runs("running")
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
    app = web.Application()
    app[BOT_KEY] = bot
    # The bot's own metrics when it has them (it counts its Slack calls there), else a set for this app.
    existing = getattr(bot, "metrics", None)
    app[METRICS_KEY] = metrics or (existing if isinstance(existing, Metrics) else Metrics(bot.engine))
    app.router.add_post("/slack/events", slack_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)

    async def on_startup(_: web.Application) -> None:
        await bot.start()

    async def on_cleanup(app_: web.Application) -> None:
        await bot.close()
        await bot.engine.close()
        app_[METRICS_KEY].close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def start_server(settings: Settings, engine: Engine, *, host: str | None = None, port: int | None = None,
                       **bot_kwargs: Any) -> tuple[web.AppRunner, SlackBot, int]:
    """Start the bot's HTTP server; returns the runner (for cleanup), the bot and the bound port."""
    bot = SlackBot(settings, engine, **bot_kwargs)
    runner = web.AppRunner(create_web_app(bot), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or settings.host, settings.port if port is None else port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else settings.port  # type: ignore[union-attr]
    return runner, bot, int(bound)
