"""The encrypted installation store and the OAuth state store, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from cryptography.fernet import Fernet
from slack_sdk.oauth.installation_store.models.installation import Installation
from sqlalchemy import select

from bot.installs import (
    DatabaseStateStore,
    EncryptedInstallationStore,
    EncryptionKeyError,
    TokenCipher,
    UndecryptableToken,
)
from storage import Database
from storage.tables import slack_bots, slack_installations

KEY = Fernet.generate_key().decode()
CLIENT = "111.222"


def installation(team: str | None, *, enterprise: str | None = None, token: str = "xoxb-secret-1",
                 org_wide: bool = False, expires_in: int | None = None) -> Installation:
    return Installation(app_id="A0APP", enterprise_id=enterprise, team_id=team, user_id="U0ALICE",
                        bot_token=token, bot_id="B0BOT", bot_user_id="U0BOT", bot_scopes="commands,chat:write",
                        bot_refresh_token="xoxe-1-refresh" if expires_in else None,
                        bot_token_expires_in=expires_in, is_enterprise_install=org_wide,
                        user_token="xoxp-user-secret", user_scopes="")


async def raw_rows(db: Database, table: object) -> list[dict[str, object]]:
    async def op(conn):  # type: ignore[no-untyped-def]
        return [dict(r) for r in (await conn.execute(select(table))).mappings()]  # type: ignore[call-overload]

    return await db.read(op)


async def test_tokens_are_stored_encrypted_and_read_back_in_the_clear(db: Database) -> None:
    store = EncryptedInstallationStore(db, CLIENT, TokenCipher(KEY))
    await store.async_save(installation("T0TEAM", expires_in=3600))
    for table in (slack_bots, slack_installations):
        (row,) = await raw_rows(db, table)
        for column in ("bot_token", "bot_refresh_token"):
            assert row[column] and "xox" not in str(row[column])
    (inst,) = await raw_rows(db, slack_installations)
    assert "xoxp" not in str(inst["user_token"])
    bot = await store.async_find_bot(enterprise_id=None, team_id="T0TEAM")
    assert bot is not None and bot.bot_token == "xoxb-secret-1" and bot.bot_refresh_token == "xoxe-1-refresh"
    assert bot.bot_token_expires_at is not None and abs(bot.bot_token_expires_at - (time.time() + 3600)) < 5
    found = await store.async_find_installation(enterprise_id=None, team_id="T0TEAM")
    assert found is not None and found.user_token == "xoxp-user-secret"
    # Another key cannot read them; a key list with the old key after a new one can (key rotation).
    other = EncryptedInstallationStore(db, CLIENT, TokenCipher(Fernet.generate_key().decode()))
    with pytest.raises(UndecryptableToken):
        await other.async_find_bot(enterprise_id=None, team_id="T0TEAM")
    assert await other.undecryptable()
    rotated = EncryptedInstallationStore(db, CLIENT, TokenCipher(f"{Fernet.generate_key().decode()},{KEY}"))
    assert (await rotated.async_find_bot(enterprise_id=None, team_id="T0TEAM")).bot_token == "xoxb-secret-1"  # type: ignore[union-attr]


async def test_the_latest_bot_wins_and_deleting_a_workspace_leaves_the_others(db: Database) -> None:
    store = EncryptedInstallationStore(db, CLIENT, TokenCipher(KEY))
    await store.async_save(installation("T0TEAM", token="xoxb-a"))
    await store.async_save(installation("T0OTHER", token="xoxb-b"))
    newer = (await store.async_find_bot(enterprise_id=None, team_id="T0TEAM"))
    assert newer is not None
    newer.bot_token = "xoxb-a-rotated"
    newer.installed_at = time.time() + 1
    await store.async_save_bot(newer)
    assert (await store.async_find_bot(enterprise_id=None, team_id="T0TEAM")).bot_token == "xoxb-a-rotated"  # type: ignore[union-attr]
    await store.async_delete_bot(enterprise_id=None, team_id="T0OTHER")
    await store.async_delete_installation(enterprise_id=None, team_id="T0OTHER")
    assert await store.async_find_bot(enterprise_id=None, team_id="T0OTHER") is None
    assert await store.async_find_installation(enterprise_id=None, team_id="T0OTHER") is None
    assert (await store.async_find_bot(enterprise_id=None, team_id="T0TEAM")) is not None


async def test_an_org_wide_install_is_found_for_the_org(db: Database) -> None:
    store = EncryptedInstallationStore(db, CLIENT, TokenCipher(KEY))
    await store.async_save(installation(None, enterprise="E0ORG", org_wide=True, token="xoxb-org"))
    bot = await store.async_find_bot(enterprise_id="E0ORG", team_id="T0ANY", is_enterprise_install=True)
    assert bot is not None and bot.bot_token == "xoxb-org" and bot.is_enterprise_install
    assert await store.async_find_bot(enterprise_id=None, team_id="T0ANY") is None


async def test_an_oauth_state_is_accepted_once_and_only_with_its_signature(db: Database) -> None:
    states = DatabaseStateStore(db, "state-secret")
    state = await states.async_issue()
    nonce, _, signature = state.rpartition(".")
    assert not await states.async_consume(f"{nonce}.{'0' * len(signature)}")  # forged signature
    assert not await DatabaseStateStore(db, "another-secret").async_consume(state)
    assert await states.async_consume(state)
    assert not await states.async_consume(state)  # used up
    expired = DatabaseStateStore(db, "state-secret", expiration_seconds=-1)
    assert not await expired.async_consume(await expired.async_issue())


@pytest.mark.parametrize("keys", ["", "not-a-key", "  ,  "])
def test_a_missing_or_malformed_key_says_how_to_make_one(keys: str) -> None:
    with pytest.raises(EncryptionKeyError, match="Fernet.generate_key"):
        TokenCipher(keys)
