"""Crash recovery with real processes: a worker is SIGKILLed (or exits at a fault-injection point) mid-run;
another engine or process continues the run, and every step that had finished ran exactly once.

The worker is ``tests/helpers/crash_worker.py``; its steps log each execution to a file, so counts are
exact across processes. A step in flight at the kill runs again (at-least-once for the step in flight,
exactly-once for committed ones).
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import Database
from storage.runs import RunStore
from tests.helpers import eventually
from tests.helpers.crash_worker import HOLD, build_workflows, executions
from tests.helpers.processes import Spawn, spawner


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    async with spawner("tests.helpers.crash_worker", tmp_path) as start:
        yield start


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


async def stored_run(url: str, run_id: str):
    db = Database(url)
    try:
        await db.open()
        return await RunStore(db).get_run(run_id)
    finally:
        await db.close()


async def test_a_run_killed_while_a_step_is_in_flight_is_recovered_by_a_new_engine(db_url, workdir, spawn, engine):
    (workdir / HOLD).touch()  # the "hold" step waits while this file exists
    worker = await spawn("start", db_url, str(workdir), "three-steps")
    run_id = await worker.line()
    await eventually(lambda: executions(workdir)["hold"] == 1, timeout=30)

    assert await worker.kill() == -signal.SIGKILL
    dead = await stored_run(db_url, run_id)
    assert dead.status == "running" and f":{worker.proc.pid}:" in dead.owner

    (workdir / HOLD).unlink()
    e = engine(*build_workflows(workdir))
    await e.recover()
    result = await e.handle(run_id).result(timeout=15)

    assert result.status == "success"
    assert result.output == {"n": 25}  # (1 + 1) * 10 + 5
    # "a" had committed: never again. "hold" was in flight at the kill: it ran again. "c" once.
    assert executions(workdir) == Counter({"a": 1, "hold": 2, "c": 1})
    details = await e.details(run_id)
    [recovered] = [ev for ev in details.events if ev.type == "run.recovered"]
    assert recovered.data["previous_owner"] == dead.owner
    assert [s.path for s in details.steps] == ["a", "hold", "c"]
    assert [s.attempts for s in details.steps] == [1, 1, 1]


async def test_a_crash_right_after_a_step_commit_never_repeats_that_step(db_url, workdir, spawn, engine):
    worker = await spawn("start", db_url, str(workdir), "three-steps", env={"THREADFLOW_CRASH_AT": "after_step_commit:hold"})
    run_id = await worker.line()

    assert await worker.exit_code() == 137  # it died exactly at the injection point
    assert executions(workdir) == Counter({"a": 1, "hold": 1})

    e = engine(*build_workflows(workdir))
    await e.recover()
    result = await e.handle(run_id).result(timeout=15)

    assert result.status == "success" and result.output == {"n": 25}
    assert executions(workdir) == Counter({"a": 1, "hold": 1, "c": 1})


async def test_a_crash_inside_foreach_resumes_at_the_next_item(db_url, workdir, spawn, engine):
    worker = await spawn("start", db_url, str(workdir), "each", env={"THREADFLOW_CRASH_AT": "after_step_commit:item[1]"})
    run_id = await worker.line()
    assert await worker.exit_code() == 137
    assert executions(workdir) == Counter({"a": 1, "item[0]": 1, "item[1]": 1})

    e = engine(*build_workflows(workdir))
    await e.recover()
    result = await e.handle(run_id).result(timeout=15)

    assert result.status == "success"
    assert result.output == [{"n": 0}, {"n": 2}, {"n": 4}, {"n": 6}]  # input 3, "a" makes it 4 items
    assert executions(workdir) == Counter({"a": 1, "item[0]": 1, "item[1]": 1, "item[2]": 1, "item[3]": 1})


async def test_another_process_recovers_the_run(db_url, workdir, spawn):
    (workdir / HOLD).touch()
    worker = await spawn("start", db_url, str(workdir), "three-steps")
    run_id = await worker.line()
    await eventually(lambda: executions(workdir)["hold"] == 1, timeout=30)
    await worker.kill()
    (workdir / HOLD).unlink()

    rescuer = await spawn("recover", db_url, str(workdir), run_id)
    result = json.loads(await rescuer.line())

    assert await rescuer.exit_code() == 0
    assert result["status"] == "success" and result["output"] == {"n": 25}
    assert executions(workdir) == Counter({"a": 1, "hold": 2, "c": 1})


async def test_a_run_held_by_a_process_on_another_host_is_taken_over_when_its_lease_runs_out(
    db_url, workdir, spawn, engine
):
    (workdir / HOLD).touch()
    # An owner on another host: its pid means nothing here, so only the lease can tell it is gone.
    worker = await spawn("start", db_url, str(workdir), "three-steps", "--owner", "elsewhere:1:w1", "--lease", "1.5")
    run_id = await worker.line()
    await eventually(lambda: executions(workdir)["hold"] == 1, timeout=30)
    await worker.kill()
    lease_ran_out_at = (await stored_run(db_url, run_id)).lease_expires_at
    (workdir / HOLD).unlink()

    e = engine(*build_workflows(workdir))
    assert await e.recover() == []  # the lease is still valid: nobody may take the run yet
    assert (await e.get_run(run_id)).owner == "elsewhere:1:w1"

    result = await e.handle(run_id).result(timeout=15)

    assert result.status == "success" and result.output == {"n": 25}
    assert executions(workdir) == Counter({"a": 1, "hold": 2, "c": 1})
    steps = {s.path: s for s in (await e.details(run_id)).steps}
    assert steps["hold"].started_at >= lease_ran_out_at


async def test_a_cleanly_closed_engine_hands_its_runs_to_the_next_one(engine, workdir):
    (workdir / HOLD).touch()
    first = engine(*build_workflows(workdir))
    handle = await first.start("three-steps", {"n": 1})
    await eventually(lambda: executions(workdir)["hold"] == 1)

    await first.close()  # cancels the in-flight step and releases the run at once (no lease wait)
    assert (await stored_run(first.db.url, handle.run_id)).status == "pending"

    (workdir / HOLD).unlink()
    second = engine(*build_workflows(workdir))
    started = time.monotonic()
    result = await second.handle(handle.run_id).result(timeout=10)

    assert result.status == "success" and result.output == {"n": 25}
    assert time.monotonic() - started < 1.5
    assert executions(workdir) == Counter({"a": 1, "hold": 2, "c": 1})
    types = [ev.type for ev in (await second.details(handle.run_id)).events]
    assert types.index("run.released") < types.index("run.finished")


async def test_fault_injection_points_are_called_with_where_the_run_is(engine, workdir):
    calls = []
    e = engine(*build_workflows(workdir))
    e.faults["after_step_commit"] = lambda **info: calls.append(info)

    result = await (await e.start("three-steps", {"n": 1})).result(timeout=5)

    assert result.status == "success"
    assert calls == [
        {"point": "after_step_commit", "run_id": result.run_id, "path": path} for path in ("a", "hold", "c")
    ]
