"""Is the schema already at head? Answered without importing alembic (about 0.2 s of a CLI command's start).

The head revision is read from the migration files themselves (their ``revision`` / ``down_revision``
lines), so a new migration needs no constant kept in step. Anything unexpected (a file whose revision is
not a plain string, two heads, a database without ``alembic_version``) answers "not known to be current",
and alembic then runs as before: this is a shortcut, never a second source of truth.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

if TYPE_CHECKING:  # (not imported at run time: a read-only command checks the schema without the async engine)
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


_CURRENT_SQLITE = text("SELECT version_num FROM alembic_version")


def is_current_sync(conn: Connection) -> bool:
    """SQLite: True when ``alembic_version`` names the head revision and nothing else."""
    head = head_revision()
    if head is None:
        return False
    exists = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'")).first()
    if exists is None:
        return False
    return [row[0] for row in conn.execute(_CURRENT_SQLITE)] == [head]


async def is_current(conn: AsyncConnection) -> bool:
    """PostgreSQL: the same question, asked without an error on a database that has no schema yet."""
    head = head_revision()
    if head is None:
        return False
    if (await conn.execute(text("SELECT to_regclass('alembic_version')"))).scalar() is None:
        return False
    return [row[0] for row in await conn.execute(_CURRENT_SQLITE)] == [head]
