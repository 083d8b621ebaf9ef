"""Each workspace's bot token, from its OAuth install: found in the installation store, refreshed before it
expires (token rotation), forgotten when the app is uninstalled or its tokens are revoked.

Tokens are kept in memory for a short while (``ttl``) so a burst of calls does not read and decrypt the
row each time; an uninstall or a (re)install in this process forgets at once, other replicas within ``ttl``.
"No token" is never kept: a workspace that installs the app again (on any replica) can use it at once.

A refresh that gets no answer (Slack down, a dropped connection, no answer within ``THREADFLOW_SLACK_TIMEOUT``)
keeps the current token while it still works; once it has expired, calls end in :class:`bot.slack.errors.Transient`
so the outbox tries again later instead of calling Slack with a dead token.

A refreshed token that cannot be saved (the database is down past its retries) is not dropped: Slack has spent the
refresh token it replaced, so the store's copy can no longer be refreshed. It is used from memory and saved again
(at most every ``save_again`` seconds) on the workspace's next calls until the save works.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from slack_bolt.authorization.async_authorize import AsyncAuthorize
from slack_bolt.authorization.authorize_result import AuthorizeResult
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackTokenRotationError
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
from slack_sdk.web.async_client import AsyncWebClient

from .installs import EncryptedInstallationStore, UndecryptableToken
from .slack.client import DEFAULT_TIMEOUT, make_web_client
from .slack.errors import Transient
from .slack.workspace import Workspace

log = logging.getLogger("threadflow.bot.workspaces")

#: Refresh a rotating token this long before it expires (bolt's default is the same two hours).
ROTATE_BEFORE_MINUTES = 120
#: How long a token read from the store is reused.
TOKEN_TTL = 30.0
#: How often a refreshed token the store could not take is offered to it again.
SAVE_AGAIN_SECONDS = 5.0


class InstalledTokens:
    """A :class:`bot.slack.workspace.TokenSource` over OAuth installs."""

    def __init__(self, store: EncryptedInstallationStore, client_id: str, client_secret: str, api_url: str, *,
                 ttl: float = TOKEN_TTL, rotate_before_minutes: int = ROTATE_BEFORE_MINUTES,
                 timeout: float = DEFAULT_TIMEOUT, save_again: float = SAVE_AGAIN_SECONDS) -> None:
        self.store = store
        self.ttl = ttl
        self.save_again = save_again
        self.rotate_before_minutes = rotate_before_minutes
        # The refresh is a Slack call like any other: it gives up after THREADFLOW_SLACK_TIMEOUT (it runs under the
        # workspace's lock, so a refresh Slack does not answer would otherwise hold every call of the workspace).
        client: AsyncWebClient = make_web_client(None, api_url, timeout)
        self.rotator = AsyncTokenRotator(client_id=client_id, client_secret=client_secret, client=client)
        self._bots: dict[Workspace, tuple[float, Bot]] = {}
        self._locks: dict[Workspace, asyncio.Lock] = {}
        #: Bumped by :meth:`forget`: a lookup that began before it does not put what it read in the cache.
        self._generation = 0
        #: Refreshed tokens the store has not taken yet, with when it was last tried (see the module's docstring).
        self._unsaved: dict[Workspace, tuple[float, Bot]] = {}

    async def token_for(self, workspace: Workspace | None) -> str | None:
        if workspace is None or not (workspace.team_id or workspace.enterprise_id):
            return None
        bot = await self.bot_for(workspace)
        return bot.bot_token if bot is not None else None

    async def bot_for(self, workspace: Workspace) -> Bot | None:
        """The workspace's bot (its token refreshed when due); None when the app is not installed there.

        Raises :class:`bot.slack.errors.Transient` when the token has expired and Slack could not refresh it."""
        lock = self._locks.setdefault(workspace, asyncio.Lock())
        async with lock:  # one rotation at a time per workspace (a refresh token is good for one use)
            generation = self._generation
            cached = self._bots.get(workspace)
            now = time.monotonic()
            fresh = cached is not None and now - cached[0] < self.ttl
            unsaved = self._unsaved.get(workspace)
            bot: Bot | None
            if unsaved is not None:  # newer than the store's copy, whose refresh token is spent
                bot = unsaved[1] if now - unsaved[0] < self.save_again else await self._saved(workspace, unsaved[1])
            else:
                bot = cached[1] if cached is not None and fresh else await self._find(workspace)
            if bot is None:
                self._bots.pop(workspace, None)  # never kept: a reinstall must be seen at once
                return None
            bot = await self._rotated(workspace, bot)
            if generation == self._generation:  # (not when an install or uninstall happened meanwhile)
                self._bots[workspace] = (cached[0] if cached is not None and fresh else now, bot)
            return bot

    async def _find(self, workspace: Workspace) -> Bot | None:
        try:
            bot = await self.store.async_find_bot(enterprise_id=workspace.enterprise_id, team_id=workspace.team_id)
            if bot is None and workspace.enterprise_id:  # an org-wide install serves every workspace of the org
                bot = await self.store.async_find_bot(enterprise_id=workspace.enterprise_id, team_id=None,
                                                      is_enterprise_install=True)
        except UndecryptableToken as exc:
            log.error("workspace %s: %s", workspace.team_id, exc)
            return None
        return bot

    async def _saved(self, workspace: Workspace, bot: Bot) -> Bot:
        """``bot`` (a refreshed token) saved to the store; kept in memory to be saved again if the store refuses it."""
        try:
            await self.store.async_save_bot(bot)
        except Exception as exc:  # the database is down (past its retries) or refuses the write
            self._unsaved[workspace] = (time.monotonic(), bot)
            log.error("could not save the refreshed bot token of workspace %s (%s: %s); it is used from memory and "
                      "saved again on the workspace's next calls", workspace.team_id or workspace.enterprise_id,
                      type(exc).__name__, exc)
            return bot
        if self._unsaved.pop(workspace, None) is not None:
            log.info("saved the refreshed bot token of workspace %s, kept in memory until now",
                     workspace.team_id or workspace.enterprise_id)
        return bot

    async def _rotated(self, workspace: Workspace, bot: Bot) -> Bot:
        """The bot with a fresh token when its token expires within ``rotate_before_minutes`` (saved first)."""
        if bot.bot_token_expires_at is None or bot.bot_token_expires_at > time.time() + self.rotate_before_minutes * 60:
            return bot
        try:
            refreshed = await self.rotator.perform_bot_token_rotation(
                bot=bot, minutes_before_expiration=self.rotate_before_minutes)
        except SlackTokenRotationError as exc:
            # Someone else (bolt's authorize, another replica) may have used the refresh token first: their
            # token is in the store then.
            stored = await self.store.async_find_bot(enterprise_id=bot.enterprise_id, team_id=bot.team_id,
                                                     is_enterprise_install=bot.is_enterprise_install)
            if stored is not None and stored.bot_token != bot.bot_token:
                return stored
            log.error("could not refresh the bot token of workspace %s: %s", bot.team_id or bot.enterprise_id,
                      exc.api_error.response.get("error") if exc.api_error.response else exc)
            return bot
        except (aiohttp.ClientError, TimeoutError, OSError, KeyError, ValueError) as exc:
            return self._unrefreshed(bot, exc)
        if refreshed is None:
            return bot
        await self._saved(workspace, refreshed)
        log.info("refreshed the bot token of workspace %s (expires in %.0f s)", bot.team_id or bot.enterprise_id,
                 (refreshed.bot_token_expires_at or 0) - time.time())
        return refreshed

    def _unrefreshed(self, bot: Bot, exc: BaseException) -> Bot:
        """The refresh got no (usable) answer: the current token while it still works, else try again later."""
        workspace = bot.team_id or bot.enterprise_id
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        left = (bot.bot_token_expires_at or 0) - time.time()
        if left > 0:
            log.warning("could not refresh the bot token of workspace %s (%s); the current one works for %.0f s more",
                        workspace, reason, left)
            return bot
        log.error("could not refresh the expired bot token of workspace %s (%s); its Slack calls wait until Slack "
                  "answers the refresh", workspace, reason)
        raise Transient("oauth.v2.access", f"the bot token of workspace {workspace} expired and could not be "
                        f"refreshed ({reason})")

    def forget(self, enterprise_id: str | None, team_id: str | None) -> None:
        """The workspace's tokens changed (installed again, uninstalled, revoked): stop using the cached ones now."""
        self._generation += 1
        for workspace in list(self._unsaved):  # replaced by the install, or gone with it
            if (team_id and workspace.team_id == team_id) or (enterprise_id and workspace.enterprise_id == enterprise_id
                                                              and not team_id):
                self._unsaved.pop(workspace, None)
        for workspace in list(self._bots):
            if (team_id and workspace.team_id == team_id) or (enterprise_id and workspace.enterprise_id == enterprise_id
                                                              and not team_id):
                self._bots.pop(workspace, None)


class InstalledAuthorize(AsyncAuthorize):
    """bolt's ``authorize`` for OAuth installs, through the same tokens (and rotation) as every other call."""

    def __init__(self, tokens: InstalledTokens) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # (bolt's base __init__ is unannotated and does nothing)
        self.tokens = tokens

    async def __call__(self, *, context: AsyncBoltContext, enterprise_id: str | None, team_id: str | None,
                       user_id: str | None, actor_enterprise_id: str | None = None, actor_team_id: str | None = None,
                       actor_user_id: str | None = None) -> AuthorizeResult | None:
        bot = await self.tokens.bot_for(Workspace(team_id or "", enterprise_id or None))
        if bot is None:
            log.info("a request from workspace %s, where the app is not installed", team_id or enterprise_id)
            return None
        return AuthorizeResult(enterprise_id=enterprise_id or bot.enterprise_id, team_id=team_id or bot.team_id,
                               bot_user_id=bot.bot_user_id, bot_id=bot.bot_id, bot_token=bot.bot_token,
                               bot_scopes=bot.bot_scopes, user_id=user_id)
