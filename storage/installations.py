"""Rows of slack_sdk's installation store shape (``slack_installations``, ``slack_bots``) and OAuth states.

Storage keeps these rows as given: the token columns hold whatever the bot layer hands over, which is
ciphertext (``bot.installs`` encrypts before saving and decrypts after reading). The queries follow
slack_sdk's ``SQLAlchemyInstallationStore`` (latest row per workspace wins; an org-wide install has no team).
They run through :class:`storage.database.Database` so SQLite keeps its single writer.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, delete, desc, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from .database import Database
from .tables import slack_bots, slack_installations, slack_oauth_states

Row = dict[str, Any]


def _where(table: Any, client_id: str, enterprise_id: str | None, team_id: str | None) -> ColumnElement[bool]:
    c = table.c
    return and_(c.client_id == client_id,
                c.enterprise_id.is_(None) if enterprise_id is None else c.enterprise_id == enterprise_id,
                c.team_id.is_(None) if team_id is None else c.team_id == team_id)


class InstallationRows:
    """Installations of one app (``client_id``) in many workspaces."""

    def __init__(self, db: Database, client_id: str) -> None:
        self.db = db
        self.client_id = client_id

    async def save_installation(self, row: Row) -> None:
        await self._save(slack_installations, row, ("user_id",))

    async def save_bot(self, row: Row) -> None:
        await self._save(slack_bots, row, ())

    async def _save(self, table: Any, row: Row, extra_keys: tuple[str, ...]) -> None:
        values = {k: v for k, v in row.items() if k in table.c}
        values["client_id"] = self.client_id

        async def op(conn: AsyncConnection) -> None:
            where = and_(_where(table, self.client_id, values.get("enterprise_id"), values.get("team_id")),
                         table.c.installed_at == values["installed_at"],
                         *(table.c[k] == values.get(k) for k in extra_keys))
            found = (await conn.execute(select(table.c.id).where(where).limit(1))).scalar_one_or_none()
            if found is None:
                await conn.execute(insert(table).values(**values))
            else:
                await conn.execute(update(table).where(table.c.id == found).values(**values))

        await self.db.write(op)

    async def find_bot(self, enterprise_id: str | None, team_id: str | None) -> Row | None:
        """The latest bot of the workspace (an org-wide install: ``team_id`` None) that still has a token."""

        async def op(conn: AsyncConnection) -> Row | None:
            q = (select(slack_bots).where(_where(slack_bots, self.client_id, enterprise_id, team_id),
                                          slack_bots.c.bot_token.is_not(None))
                 .order_by(desc(slack_bots.c.installed_at)).limit(1))
            row = (await conn.execute(q)).mappings().first()
            return dict(row) if row else None

        return await self.db.read(op)

    async def find_installation(self, enterprise_id: str | None, team_id: str | None,
                                user_id: str | None = None) -> Row | None:
        async def op(conn: AsyncConnection) -> Row | None:
            where = _where(slack_installations, self.client_id, enterprise_id, team_id)
            if user_id is not None:
                where = and_(where, slack_installations.c.user_id == user_id)
            q = select(slack_installations).where(where).order_by(desc(slack_installations.c.installed_at)).limit(1)
            row = (await conn.execute(q)).mappings().first()
            return dict(row) if row else None

        return await self.db.read(op)

    async def delete_bot(self, enterprise_id: str | None, team_id: str | None) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(delete(slack_bots).where(_where(slack_bots, self.client_id, enterprise_id, team_id)))

        await self.db.write(op)

    async def delete_installation(self, enterprise_id: str | None, team_id: str | None,
                                  user_id: str | None = None) -> None:
        async def op(conn: AsyncConnection) -> None:
            where = _where(slack_installations, self.client_id, enterprise_id, team_id)
            if user_id is not None:
                where = and_(where, slack_installations.c.user_id == user_id)
            await conn.execute(delete(slack_installations).where(where))

        await self.db.write(op)

    async def all_token_rows(self) -> list[Row]:
        """Every row holding a token, for ``threadflow doctor`` (can each still be decrypted?)."""

        async def op(conn: AsyncConnection) -> list[Row]:
            out: list[Row] = []
            for table in (slack_bots, slack_installations):
                q = select(table).where(table.c.client_id == self.client_id)
                out += [{"table": table.name, **dict(r)} for r in (await conn.execute(q)).mappings()]
            return out

        return await self.db.read(op)


class OAuthStates:
    """OAuth ``state`` values: issued with an expiry, consumed once."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def issue(self, state: str, expire_at: float) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(delete(slack_oauth_states).where(slack_oauth_states.c.expire_at < time.time()))
            await conn.execute(insert(slack_oauth_states).values(state=state, expire_at=expire_at))

        await self.db.write(op)

    async def consume(self, state: str) -> bool:
        """True once for a state issued and not expired (the delete is the compare-and-set)."""

        async def op(conn: AsyncConnection) -> bool:
            result = await conn.execute(delete(slack_oauth_states).where(
                slack_oauth_states.c.state == state, slack_oauth_states.c.expire_at >= time.time()))
            return bool(result.rowcount)

        return await self.db.write(op)
