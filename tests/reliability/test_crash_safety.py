"""SIGKILL during a resume and during a sleep, with real processes; then every run completes and no step that had
finished runs again.

``tests/workflows/test_crash_recovery.py`` already kills a process during a step (and at a step commit, inside
foreach, on another host); these are the other two places a process can die: while it resumes a run, and while
a run it holds (or has settled) sleeps. Step executions are counted in a log file the worker processes append to.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import EngineFactory
from tests.helpers import eventually
from tests.reliability.conftest import Spawn
from tests.reliability.worker import HOLD, HOLD_GATE, SHORT_NAP, build_workflows, executions


async def suspended_run(make: EngineFactory, workdir: Path, workflow: str) -> str:
    """Start ``workflow`` in this process and return its id once it waits at ``gate``; then stop executing here."""
    e = make(*build_workflows(workdir))
    result = await (await e.start(workflow, {"n": 1})).result(timeout=10)
    assert result.status == "suspended" and [s.path for s in result.suspended] == ["gate"]
    await e.close()  # from now on only the worker processes (and the engines made below) touch the run
    return result.run_id


async def resumes(make: EngineFactory, workdir: Path, run_id: str) -> list[dict[str, object]]:
    observer = make(*build_workflows(workdir), execute=False)
    return [ev.data for ev in (await observer.details(run_id)).events if ev.type == "run.resumed"]


async def test_a_process_killed_before_its_resume_commits_leaves_the_run_suspended(
    db_url: str, workdir: Path, spawn: Spawn, engine: EngineFactory
) -> None:
    run_id = await suspended_run(engine, workdir, "gated")

    worker = await spawn("resume", db_url, str(workdir), run_id, "U0CRASHED",
                         env={"THREADFLOW_CRASH_AT": "before_resume_commit"})
    assert await worker.exit_code() == 137  # it died exactly at the injection point, before printing "resumed"

    e = engine(*build_workflows(workdir))
    assert (await e.get_run(run_id)).status == "suspended"
    [susp] = (await e.details(run_id)).suspensions
    assert susp.status == "open" and susp.resolved_by is None
    assert await resumes(engine, workdir, run_id) == []
    assert executions(workdir) == Counter({"a": 1, "gate:asked": 1})

    # The decision was never recorded, so it can be made again, and the run completes.
    result = await (await e.resume(run_id, step="gate", data={"approved": True}, by="U0LATER")).result(timeout=10)
    assert result.status == "success" and result.output == {"n": 25}  # (1 + 1) * 10 + 5
    # "a" finished before the crash: never again. The gate step body runs again once resumed (by design).
    assert executions(workdir) == Counter({"a": 1, "gate:asked": 2, "gate:decided": 1, "c": 1})
    assert [r["by"] for r in await resumes(engine, workdir, run_id)] == ["U0LATER"]


@pytest.mark.parametrize(("in_flight", "expected"), [
    # The resumed step itself was in flight: it runs again with the recorded decision.
    ("gate:decided", {"a": 1, "gate:asked": 3, "gate:decided": 2, "hold": 1, "c": 1}),
    # The resumed step had finished, the next one was in flight: only that one runs again.
    ("hold", {"a": 1, "gate:asked": 2, "gate:decided": 1, "hold": 2, "c": 1}),
], ids=["resumed-step-in-flight", "next-step-in-flight"])
async def test_a_process_killed_after_its_resume_committed_never_loses_or_repeats_the_decision(
    db_url: str, workdir: Path, spawn: Spawn, engine: EngineFactory, in_flight: str, expected: dict[str, int]
) -> None:
    run_id = await suspended_run(engine, workdir, "gated-hold")
    hold = workdir / (HOLD_GATE if in_flight == "gate:decided" else HOLD)
    hold.touch()

    worker = await spawn("resume", db_url, str(workdir), run_id, "U0FIRST")
    assert await worker.line() == "resumed"
    await eventually(lambda: executions(workdir)[in_flight] == 1, timeout=20)
    assert await worker.kill() == -signal.SIGKILL
    assert [r["by"] for r in await resumes(engine, workdir, run_id)] == ["U0FIRST"]

    hold.unlink()
    e = engine(*build_workflows(workdir))
    await e.recover()
    result = await e.handle(run_id).result(timeout=15)

    assert result.status == "success" and result.output == {"n": 125}  # (1 + 1) * 10 + 100 + 5
    assert executions(workdir) == Counter(expected)
    # The decision was committed once and is neither lost nor made twice.
    assert [r["by"] for r in await resumes(engine, workdir, run_id)] == ["U0FIRST"]
    details = await e.details(run_id)
    assert [s.path for s in details.steps] == ["a", "gate", "hold", "c"]
    assert [(s.status, s.resolved_by) for s in details.suspensions] == [("resolved", "U0FIRST")]
    assert sum(ev.type == "run.recovered" for ev in details.events) == 1


@pytest.mark.parametrize("workflow", ["nap-long", "nap-short"])
async def test_a_process_killed_while_its_run_sleeps_wakes_the_run_once_after_restart(
    db_url: str, workdir: Path, spawn: Spawn, engine: EngineFactory, workflow: str
) -> None:
    """nap-long halts the run ("waiting", settled in the database); nap-short is slept inside the process that
    holds the run ("running"). Either way the wake time is committed first, and a restart after it continues."""
    observer = engine(*build_workflows(workdir), execute=False)
    worker = await spawn("start", db_url, str(workdir), workflow)
    run_id = await worker.line()

    async def wake_time() -> float | None:
        naps = [s for s in (await observer.details(run_id)).steps if s.path == "nap"]
        return float(naps[0].output["until"]) if naps else None

    until = await eventually(wake_time, timeout=20, every=0.005)
    if workflow == "nap-long":
        await eventually(lambda: _status_is(observer, run_id, "waiting"), timeout=5)
    assert await worker.kill() == -signal.SIGKILL
    assert executions(workdir) == Counter({"a": 1})  # killed during the sleep, before "c"
    dead = await observer.get_run(run_id)
    assert dead.status == ("waiting" if workflow == "nap-long" else "running")

    await asyncio.sleep(max(0.0, until - time.time()) + 0.1)  # restarted after the wake time
    restarted = time.time()
    # Two engines come up at once: the run must still wake exactly once.
    first, second = engine(*build_workflows(workdir)), engine(*build_workflows(workdir))
    await asyncio.gather(first.open(), second.open())
    result = await first.handle(run_id).result(timeout=15)

    assert result.status == "success" and result.output == {"n": 7}  # 1 + 1 + 5
    assert executions(workdir) == Counter({"a": 1, "c": 1})
    details = await first.details(run_id)
    steps = {s.path: s for s in details.steps}
    assert list(steps) == ["a", "nap", "c"] and float(steps["nap"].output["until"]) == until
    # It woke at the committed time: not early, and not a whole nap after the restart.
    assert until <= steps["c"].started_at < restarted + SHORT_NAP
    assert sum(ev.type == "run.waiting" for ev in details.events) == (1 if workflow == "nap-long" else 0)
    assert sum(ev.type == "step.started" and ev.path == "c" for ev in details.events) == 1


async def _status_is(e, run_id: str, status: str) -> bool:
    return (await e.get_run(run_id)).status == status
