"""Many runs at once on one SQLite file, from two processes: no "database is locked", every run succeeds.

In-process concurrency is covered elsewhere (100 runs on one engine in test_engine_basics, 50 concurrent resumes
in test_engine_suspend, two Database handles on one file in test_database); here two real processes, each with its
own engine, start 100 three-step runs at the same moment on one database file.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from storage import Database
from tests.reliability.conftest import Spawn
from tests.reliability.worker import build_workflows, executions_by_run
from workflows import Engine


async def test_two_processes_each_starting_100_runs_on_one_sqlite_file_all_succeed(
    sqlite_url: str, workdir: Path, spawn: Spawn
) -> None:
    # Migrate first, so both processes start on a ready schema (the race under test is the runs', not alembic's).
    setup = Database(sqlite_url)
    await setup.open()
    await setup.close()
    start_at = time.time() + 2.0  # past both interpreters' start-up: the runs begin at the same moment
    workers = [await spawn("many", sqlite_url, str(workdir), "100", str(start_at)) for _ in range(2)]

    summaries = [json.loads(await w.line(timeout=90)) for w in workers]
    codes = [await w.exit_code() for w in workers]

    errors = "\n".join(w.errors() for w in workers)
    assert codes == [0, 0], errors[-3000:]
    assert "database is locked" not in errors and "OperationalError" not in errors, errors[-3000:]
    for summary in summaries:
        assert summary["statuses"] == {"success": 100}, summary["errors"][:3]
        assert summary["outputs"] == [8] * 100  # n + 1 + 2 + 5 for every run
    ids = [run_id for summary in summaries for run_id in summary["ids"]]
    assert len(set(ids)) == 200
    # Every step of every run ran exactly once, in one of the two processes.
    counts = executions_by_run(workdir)
    assert set(counts) == {(run_id, path) for run_id in ids for path in ("a", "b", "c")}
    assert set(counts.values()) == {1}
    pids = {line.split()[2] for line in (workdir / "executions.log").read_text().splitlines()}
    assert len(pids) == 2

    check = Engine.from_url(sqlite_url, execute=False)
    check.register(*build_workflows(workdir))
    try:
        assert await check.store.count_runs("success") == 200
        assert Counter(r.status for r in await check.list_runs(limit=500)) == Counter({"success": 200})
    finally:
        await check.close()
