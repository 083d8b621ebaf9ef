"""Start-up and hot-path choices of storage: ``synchronous_commit`` in a PostgreSQL URL, the schema-at-head
shortcut that skips alembic, and JSON columns through orjson."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from storage import Database, DatabaseURLError, jsoncodec
from storage.errors import DatabaseSettingError
from storage.schema_head import head_revision


async def test_synchronous_commit_in_the_url_reaches_every_connection(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("synchronous_commit is a PostgreSQL setting")
    db = Database(db_url + ("&" if "?" in db_url else "?") + "synchronous_commit=off")
    await db.open()
    try:
        setting = await db.read(lambda conn: conn.execute(text("SHOW synchronous_commit")))
        assert setting.scalar() == "off"

        async def write(conn: Any) -> Any:
            return (await conn.execute(text("SHOW synchronous_commit"))).scalar()

        assert await db.write(write) == "off"
    finally:
        await db.close()


def test_a_bad_synchronous_commit_is_refused_with_the_values_to_use() -> None:
    with pytest.raises(DatabaseURLError, match="synchronous_commit='sometimes'.*on, off, local"):
        Database("postgresql+asyncpg://postgres@127.0.0.1/test?synchronous_commit=sometimes")


@pytest.mark.parametrize(("name", "value", "wanted"), [
    ("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", "30s", "a whole number of milliseconds"),
    ("THREADFLOW_SQLITE_SYNCHRONOUS", "FUL", "one of OFF, NORMAL, FULL, EXTRA"),
])
async def test_a_malformed_sqlite_setting_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             name: str, value: str, wanted: str) -> None:
    """Not a ValueError from ``int()``, nor a typo of FULL silently running with NORMAL."""
    monkeypatch.setenv(name, value)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(DatabaseSettingError, match=f"{name} must be {wanted}.*; got '{value}'"):
        await db.open()
    await db.close()


@pytest.mark.parametrize("value", ["30s", "-1", "nan"])
async def test_a_malformed_command_timeout_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """``THREADFLOW_DB_COMMAND_TIMEOUT`` (PostgreSQL): refused when the database opens, before any connection."""
    monkeypatch.setenv("THREADFLOW_DB_COMMAND_TIMEOUT", value)
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(DatabaseSettingError, match=f"THREADFLOW_DB_COMMAND_TIMEOUT must be a number of seconds.*; "
                                                   f"got '{value}'"):
        await db.open()
    await db.close()


def test_the_head_revision_is_read_from_the_migration_files() -> None:
    from alembic.script import ScriptDirectory

    from storage.migrations import alembic_config

    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_a_database_behind_head_is_still_upgraded(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command

    from storage.migrations import alembic_config

    # A file an older threadflow wrote: the schema one migration behind head.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head-1")
    engine.dispose()
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    await db.open()
    await db.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]


def test_json_columns_round_trip_like_the_standard_library() -> None:
    value = {"text": "ünïcode ✓", "n": [1, 2.5, None, True], "nested": {"k": {"deeper": []}}, "big": 2**70}
    assert json.loads(jsoncodec.dumps(value)) == value  # 2**70 is beyond orjson: json writes it
    assert jsoncodec.loads(jsoncodec.dumps(value)) == value
    assert jsoncodec.dumps({1: "a"}) == '{"1":"a"}'  # keys become strings, as json.dumps makes them
    assert math.isnan(jsoncodec.loads("NaN"))  # rows json.dumps wrote before still read
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsoncodec.dumps({"x": object()})  # what neither can store fails as json says


async def test_a_new_sqlite_file_has_small_pages_and_an_older_file_keeps_its_own(tmp_path: Path) -> None:
    from storage.backends import PAGE_SIZE

    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE made_by_an_older_version (x)")  # SQLite's default page size, 4096
    conn.close()
    for path in (tmp_path / "new.db", old):
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.open()
        await db.close()

    def page_size(path: Path) -> int:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("PRAGMA page_size").fetchone()[0])

    assert PAGE_SIZE == 2048 and page_size(tmp_path / "new.db") == 2048
    assert page_size(old) == 4096  # a WAL file's page size cannot change: it is left alone, and it works
