"""Is the schema already at head? Answered without importing alembic (about 0.2 s of a CLI command's start).

The head revision is read from the migration files themselves (their ``revision`` / ``down_revision``
lines), so a new migration needs no constant kept in step. Anything unexpected (a file whose revision is
not a plain string, two heads, a database without ``alembic_version``) answers "not known to be current",
and alembic then runs as before: this is a shortcut, never a second source of truth.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: ``threadflow runs`` asks without importing SQLAlchemy (see run_listing.py)
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

VERSIONS = Path(__file__).parent / "migrations" / "versions"
_REVISION = re.compile(r'^revision(?:\s*:\s*str)?\s*=\s*"([^"]+)"\s*$', re.M)
_DOWN = re.compile(r'^down_revision(?:\s*:\s*[^=]+)?\s*=\s*(None|"([^"]+)")\s*$', re.M)


@functools.cache
def head_revision() -> str | None:
    """The one revision no migration builds on, or None when the files do not say it plainly."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision, down = _REVISION.findall(source), _DOWN.findall(source)
        if len(revision) != 1 or len(down) != 1:
            return None
        revisions.add(revision[0])
        if down[0][1]:
            parents.add(down[0][1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


# Plain SQL run with ``exec_driver_sql`` (no bound parameters), so the same text serves every caller.
_HAS_TABLE_SQLITE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
_HAS_TABLE_POSTGRES = "SELECT to_regclass('alembic_version')"
_CURRENT = "SELECT version_num FROM alembic_version"


def _at_head(versions: list[str]) -> bool:
    head = head_revision()
    return head is not None and versions == [head]


def is_current_sync(conn: Connection) -> bool:
    """SQLite: True when ``alembic_version`` names the head revision and nothing else."""
    if head_revision() is None or conn.exec_driver_sql(_HAS_TABLE_SQLITE).first() is None:
        return False
    return _at_head([row[0] for row in conn.exec_driver_sql(_CURRENT)])


def is_current_sqlite3(conn: sqlite3.Connection) -> bool:
    """The same question on a plain ``sqlite3`` connection (a read-only listing opens no SQLAlchemy engine)."""
    if head_revision() is None or conn.execute(_HAS_TABLE_SQLITE).fetchone() is None:
        return False
    return _at_head([row[0] for row in conn.execute(_CURRENT)])


async def is_current(conn: AsyncConnection) -> bool:
    """PostgreSQL: the same question, asked without an error on a database that has no schema yet."""
    if head_revision() is None or (await conn.exec_driver_sql(_HAS_TABLE_POSTGRES)).scalar() is None:
        return False
    return _at_head([row[0] for row in await conn.exec_driver_sql(_CURRENT)])
