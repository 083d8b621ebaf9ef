"""The ``threadflow`` commands that would execute runs (``run``, ``resume``, ``rerun``, ``recover``) beside a
running ``threadflow worker``: the worker lists the versions it executes in ``served_versions``, so a command
queues the run for it and waits, instead of executing it in its own process, racing the worker's dispatcher and
handing back a half-done step when it stops waiting (which then ran again). With no live process they execute
the run themselves, as before.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EngineFactory
from tests.helpers import eventually, held_versions
from tests.helpers.system import threadflow
from tests.helpers.versioned_flows import V1
from tests.reliability.conftest import StartWorker
from tests.reliability.faulty_flows import HOLD, WORKFLOWS, executions

VERSIONED = "tests.helpers.versioned_flows:V1"


async def cli(db_url: str, tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(threadflow, db_url, *args, cwd=tmp_path, env={
        "THREADFLOW_WORKSPACE": str(tmp_path / "workspace"), "THREADFLOW_POLL_INTERVAL": "0.05", **env})


def pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


async def test_recover_beside_a_live_worker_leaves_a_dead_process_run_to_it_and_executes_nothing_twice(
    db_url: str, fault_dir: Path, start_worker: StartWorker, engine: EngineFactory, tmp_path: Path
) -> None:
    (fault_dir / HOLD).touch()
    doomed = await start_worker(db_url, lease=30.0)  # its lease does not run out meanwhile: only a reaper frees it
    observer = engine(*WORKFLOWS, execute=False)
    run_id = (await observer.start("held", {"n": 1})).run_id
    await eventually(lambda: executions(fault_dir)[(run_id, "hold")] == 1, timeout=20)
    live = await start_worker(db_url, lease=30.0)  # reaps dead processes only every 30 s: `recover` is first
    await asyncio.sleep(1.0)  # (past its reaping at start)
    await doomed.kill()
    env = {"THREADFLOW_WORKFLOWS": "tests.reliability.faulty_flows", "THREADFLOW_TEST_FAULT_DIR": str(fault_dir)}

    proc = await cli(db_url, tmp_path, "recover", "--wait", "2", env=env)  # the step is held: it cannot settle

    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["recovered"] == [run_id] and "still running" in proc.stderr
    await eventually(lambda: executions(fault_dir)[(run_id, "hold")] == 2, timeout=20)  # the live worker's go
    (fault_dir / HOLD).unlink()
    result = await observer.handle(run_id).result(timeout=20)
    assert result.status == "success" and result.output == {"n": 107}
    assert executions(fault_dir)[(run_id, "hold")] == 2  # the dead process's and the live worker's: not the CLI's
    assert executions(fault_dir)[(run_id, "a")] == 1
    assert live.proc.returncode is None


async def test_recover_no_wait_returns_once_the_runs_are_queued(
    db_url: str, fault_dir: Path, start_worker: StartWorker, engine: EngineFactory, tmp_path: Path
) -> None:
    (fault_dir / HOLD).touch()
    doomed = await start_worker(db_url, lease=30.0)
    observer = engine(*WORKFLOWS, execute=False)
    run_id = (await observer.start("held", {"n": 1})).run_id
    await eventually(lambda: executions(fault_dir)[(run_id, "hold")] == 1, timeout=20)
    await doomed.kill()
    env = {"THREADFLOW_WORKFLOWS": "tests.reliability.faulty_flows", "THREADFLOW_TEST_FAULT_DIR": str(fault_dir)}

    proc = await cli(db_url, tmp_path, "recover", "--no-wait", env=env)

    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["recovered"] == [run_id] and out["results"][0]["status"] == "pending"
    run = await observer.get_run(run_id)
    assert run.status == "pending" and run.owner is None and run.recoveries == 1  # queued, counted once
    assert executions(fault_dir)[(run_id, "hold")] == 1  # nothing executed it
    (fault_dir / HOLD).unlink()
    finisher = engine(*WORKFLOWS)
    assert (await finisher.handle(run_id).result(timeout=20)).output == {"n": 107}


async def test_run_and_resume_beside_a_live_worker_are_executed_by_the_worker(
    db_url: str, start_worker: StartWorker, engine: EngineFactory, tmp_path: Path
) -> None:
    worker = await start_worker(db_url, env={"THREADFLOW_WORKFLOWS": VERSIONED})
    observer = engine(*V1, execute=False)

    started = await cli(db_url, tmp_path, "run", "deploy", "--wait", "20", env={"THREADFLOW_WORKFLOWS": VERSIONED})

    assert started.returncode == 0, started.stderr
    waiting = json.loads(started.stdout)
    assert waiting["status"] == "suspended"
    run_id = waiting["run_id"]
    resumed = await cli(db_url, tmp_path, "resume", run_id, "--data", '{"approved": true}', "--wait", "20",
                        env={"THREADFLOW_WORKFLOWS": VERSIONED})
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "success"
    by = {s.path: s.output["by"] for s in (await observer.details(run_id)).steps}
    assert set(by) == {"prepare", "gate", "finish"}
    assert {pid_of(owner) for owner in by.values()} == {worker.proc.pid}  # not the commands' own processes


async def test_run_with_no_live_process_executes_in_the_command_as_before(
    db_url: str, engine: EngineFactory, tmp_path: Path
) -> None:
    observer = engine(*V1, execute=False)

    started = await cli(db_url, tmp_path, "run", "deploy", env={"THREADFLOW_WORKFLOWS": VERSIONED})

    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    # Nothing else executes runs: the command's own engine walked it to the gate.
    assert (await observer.get_run(run_id)).status == "suspended"
    assert [s.path for s in (await observer.details(run_id)).steps] == ["prepare"]


async def test_run_right_after_the_worker_was_killed_executes_in_the_command_instead_of_waiting_for_it(
    db_url: str, start_worker: StartWorker, engine: EngineFactory, tmp_path: Path
) -> None:
    """A worker that was killed (SIGKILL, a crash, a third Ctrl+C) could not withdraw its versions, and its rows
    in ``served_versions`` look live until they expire. On this host its process id says it is gone: a command
    must not queue the run for it and wait in vain."""
    worker = await start_worker(db_url, env={"THREADFLOW_WORKFLOWS": VERSIONED})
    observer = engine(*V1, execute=False)
    await eventually(observer.live_executors, timeout=20)
    await worker.kill()
    assert await observer.live_executors() == []

    started = await cli(db_url, tmp_path, "run", "deploy", "--wait", "20", env={"THREADFLOW_WORKFLOWS": VERSIONED})

    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    assert (await observer.get_run(run_id)).status == "suspended"  # walked to the gate by the command itself
    by = {s.path: s.output["by"] for s in (await observer.details(run_id)).steps}
    assert list(by) == ["prepare"] and pid_of(by["prepare"]) != worker.proc.pid


async def test_recover_beside_a_live_worker_of_the_new_version_executes_a_dead_process_run_of_the_old(
    db_url: str, start_worker: StartWorker, engine: EngineFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # v2 is deployed; the last v1 worker dies mid-step. The live worker has only v2, so `recover` (with v1 registered
    # again, the way out the README gives) executes the v1 run itself instead of queueing it for nobody.
    held = tmp_path / "held"
    held.mkdir()
    monkeypatch.setenv("HELD_DIR", str(held))
    (held / "HOLD").touch()
    flows = "tests.helpers.held_versions"
    v1_worker = await start_worker(db_url, lease=30.0, env={"THREADFLOW_WORKFLOWS": f"{flows}:V1", "HELD_DIR": str(held)})
    observer = engine(*held_versions.V1, execute=False)
    run_id = (await observer.start("job", {})).run_id
    await eventually(lambda: [s for s, _ in held_versions.executions(run_id)] == ["first", "hold"], timeout=20)
    v2_worker = await start_worker(db_url, lease=30.0, env={"THREADFLOW_WORKFLOWS": f"{flows}:V2", "HELD_DIR": str(held)})
    await v1_worker.kill()
    (held / "HOLD").unlink()

    proc = await cli(db_url, tmp_path, "recover", "--wait", "15", env={"THREADFLOW_WORKFLOWS": f"{flows}:BOTH",
                                                                     "HELD_DIR": str(held)})

    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["recovered"] == [run_id] and out["results"][0]["status"] == "success"
    ran = held_versions.executions(run_id)
    assert [s for s, _ in ran] == ["first", "hold", "hold"] and ran[-1][1] != v2_worker.proc.pid  # this command's
    assert v2_worker.proc.returncode is None
