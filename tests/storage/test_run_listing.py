"""The read-only listing ``threadflow runs`` uses: the same runs as ``RunStore.list_runs`` on a SQLite file,
and None (the caller opens the Database) wherever it cannot answer exactly as the Database would."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import JSON

from storage import Database
from storage.records import NewEvent, RunRecord
from storage.run_listing import JSON_COLUMNS, RUN_COLUMNS, list_runs_readonly, sqlite_file
from storage.runs import RunStore
from storage.tables import runs

FILTERS = [
    {}, {"limit": 3}, {"limit": 0}, {"status": "success"}, {"status": "suspended"}, {"workflow_id": "deploy"},
    {"status": "failed", "workflow_id": "deploy"}, {"status": "success", "workflow_id": "greet", "limit": 2},
    {"workflow_id": "nobody"}, {"status": ""},
]


async def add_runs(db: Database) -> None:
    """Runs that exercise every column kind: JSON values (nested, a string, null), NULLs, ties in created_at."""
    store = RunStore(db)
    base = time.time() - 100
    for i in range(12):
        created = base + i // 3  # three runs share each created_at: the order falls back to the id
        status = ("success", "failed", "suspended", "running")[i % 4]
        await store.create_run({
            "id": f"run{(i * 7) % 12:02d}", "workflow_id": ("greet", "deploy")[i % 2], "status": status,
            "input": {"n": i, "nested": {"list": [1, 2.5, None, "é"]}} if i % 3 else "plain text",
            "output": {"ok": True} if status == "success" else None,
            "error": {"message": "boom", "type": "ValueError"} if status == "failed" else None,
            "started_by": f"U{i}" if i % 2 else None, "thread_id": "T1" if i == 4 else None,
            "workflow_version": "2" if i % 5 == 0 else None, "workflow_fingerprint": f"{i:064x}" if i % 3 else None,
            "created_at": created, "updated_at": created + 0.5, "ready_at": created,
            "finished_at": created + 1 if status in ("success", "failed") else None,
        }, [NewEvent(type="run.started")])


def test_the_columns_are_the_runs_table_s() -> None:
    assert RUN_COLUMNS == tuple(c.name for c in runs.c)
    assert JSON_COLUMNS == {c.name for c in runs.c if isinstance(c.type, JSON)}
    assert set(RUN_COLUMNS) == set(RunRecord.model_fields)


async def test_it_returns_what_the_run_store_returns(db: Database) -> None:
    if not db.is_sqlite:
        assert list_runs_readonly(db.url) is None  # PostgreSQL: the caller opens the Database
        return
    await add_runs(db)
    store = RunStore(db)
    for filters in FILTERS:
        expected = await store.list_runs(**filters)  # type: ignore[arg-type]
        assert list_runs_readonly(db.url, **filters) == expected, filters  # type: ignore[arg-type]
    everything = list_runs_readonly(db.url, limit=100)
    assert everything is not None and len(everything) == 12
    assert [(-r.created_at, r.id) for r in everything] == sorted((-r.created_at, r.id) for r in everything)
    assert [r.id for r in everything[:3]] == ["run03", "run05", "run10"]  # the newest created_at; ties by id
    by_id = {r.id: r for r in everything}
    assert by_id["run03"].input == "plain text" and by_id["run03"].error == {"message": "boom", "type": "ValueError"}
    assert by_id["run05"].input == {"n": 11, "nested": {"list": [1, 2.5, None, "é"]}} and by_id["run05"].output is None


async def test_plain_sqlite_urls_name_a_file_and_other_urls_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:///x.db") == str(tmp_path / "x.db")
    assert sqlite_file("sqlite+aiosqlite:////data/tf%20db.sqlite") == "/data/tf db.sqlite"
    assert sqlite_file("sqlite+pysqlite:///rel/a.db") == str(tmp_path / "rel" / "a.db")
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///x.db?mode=ro", "sqlite+pysqlcipher:///x.db",
                "postgresql+asyncpg://u@h/db", "mysql://u@h/db", "not a url"):
        assert sqlite_file(url) is None, url


async def test_what_it_cannot_answer_is_left_to_the_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    assert list_runs_readonly(f"sqlite:///{missing}") is None
    assert not missing.exists()  # nothing created: the Database creates and migrates it

    unrelated = tmp_path / "unrelated.db"  # a SQLite file without threadflow's schema
    with sqlite3.connect(unrelated) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
    assert list_runs_readonly(f"sqlite:///{unrelated}") is None

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    assert list_runs_readonly(f"sqlite:///{garbage}") is None

    assert list_runs_readonly(f"sqlite:///{tmp_path}") is None  # a directory
    assert list_runs_readonly("sqlite:///:memory:") is None


async def test_a_schema_behind_head_is_left_to_the_database(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    await db.open()
    await db.close()
    path = sqlite_file(sqlite_url)
    assert path is not None and list_runs_readonly(sqlite_url) == []
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'older'")
    assert list_runs_readonly(sqlite_url) is None
