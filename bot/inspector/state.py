"""What every request handler shares: the engine, the configuration, the queries and the templates."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import jinja2
from aiohttp import web

from storage.run_queries import RunQueries
from storage.slack_store import SlackStore
from workflows import Engine

from .access import Access
from .config import InspectorConfig
from .render import environment, render
from .session import SESSION, VIEWER, Session
from .slack import SlackDirectory


@dataclass
class Inspector:
    """Everything a request handler needs, built once per app."""

    engine: Engine
    config: InspectorConfig
    queries: RunQueries
    slack_store: SlackStore
    directory: SlackDirectory | None
    access: Access
    templates: jinja2.Environment
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, engine: Engine, config: InspectorConfig) -> Inspector:
        queries = RunQueries(engine.db)
        directory = None
        if config.bot_token or config.slack:
            directory = SlackDirectory(config.slack_api_url, config.bot_token, config.slack)
        return cls(
            engine=engine, config=config, queries=queries, slack_store=SlackStore(engine.db), directory=directory,
            access=Access(engine, queries, directory if config.slack else None, config.approvers),
            templates=environment(),
        )

    def page(self, request: web.Request, name: str, *, http_status: int = 200, **context: object) -> web.Response:
        """Render a page with what every page shows (who is looking, the CSRF token, a one-time notice)."""
        session: Session = request[SESSION]
        viewer = request.get(VIEWER)
        context.setdefault("nav", None)
        return render(
            self.templates, name, http_status=http_status, viewer=viewer, csrf=session.csrf, flash=session.pop("flash"),
            signed_in=session.viewer is not None, sign_in_offered=self.config.sign_in_configured,
            **context,
        )


INSPECTOR: web.AppKey[Inspector] = web.AppKey("inspector", Inspector)


def inspector_of(request: web.Request) -> Inspector:
    return request.app[INSPECTOR]
