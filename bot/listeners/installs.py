"""``app_uninstalled`` and ``tokens_revoked``: the workspace's tokens are deleted and forgotten at once.

Its runs stay in the database; their deliveries stop (every Slack call for the workspace ends in
:class:`bot.slack.errors.NotInstalled`, and the outbox marks the message failed instead of retrying).

Slack retries an event it got no timely answer to (a minute, then five minutes later). A retry may arrive after
the workspace installed the app again: an event from before the stored install is about an older one, and
deletes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from ..installs import EncryptedInstallationStore
from ..workspaces import InstalledTokens

log = logging.getLogger("threadflow.bot.installs")


def register(app: AsyncApp, store: EncryptedInstallationStore, tokens: InstalledTokens) -> None:
    def workspace(context: AsyncBoltContext) -> tuple[str | None, str | None]:
        enterprise = context.enterprise_id or None
        team = None if context.is_enterprise_install else (context.team_id or None)
        return enterprise, team

    async def installed_since(body: dict[str, Any], enterprise: str | None, team: str | None, what: str) -> bool:
        """Whether the stored install was made after the event happened (a late retry about an older install)."""
        event_time = body.get("event_time")
        if not isinstance(event_time, (int, float)) or isinstance(event_time, bool):
            return False
        bot = await store.async_find_bot(enterprise_id=enterprise, team_id=team, is_enterprise_install=team is None)
        # event_time has a one-second resolution: only an install from a later second is surely newer.
        if bot is None or bot.installed_at < event_time + 1:
            return False
        log.warning("ignored %s of workspace %s from before its current install (a late retry of the event)",
                    what, team or enterprise)
        return True

    async def on_uninstalled(body: dict[str, Any], context: AsyncBoltContext) -> None:
        enterprise, team = workspace(context)
        if await installed_since(body, enterprise, team, "app_uninstalled"):
            return
        await store.async_delete_bot(enterprise_id=enterprise, team_id=team)
        await store.async_delete_installation(enterprise_id=enterprise, team_id=team)
        tokens.forget(enterprise, team)
        log.warning("the app was uninstalled from workspace %s: its tokens are deleted, its runs kept",
                    team or enterprise)

    async def on_tokens_revoked(body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext) -> None:
        enterprise, team = workspace(context)
        if await installed_since(body, enterprise, team, "tokens_revoked"):
            return
        tokens_field = event.get("tokens")
        revoked: dict[str, Any] = tokens_field if isinstance(tokens_field, dict) else {}
        for user_id in revoked.get("oauth") or []:
            await store.async_delete_installation(enterprise_id=enterprise, team_id=team, user_id=str(user_id))
        if revoked.get("bot"):
            await store.async_delete_bot(enterprise_id=enterprise, team_id=team)
            await store.async_delete_installation(enterprise_id=enterprise, team_id=team)
            log.warning("the bot token of workspace %s was revoked: its tokens are deleted, its runs kept",
                        team or enterprise)
        tokens.forget(enterprise, team)

    app.event("app_uninstalled")(on_uninstalled)
    app.event("tokens_revoked")(on_tokens_revoked)
