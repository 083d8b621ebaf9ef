"""The inspector's aiohttp application: routes, the security middleware, and starting it.

It runs in any process that has an engine: ``threadflow ui`` (alone), ``threadflow serve`` with
THREADFLOW_UI=true (next to the bot, on its own port), and ``threadflow dev`` (next to the sandbox).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from workflows import Engine

from . import actions, live, pages
from .config import InspectorConfig, is_loopback
from .session import COOKIE, OPERATOR, SESSION, VIEWER, Session, cross_site, decode, save
from .slack import SlackUnavailable
from .state import INSPECTOR, Inspector, inspector_of

log = logging.getLogger("threadflow.inspector")

STATIC = Path(__file__).with_name("static")
#: Paths anyone may open without signing in.
PUBLIC = ("/login", "/auth/slack", "/auth/slack/callback", "/healthz")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sign-in, the loopback host check, and CSRF for every state-changing request, in one place (and no NUL in
    the address)."""
    insp = inspector_of(request)
    cfg = insp.config
    if "\x00" in request.path or any("\x00" in v for v in request.query.values()):
        # No run id, search or cursor holds one; PostgreSQL's text refuses it (a server error, not "no such run").
        return web.Response(status=400, text="The address holds a NUL character: nothing can match it.")
    if not cfg.sign_in_required and not is_loopback(request.url.host or ""):
        # No sign-in: answer only to this machine's own names, so a web page that rebinds its DNS name to
        # 127.0.0.1 cannot read runs through the visitor's browser.
        return web.Response(status=403, text="This inspector answers only on 127.0.0.1 or localhost.")
    session = Session(decode(request.cookies.get(COOKIE), cfg.secret))
    if not session.bound_to(cfg.token):
        session.sign_out()  # the operator token it was made with was changed: sign in again
    bearer = _bearer(request, cfg.token)
    viewer = OPERATOR if bearer else session.viewer or (None if cfg.sign_in_required else OPERATOR)
    request[SESSION], request[VIEWER] = session, viewer
    path = request.path
    if viewer is None and not (path in PUBLIC or path.startswith("/static/")):
        if request.method in ("GET", "HEAD"):
            redirect = web.HTTPFound(f"/login?next={_quote(request.path_qs)}")
            _finish(redirect, session, request)
            raise redirect
        return web.Response(status=401, text="Sign in first.")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not bearer:
        why = cross_site(request, cfg.public_url)
        if why is not None:
            log.warning("refused a cross-site %s %s: %s", request.method, path, why)
            return web.Response(status=403, text=f"Refused a cross-site request ({why}).")
        form = await request.post()
        token = form.get("csrf") or request.headers.get("X-CSRF-Token")
        if not session.check_csrf(token if isinstance(token, str) else None):
            return web.Response(status=403, text="This form is stale or came from another site: reload the page "
                                                 "and try again.")
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _finish(exc, session, request)
        raise
    except SlackUnavailable as exc:
        response = insp.page(request, "error.html", http_status=503, heading="Slack did not answer",
                             message=f"{exc}. Nothing is shown rather than too much; try again in a moment.")
    _finish(response, session, request)
    return response


def _finish(response: web.StreamResponse, session: Session, request: web.Request) -> None:
    if response.prepared:
        return
    if session.changed:
        save(response, session, inspector_of(request).config.secret, secure=_secure(request))
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self' " + _form_targets(request),
    )


def _form_targets(request: web.Request) -> str:
    slack = inspector_of(request).config.slack
    if slack is None:
        return ""
    from urllib.parse import urlsplit

    parts = urlsplit(slack.authorize_url)
    return f"{parts.scheme}://{parts.netloc}"


def _secure(request: web.Request) -> bool:
    url = inspector_of(request).config.public_url
    return request.secure or bool(url and url.startswith("https://"))


def _bearer(request: web.Request, token: str | None) -> bool:
    header = request.headers.get("Authorization", "")
    if token is None or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(engine: Engine, config: InspectorConfig) -> web.Application:
    """The inspector as an aiohttp app (the caller owns the engine: it is neither opened nor closed here)."""
    insp = Inspector.build(engine, config)
    app = web.Application(middlewares=[guard])
    app[INSPECTOR] = insp
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC, append_version=False)
    pages.install(app)
    actions.install(app)
    live.install(app)

    async def on_shutdown(_: web.Application) -> None:
        insp.closing.set()  # ends the live streams, so shutdown does not wait for open tabs

    app.on_shutdown.append(on_shutdown)
    return app


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/runs")


@dataclass
class RunningInspector:
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_inspector(engine: Engine, config: InspectorConfig) -> RunningInspector:
    """Check the exposure rule, then listen; ``url`` has the bound port (``port=0`` picks a free one)."""
    config.check_exposure()
    runner = web.AppRunner(create_app(engine, config), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in str(host) else host
    return RunningInspector(runner, f"http://{shown}:{port}/")
