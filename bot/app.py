"""The Slack bot, assembled: dependencies, the bolt app, its middleware and listeners, and their lifecycle.

Three parts, each depending only downward:

- listeners (:mod:`bot.listeners`): parse a Slack payload, authorize, ack, hand work to a background task;
- delivery (:mod:`bot.delivery`): the run's events in, the outbox recorded, Slack calls out;
- the Slack client (:mod:`bot.slack`): typed, paced Web API calls that know Slack's errors and limits.

The bot never executes workflows itself: the engine's dispatcher does.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_sdk.web.async_client import AsyncWebClient

from storage.slack_store import SlackStore
from workflows import Engine

from .commands_server import BOT_SCOPES
from .delivery.live import Streams
from .delivery.service import DeliveryService
from .deps import BackgroundTasks, BotDeps
from .installs import DatabaseStateStore, EncryptedInstallationStore, TokenCipher
from .listeners import approvals, commands, feedback, installs
from .listeners.assistant import AssistantThreads
from .listeners.chat import ThreadChat
from .metrics import Metrics
from .middleware import IgnoreOwnEventsButDeletions, ReplayGuard, enter_workspace, reject_malformed
from .schedule_commands import make_scheduler
from .settings import Settings
from .slack import Pacer, SlackClient, make_web_client
from .slack.streams import StreamingSupport
from .workspaces import ROTATE_BEFORE_MINUTES, InstalledAuthorize, InstalledTokens

log = logging.getLogger("threadflow.bot")

#: Seconds a stopping bot gives the work its listeners acked to finish (a click's decision, a run being started: a
#: second or less when Slack and the database answer) before cancelling what is left.
SHUTDOWN_GRACE = 5.0


def make_client(settings: Settings) -> AsyncWebClient:
    """slack_sdk's Web API client on the configured base URL (the bot's own client decides on retries)."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    return make_web_client(token, settings.slack_api_url, settings.slack_timeout)


class SlackBot:
    def __init__(self, settings: Settings, engine: Engine, *, client: AsyncWebClient | None = None) -> None:
        settings.require_slack()
        self.settings = settings
        self.engine = engine
        self.metrics = Metrics(engine)
        self.client = client or make_client(settings)
        self.store = SlackStore(engine.db)
        #: Installs through OAuth (None: one workspace, SLACK_BOT_TOKEN).
        self.installs: EncryptedInstallationStore | None = None
        self.tokens: InstalledTokens | None = None
        if settings.oauth_enabled:
            assert settings.slack_client_id and settings.slack_client_secret and settings.encryption_key
            self.installs = EncryptedInstallationStore(engine.db, settings.slack_client_id,
                                                       TokenCipher(settings.encryption_key.get_secret_value()))
            self.tokens = InstalledTokens(self.installs, settings.slack_client_id,
                                          settings.slack_client_secret.get_secret_value(), settings.slack_api_url,
                                          timeout=settings.slack_timeout)
            self.installs.on_saved(self.tokens.forget)  # an install made now is used now
        self.slack = SlackClient(self.client, Pacer(self.store, enabled=settings.slack_pacing), self.metrics,
                                 tokens=self.tokens)
        self.streams = (Streams(self.slack, StreamingSupport(self.store), interval=settings.slack_stream_interval,
                                metrics=self.metrics) if settings.slack_streaming else None)
        self.delivery = DeliveryService(engine, self.store, self.slack, interval=settings.progress_interval,
                                        lease=max(5.0, 3 * settings.poll_interval), metrics=self.metrics,
                                        streams=self.streams)
        self.background = BackgroundTasks()
        self.deps = BotDeps(settings, engine, self.store, self.slack, self.delivery, self.metrics, self.background,
                            self.streams)
        self.chat = ThreadChat(self.deps)
        self.scheduler = make_scheduler(self.deps)
        self.app = AsyncApp(
            **self._oauth_options(),
            client=self.client,
            # Over HTTP bolt verifies every request's signature. In Socket Mode there is no signing secret
            # to verify with, and no HTTP request either: the server does not serve /slack/events then.
            signing_secret=settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else "",
            # Every listener acks first and leaves slow work to a background task, so the HTTP response can
            # go out as soon as the listener returns (with False, bolt polls every 10 ms for the ack).
            process_before_response=True,
            # Replaced by IgnoreOwnEventsButDeletions below (same filter, deletions kept).
            ignoring_self_events_enabled=False,
        )
        self.app.use(enter_workspace)
        self.app.use(IgnoreOwnEventsButDeletions())
        self.app.use(ReplayGuard(self.store).process)
        self.app.use(reject_malformed)
        commands.register(self.app, self.deps)
        approvals.register(self.app, self.deps)
        feedback.register(self.app, self.deps)
        self.assistant = AssistantThreads(self.deps, self.chat)
        self.assistant.register(self.app)
        self.chat.register(self.app)
        if self.installs is not None and self.tokens is not None:
            installs.register(self.app, self.installs, self.tokens)
        self.app.error(self.on_error)

    def _oauth_options(self) -> dict[str, Any]:
        """bolt's OAuth flow at /slack/install and /slack/oauth_redirect, when installs go through OAuth."""
        settings = self.settings
        if self.installs is None or self.tokens is None:
            return {}
        assert settings.slack_client_secret and settings.slack_state_secret
        public = (settings.public_url or "").rstrip("/")
        oauth = AsyncOAuthSettings(
            client_id=settings.slack_client_id, client_secret=settings.slack_client_secret.get_secret_value(),
            scopes=list(BOT_SCOPES), redirect_uri=f"{public}/slack/oauth_redirect" if public else None,
            install_path="/slack/install", redirect_uri_path="/slack/oauth_redirect",
            authorization_url=settings.slack_oauth_url, installation_store=self.installs,
            installation_store_bot_only=True, token_rotation_expiration_minutes=ROTATE_BEFORE_MINUTES,
            state_store=DatabaseStateStore(self.engine.db, settings.slack_state_secret.get_secret_value()),
        )
        return {"oauth_settings": oauth, "authorize": InstalledAuthorize(self.tokens),
                "installation_store_bot_only": True}

    @property
    def tasks(self) -> set[Any]:
        """Background work in flight (listeners' hand-offs), for tests and shutdown."""
        return self.background.tasks

    async def start(self) -> None:
        """Open the engine, start the scheduler, and render every run shown in Slack that needs it."""
        await self.engine.open()
        await self.delivery.start()
        self.scheduler.start(self.settings.schedule_interval)

    async def close(self) -> None:
        await self.scheduler.stop()
        await self.background.close(SHUTDOWN_GRACE)  # (before delivery closes: a decision shows on its card)
        await self.delivery.close()
        await self.chat.close()
        self.metrics.close()

    async def on_error(self, error: Exception, body: dict[str, Any]) -> None:
        log.error("unhandled error in a Slack listener: %s", type(error).__name__, exc_info=error)
