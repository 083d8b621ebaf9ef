"""``threadflow runs``, run as a real process on SQLite and PostgreSQL: it prints what the run store holds, as
the engine would have it printed; on a SQLite file it starts without the engine's stack (pinned by module
sets, not times); and it stops quietly when its reader goes away."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.render_text import print_runs
from storage import Database
from storage.records import NewEvent
from storage.run_listing import sqlite_file
from storage.runs import RunStore
from tests.helpers.system import ROOT, threadflow

#: What a listing on a SQLite file must not load: the async engine and ORM, PostgreSQL's dialect and driver,
#: migrations, the engine; and SQLAlchemy itself, whose import was half of what was left of the start.
NOT_LOADED = ("sqlalchemy", "sqlalchemy.orm", "sqlalchemy.ext.asyncio", "sqlalchemy.dialects.postgresql", "asyncpg",
              "aiosqlite", "alembic", "workflows.engine", "storage.database")


async def add_runs(db: Database, n: int = 9) -> None:
    store = RunStore(db)
    base = time.time() - 100
    for i in range(n):
        created = base + i // 2  # pairs share a created_at: ordered by id
        await store.create_run({
            "id": f"r{(i * 5) % n:02d}", "workflow_id": ("greet-user", "deploy-app", "approval")[i % 3],
            "status": ("success", "failed", "suspended")[i % 3], "input": {"i": i, "text": "ünïcode"},
            "started_by": f"U{i}" if i % 2 else None, "workflow_version": "3" if i == 4 else None,
            "workflow_fingerprint": f"{i:064x}" if i % 4 else None,
            "created_at": created, "updated_at": created, "ready_at": created,
        }, [NewEvent(type="run.started")])


@pytest.mark.parametrize("args", [(), ("--status", "failed"), ("--workflow", "deploy-app"), ("--limit", "4"),
                                  ("--status", "success", "--workflow", "greet-user", "--limit", "2")])
async def test_runs_prints_what_the_run_store_holds(db: Database, args: tuple[str, ...],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    await add_runs(db)
    options = dict(zip(args[::2], args[1::2], strict=True))
    expected = await RunStore(db).list_runs(status=options.get("--status"), workflow_id=options.get("--workflow"),
                                            limit=int(options.get("--limit", 50)))
    assert expected

    proc = threadflow(db.url, "runs", *args)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    print_runs(expected)
    assert proc.stdout == capsys.readouterr().out
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["RUN", "ID", "WORKFLOW", "VERSION", "STATUS", "STARTED", "BY"]
    assert [line.split()[0] for line in lines[1:]] == [r.id for r in expected]

    listed = json.loads(threadflow(db.url, "runs", "--json", *args).stdout)
    assert listed == [r.model_dump(mode="json", exclude={"owner", "lease_expires_at"}) for r in expected]


async def test_runs_on_an_empty_database_says_so(db: Database) -> None:
    proc = threadflow(db.url, "runs")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "No runs.\n", "")
    assert threadflow(db.url, "runs", "--json").stdout == "[]\n"


async def test_a_run_with_text_cut_in_the_middle_of_an_emoji_is_listed_and_shown(db_url: str,
                                                                                  tmp_path: Path) -> None:
    """Text cut by a UTF-16 length limit (Slack's, JavaScript's) is valid JSON with a lone surrogate
    (``"\\ud83d"``), and such a run is stored and runs fine; but printing it died with UnicodeEncodeError, in
    ``run`` and then in every ``runs --json`` and ``show``: one such run broke the listing of the whole database.
    JSON output carries it as JSON's own escape; text output as a backslash escape."""
    env = {"THREADFLOW_WORKSPACE": str(tmp_path / "workspace")}
    started = threadflow(db_url, "run", "greet-user", "--input", '{"name": "Ada \\ud83d"}', env=env)
    assert started.returncode == 0 and started.stderr == "", started.stderr[-600:]
    run_id = json.loads(started.stdout)["run_id"]

    listed = threadflow(db_url, "runs", "--json")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr[-600:]
    [run] = json.loads(listed.stdout)
    assert (run["id"], run["status"], run["input"]) == (run_id, "success", {"name": "Ada \ud83d"})
    shown = threadflow(db_url, "show", run_id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["run"]["output"] == {"greeting": "Hello, Ada \ud83d!"}
    for text in (threadflow(db_url, "runs"), threadflow(db_url, "show", run_id)):
        assert text.returncode == 0 and text.stderr == "", text.stderr[-600:]
    assert "Hello, Ada \\ud83d!" in text.stdout


@pytest.mark.parametrize("limit", ["-1", "99999999999999999999"])
async def test_a_limit_out_of_range_is_a_usage_error(db: Database, limit: str) -> None:
    """``--limit`` had no bound: on SQLite ``-1`` listed every run, and on PostgreSQL it reached the server
    ("LIMIT must not be negative") and died with a traceback and exit 1."""
    await add_runs(db, 3)
    proc = threadflow(db.url, "runs", "--limit", limit)
    assert "Traceback" not in proc.stderr, proc.stderr[-600:]
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.endswith(f"argument --limit: '{limit}': give a number of runs from 1 to 1000000000\n")


async def seed_file(url: str, n: int) -> None:
    """``n`` runs in the database at ``url``, which is closed again (the CLI opens it on its own)."""
    db = Database(url)
    await db.open()
    try:
        await add_runs(db, n)
    finally:
        await db.close()


def cli_env(url: str) -> dict[str, str]:
    """A CLI process's environment: this database, this checkout, none of the caller's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADFLOW_", "SLACK_", "OPENAI_"))}
    return env | {"THREADFLOW_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}


def _loaded_after_runs(url: str, *args: str) -> tuple[str, list[str]]:
    """``threadflow runs ARGS`` in a fresh interpreter: its output, and which of NOT_LOADED it imported."""
    code = (
        "import sys\n"
        "from bot.cli import main\n"
        f"code = main(['runs', *{list(args)!r}])\n"
        f"print('LOADED', sorted(m for m in {NOT_LOADED!r} if m in sys.modules), code)\n"
    )
    env = cli_env(url)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    out, _, last = proc.stdout.rpartition("LOADED ")
    return out, eval(last.rsplit(" ", 1)[0])  # noqa: S307 (our own print of a list of names)


async def test_runs_on_a_sqlite_file_imports_none_of_the_engine_s_stack(sqlite_url: str) -> None:
    await seed_file(sqlite_url, 3)
    out, loaded = _loaded_after_runs(sqlite_url)
    assert loaded == []
    assert "r00" in out and "r01" in out and "r02" in out
    out, loaded = _loaded_after_runs(sqlite_url, "--status", "suspended", "--json")
    assert loaded == [] and [r["id"] for r in json.loads(out)] == ["r01"]  # (i = 2: id 10 % 3)


async def test_a_sqlite_file_that_needs_the_database_gets_it(tmp_path: Path) -> None:
    """A file that does not exist yet, or whose schema is behind, is opened as before: created and migrated."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    out, loaded = _loaded_after_runs(url)
    assert out == "No runs.\n" and "storage.database" in loaded  # it went through the Database...
    path = sqlite_file(url)
    assert path is not None
    with sqlite3.connect(path) as conn:  # ...which created the schema
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    out, loaded = _loaded_after_runs(url)
    assert out == "No runs.\n" and loaded == []  # and now the listing reads it directly


@pytest.mark.parametrize("url", ["not a url", "mysql://u:secret@db/x",
                                 "postgresql://u@h/db?synchronous_commit=maybe"])
def test_a_bad_database_url_is_still_one_line(url: str) -> None:
    proc = threadflow(url, "runs")
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout)
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "secret" not in proc.stderr


async def test_a_reader_that_goes_away_stops_the_listing_quietly(sqlite_url: str) -> None:
    await seed_file(sqlite_url, 3)
    env = cli_env(sqlite_url)
    read_end, write_end = os.pipe()
    os.close(read_end)  # (`threadflow runs | head -0`: nobody reads what it writes)
    try:
        proc = subprocess.run([sys.executable, "-m", "bot.cli", "runs"], env=env, cwd=ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == ""  # no traceback, no "Exception ignored" at exit
    assert proc.returncode == 141  # as a Unix tool stopped by SIGPIPE: `set -o pipefail` still sees it
