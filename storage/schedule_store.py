"""Schedules: cron rows that the dispatcher's scheduler fires (see ``workflows/schedules.py``).

Firing a due time is a compare-and-set on ``next_at``: of several replicas that see the same due row, only
the one whose ``UPDATE ... WHERE id = ? AND next_at = <the value it read>`` matches a row fires it. That is
what makes a due time fire once with any number of processes, with no lock held while the run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database, knowing_retries
from .tables import schedules


class ScheduleRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    workflow_id: str
    cron: str
    timezone: str = "UTC"
    input: Any = None
    team_id: str | None = None
    channel_id: str | None = None
    created_by: str | None = None
    next_at: float
    last_fired_at: float | None = None
    created_at: float
    #: The Enterprise Grid org of ``team_id`` (None outside Grid).
    enterprise_id: str | None = None


class ScheduleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, record: ScheduleRecord) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(insert(schedules).values(**record.model_dump()))

        await self.db.write(op)

    async def get(self, schedule_id: str) -> ScheduleRecord | None:
        async def op(conn: AsyncConnection) -> ScheduleRecord | None:
            row = (await conn.execute(select(schedules).where(schedules.c.id == schedule_id))).mappings().first()
            return ScheduleRecord.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def list_schedules(self, *, team_id: str | None = None) -> list[ScheduleRecord]:
        """Every schedule (of ``team_id`` and those made outside Slack, when given), soonest first."""

        async def op(conn: AsyncConnection) -> list[ScheduleRecord]:
            q = select(schedules).order_by(schedules.c.next_at, schedules.c.id)
            if team_id is not None:
                q = q.where(or_(schedules.c.team_id == team_id, schedules.c.team_id.is_(None)))
            return [ScheduleRecord.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def remove(self, schedule_id: str) -> bool:
        async def op(conn: AsyncConnection) -> bool:
            res = await conn.execute(delete(schedules).where(schedules.c.id == schedule_id))
            return bool(res.rowcount)

        return await self.db.write(op)

    async def due(self, now: float, limit: int = 100, *, workflow_ids: Sequence[str] | None = None) -> list[ScheduleRecord]:
        """Schedules due at ``now``, the longest due first; ``workflow_ids``: only those of these workflows (a schedule
        whose workflow no process registers any more would otherwise stay first, and hide the others past ``limit``)."""

        async def op(conn: AsyncConnection) -> list[ScheduleRecord]:
            q = select(schedules).where(schedules.c.next_at <= now)
            if workflow_ids is not None:
                q = q.where(schedules.c.workflow_id.in_(list(workflow_ids)))
            q = q.order_by(schedules.c.next_at).limit(limit)
            return [ScheduleRecord.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def next_due_at(self, *, workflow_ids: Sequence[str] | None = None) -> float | None:
        """The earliest due time (of the schedules of ``workflow_ids``, if given)."""

        async def op(conn: AsyncConnection) -> float | None:
            q = select(func.min(schedules.c.next_at))
            if workflow_ids is not None:
                q = q.where(schedules.c.workflow_id.in_(list(workflow_ids)))
            value = (await conn.execute(q)).scalar_one_or_none()
            return float(value) if value is not None else None

        return await self.db.read(op)

    async def advance(self, schedule_id: str, expected_next_at: float, new_next_at: float, fired_at: float) -> bool:
        """Claim the due time ``expected_next_at``: True for exactly one caller, False if another took it."""

        async def op(conn: AsyncConnection, retried: bool) -> bool:
            res = await conn.execute(
                update(schedules)
                .where(schedules.c.id == schedule_id, schedules.c.next_at == expected_next_at)
                .values(next_at=new_next_at, last_fired_at=fired_at)
            )
            if res.rowcount:
                return True
            if not retried:
                return False  # another replica claimed it
            # Tried again after a failure: this very claim, committed by an attempt whose outcome was not known (a
            # dropped connection)? (Not on a first attempt: replicas ticking with one clock write the same values.)
            found = (await conn.execute(
                select(schedules.c.next_at, schedules.c.last_fired_at).where(schedules.c.id == schedule_id)
            )).first()
            return found is not None and found[0] == new_next_at and found[1] == fired_at

        return await self.db.write(knowing_retries(op))
