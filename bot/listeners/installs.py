"""``app_uninstalled`` and ``tokens_revoked``: the workspace's tokens are deleted and forgotten at once.

Its runs stay in the database; their deliveries stop (every Slack call for the workspace ends in
:class:`bot.slack.errors.NotInstalled`, and the outbox marks the message failed instead of retrying).
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

    async def on_uninstalled(context: AsyncBoltContext) -> None:
        enterprise, team = workspace(context)
        await store.async_delete_bot(enterprise_id=enterprise, team_id=team)
        await store.async_delete_installation(enterprise_id=enterprise, team_id=team)
        tokens.forget(enterprise, team)
        log.warning("the app was uninstalled from workspace %s: its tokens are deleted, its runs kept",
                    team or enterprise)

    async def on_tokens_revoked(event: dict[str, Any], context: AsyncBoltContext) -> None:
        enterprise, team = workspace(context)
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
