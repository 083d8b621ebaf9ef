"""Installs through OAuth: slack_sdk's installation store in the project's database, tokens encrypted at rest.

- :class:`TokenCipher`: Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) with the key(s) in
  ``THREADFLOW_ENCRYPTION_KEY``. Several comma-separated keys rotate the key: the first encrypts, all
  decrypt. A token that no key decrypts raises :class:`UndecryptableToken` (``threadflow doctor`` reports it).
- :class:`EncryptedInstallationStore`: slack_sdk's ``AsyncInstallationStore`` (what bolt's OAuth flow, its
  ``authorize`` and its token-revocation listeners use) over :class:`storage.installations.InstallationRows`,
  the tables of slack_sdk's SQLAlchemy store. Why not slack_sdk's ``AsyncSQLAlchemyInstallationStore``
  itself: it needs an ``AsyncEngine``, and on SQLite the project's database is a sync engine in a thread
  with one writer (commit queue); going through :class:`storage.database.Database` works on SQLite and
  PostgreSQL alike and never writes beside the commit queue. Every token (bot, bot refresh, user, user
  refresh, incoming webhook URL) is encrypted before it reaches storage.
- :class:`DatabaseStateStore`: OAuth ``state`` values kept in the database (so any replica can finish an
  install another began), each signed with ``SLACK_STATE_SECRET`` and accepted once before it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore

from storage.database import Database
from storage.installations import InstallationRows, OAuthStates

log = logging.getLogger("threadflow.bot.installs")

#: Columns that hold secrets: encrypted before they are stored.
SECRET_COLUMNS = ("bot_token", "bot_refresh_token", "user_token", "user_refresh_token", "incoming_webhook_url")

GENERATE_KEY_HINT = ("generate one with `python -c \"from cryptography.fernet import Fernet; "
                     "print(Fernet.generate_key().decode())\"`")


class EncryptionKeyError(Exception):
    """THREADFLOW_ENCRYPTION_KEY is missing or malformed; the message says how to make one."""


class UndecryptableToken(Exception):
    """A stored token that no configured key decrypts (the key changed, or the row was tampered with)."""


class TokenCipher:
    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise EncryptionKeyError(f"THREADFLOW_ENCRYPTION_KEY is not set; {GENERATE_KEY_HINT}.")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])
        except (ValueError, TypeError):
            raise EncryptionKeyError(
                f"THREADFLOW_ENCRYPTION_KEY is not a valid key (32 url-safe base64-encoded bytes); {GENERATE_KEY_HINT}."
            ) from None

    def encrypt(self, value: str | None) -> str | None:
        return None if value is None else self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return self._fernet.decrypt(value.encode()).decode()
        except InvalidToken:
            raise UndecryptableToken("a stored Slack token cannot be decrypted with THREADFLOW_ENCRYPTION_KEY "
                                     "(was the key changed? keep the old key after the new one, comma-separated, "
                                     "or reinstall the app in that workspace)") from None


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


#: Called with (enterprise_id, team_id) after a workspace's bot was saved (an install, a reinstall, a refresh).
SavedListener = Callable[[str | None, str | None], None]


class EncryptedInstallationStore(AsyncInstallationStore):
    """slack_sdk's installation store contract, rows in our database, secrets encrypted."""

    def __init__(self, db: Database, client_id: str, cipher: TokenCipher) -> None:
        self.rows = InstallationRows(db, client_id)
        self.cipher = cipher
        self._on_saved: list[SavedListener] = []

    def on_saved(self, listener: SavedListener) -> None:
        """Call ``listener`` after each save of a bot: bolt's OAuth callback saves an install here directly, and
        whoever keeps tokens in memory (:class:`bot.workspaces.InstalledTokens`) must drop the old ones then."""
        self._on_saved.append(listener)

    @property
    def logger(self) -> logging.Logger:
        return log

    def _sealed(self, values: dict[str, Any]) -> dict[str, Any]:
        row = dict(values)
        for column in SECRET_COLUMNS:
            if column in row:
                row[column] = self.cipher.encrypt(row[column])
        for column in ("installed_at", "bot_token_expires_at", "user_token_expires_at"):
            if column in row:
                row[column] = _epoch(row[column])
        if row.get("installed_at") is None:
            row["installed_at"] = time.time()
        row["is_enterprise_install"] = bool(row.get("is_enterprise_install"))
        return row

    def _opened(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for column in SECRET_COLUMNS:
            if column in out:
                out[column] = self.cipher.decrypt(out[column])
        return out

    async def async_save(self, installation: Installation) -> None:
        await self.rows.save_installation(self._sealed(installation.to_dict()))
        await self.async_save_bot(installation.to_bot())

    async def async_save_bot(self, bot: Bot) -> None:
        await self.rows.save_bot(self._sealed(bot.to_dict()))
        team_id = None if bot.is_enterprise_install else bot.team_id
        for listener in self._on_saved:
            listener(bot.enterprise_id or None, team_id or None)

    async def async_find_bot(self, *, enterprise_id: str | None, team_id: str | None,
                             is_enterprise_install: bool | None = False) -> Bot | None:
        if is_enterprise_install or team_id is None:
            team_id = None
        row = await self.rows.find_bot(enterprise_id, team_id)
        if row is None:
            return None
        r = self._opened(row)
        return Bot(app_id=r["app_id"], enterprise_id=r["enterprise_id"], enterprise_name=r["enterprise_name"],
                   team_id=r["team_id"], team_name=r["team_name"], bot_token=r["bot_token"], bot_id=r["bot_id"],
                   bot_user_id=r["bot_user_id"], bot_scopes=r["bot_scopes"] or "",
                   bot_refresh_token=r["bot_refresh_token"],
                   bot_token_expires_at=int(r["bot_token_expires_at"]) if r["bot_token_expires_at"] else None,
                   is_enterprise_install=r["is_enterprise_install"], installed_at=r["installed_at"])

    async def async_find_installation(self, *, enterprise_id: str | None, team_id: str | None,
                                      user_id: str | None = None,
                                      is_enterprise_install: bool | None = False) -> Installation | None:
        if is_enterprise_install or team_id is None:
            team_id = None
        row = await self.rows.find_installation(enterprise_id, team_id, user_id)
        if row is None:
            return None
        r = self._opened(row)
        installation = Installation(
            app_id=r["app_id"], enterprise_id=r["enterprise_id"], enterprise_name=r["enterprise_name"],
            enterprise_url=r["enterprise_url"], team_id=r["team_id"], team_name=r["team_name"],
            bot_token=r["bot_token"], bot_id=r["bot_id"], bot_user_id=r["bot_user_id"],
            bot_scopes=r["bot_scopes"] or "", bot_refresh_token=r["bot_refresh_token"],
            bot_token_expires_at=int(r["bot_token_expires_at"]) if r["bot_token_expires_at"] else None,
            user_id=r["user_id"], user_token=r["user_token"], user_scopes=r["user_scopes"] or "",
            user_refresh_token=r["user_refresh_token"],
            user_token_expires_at=int(r["user_token_expires_at"]) if r["user_token_expires_at"] else None,
            incoming_webhook_url=r["incoming_webhook_url"], incoming_webhook_channel=r["incoming_webhook_channel"],
            incoming_webhook_channel_id=r["incoming_webhook_channel_id"],
            incoming_webhook_configuration_url=r["incoming_webhook_configuration_url"],
            is_enterprise_install=r["is_enterprise_install"], token_type=r["token_type"],
            installed_at=r["installed_at"])
        # The bot token may have been rotated since this installation row was written (as slack_sdk does).
        bot = await self.async_find_bot(enterprise_id=enterprise_id, team_id=team_id,
                                        is_enterprise_install=is_enterprise_install)
        if bot is not None and bot.bot_token != installation.bot_token:
            installation.bot_id, installation.bot_user_id = bot.bot_id, bot.bot_user_id
            installation.bot_token, installation.bot_scopes = bot.bot_token, bot.bot_scopes
            installation.bot_refresh_token = bot.bot_refresh_token
            installation.bot_token_expires_at = bot.bot_token_expires_at
        return installation

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        await self.rows.delete_bot(enterprise_id, team_id)

    async def async_delete_installation(self, *, enterprise_id: str | None, team_id: str | None,
                                        user_id: str | None = None) -> None:
        await self.rows.delete_installation(enterprise_id, team_id, user_id)

    async def undecryptable(self) -> list[str]:
        """Which stored rows hold a token no configured key decrypts (for ``threadflow doctor``)."""
        bad: list[str] = []
        for row in await self.rows.all_token_rows():
            try:
                self._opened(row)
            except UndecryptableToken:
                where = row.get("team_id") or row.get("enterprise_id") or "?"
                bad.append(f"{row['table']} row {row['id']} (workspace {where})")
        return bad


class DatabaseStateStore(AsyncOAuthStateStore):
    """OAuth states in the database, each ``nonce.signature`` with HMAC-SHA256 under SLACK_STATE_SECRET."""

    def __init__(self, db: Database, secret: str, *, expiration_seconds: int = 600) -> None:
        self.states = OAuthStates(db)
        self.secret = secret.encode()
        self.expiration_seconds = expiration_seconds

    @property
    def logger(self) -> logging.Logger:
        return log

    def _sign(self, nonce: str) -> str:
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        nonce = secrets.token_urlsafe(24)
        await self.states.issue(nonce, time.time() + self.expiration_seconds)
        return f"{nonce}.{self._sign(nonce)}"

    async def async_consume(self, state: str) -> bool:
        nonce, _, signature = state.rpartition(".")
        if not nonce or not hmac.compare_digest(signature, self._sign(nonce)):
            log.warning("refused an OAuth state with a bad signature")
            return False
        return await self.states.consume(nonce)
