"""A step that kills its process (``os._exit(9)``; the out-of-memory killer or a segfault look the same): real
``threadflow worker`` processes, restarted by the test as a supervisor would. The run is recovered, dies again,
and after THREADFLOW_MAX_RECOVERIES deaths it fails, naming the step, with a ``run.failed`` event; the healthy
runs beside it (some of them stuck in a long step through every death) all finish.

Bound stated here: a death repeats at most the step each run had in flight, so a healthy run's step runs at most
once per death more than once, and no healthy run is failed for being in the process when it died.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EngineFactory
from tests.helpers.processes import Worker
from tests.reliability.conftest import StartWorker
from tests.reliability.faulty_flows import HOLD, WORKFLOWS, executions
from tests.reliability.tally import tally
from workflows import DefinitionError, Engine, UsageError, Workflow

ROOT = Path(__file__).resolve().parents[2]


async def until_exit_or_final(worker: Worker, observer, run_id: str, timeout: float = 60) -> int | None:  # noqa: ANN001
    """The worker's exit code once it dies, or None once ``run_id`` is final while the worker lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.returncode is not None:
            return await worker.exit_code()
        try:
            return await asyncio.wait_for(asyncio.shield(worker.proc.wait()), 0.05)
        except TimeoutError:
            pass
        if (await observer.get_run(run_id)).is_terminal:
            return None
    raise AssertionError(f"neither the worker exited nor run {run_id} finished:\n{worker.errors()}")


async def test_a_step_that_kills_its_process_fails_its_run_after_three_deaths_and_the_runs_beside_it_finish(
    db_url: str, fault_dir: Path, start_worker: StartWorker, engine: EngineFactory
) -> None:
    observer = engine(*WORKFLOWS, execute=False)
    (fault_dir / HOLD).touch()  # the "held" runs sit in their `hold` step through the first deaths
    expected = {(await observer.start("held", {"n": i})).run_id: {"n": i + 106} for i in range(3)}
    expected |= {(await observer.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(10)}
    poison = (await observer.start("dies", {"n": 1})).run_id

    deaths = 0
    while deaths < 2:
        worker = await start_worker(db_url)
        assert await until_exit_or_final(worker, observer, poison) == 9
        deaths += 1

    # Every held run and the poison run have now died twice: each is on its last chance. A worker executes one
    # of them at a time (the first held run, blocked in `hold`); the poison run waits instead of dying beside it.
    worker = await start_worker(db_url)
    await asyncio.sleep(1.5)
    assert (await observer.get_run(poison)).status == "pending" and worker.proc.returncode is None
    (fault_dir / HOLD).unlink()
    while (code := await until_exit_or_final(worker, observer, poison)) is not None:
        assert code == 9
        deaths += 1
        worker = await start_worker(db_url)

    run = await observer.get_run(poison)
    assert deaths == 3 and run.status == "failed"
    assert run.error and run.error["path"] == "die" and run.error["type"] == "StepCrashed"
    assert "the process running step `die` died 3 times" in run.error["message"]
    events = (await observer.details(poison)).events
    [failed] = [ev for ev in events if ev.type == "run.failed"]
    assert failed.path == "die" and failed.data["deaths"] == 3
    assert [ev.type for ev in events][-2:] == ["run.failed", "run.finished"]
    assert sum(ev.type == "run.recovered" for ev in events) == 3
    assert executions(fault_dir)[(poison, "die")] == 3

    counts = await tally("step kills its process (os._exit)", observer, expected, fault_dir)
    runs_in_flight = len(expected)
    counts.save(bound=f"repeated <= {deaths} deaths x {runs_in_flight} runs")
    assert counts.lost == counts.changed == counts.wrongly_failed == 0
    assert counts.repeated <= deaths * runs_in_flight
    assert max(executions(fault_dir)[(r, p)] for (r, p) in executions(fault_dir) if r in expected) <= 1 + deaths
    worker.proc.terminate()
    assert await worker.exit_code() == 0  # the last worker is healthy and shuts down cleanly


@pytest.mark.parametrize(("workflow", "env", "limit"), [
    ("dies-once", {}, 1),  # Workflow(..., max_recoveries=1)
    ("dies", {"THREADFLOW_MAX_RECOVERIES": "2"}, 2),
], ids=["per-workflow", "setting"])
async def test_the_number_of_deaths_a_run_survives_is_a_setting_and_a_workflow_option(
    db_url: str, fault_dir: Path, start_worker: StartWorker, engine: EngineFactory, workflow: str,
    env: dict[str, str], limit: int,
) -> None:
    observer = engine(*WORKFLOWS, execute=False)
    poison = (await observer.start(workflow, {"n": 1})).run_id
    deaths = 0
    while True:
        worker = await start_worker(db_url, env=env)
        code = await until_exit_or_final(worker, observer, poison)
        if code is None:
            break
        assert code == 9
        deaths += 1

    run = await observer.get_run(poison)
    assert deaths == limit and run.status == "failed" and run.error is not None
    assert f"the process running step `die` died {limit} time" in run.error["message"]
    worker.proc.terminate()
    assert await worker.exit_code() == 0


def test_max_recoveries_of_zero_is_refused_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 would mean "fail a run the first time its process dies", which the engine cannot promise (a run
    taken over from a dead process is executed at least once more): the setting, the engine's argument and the
    workflow option all refuse it, naming the lowest value."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADFLOW_")}
    env.update({"THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
                "THREADFLOW_MAX_RECOVERIES": "0", "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "runs"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "THREADFLOW_MAX_RECOVERIES" in proc.stderr
    assert "greater than or equal to 1" in proc.stderr

    with pytest.raises(UsageError, match="max_recoveries must be 1 or more"):
        Engine(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}", max_recoveries=0)
    monkeypatch.setenv("THREADFLOW_MAX_RECOVERIES", "0")
    with pytest.raises(UsageError, match="THREADFLOW_MAX_RECOVERIES must be a whole number, 1 or more; got '0'"):
        Engine(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    with pytest.raises(DefinitionError, match="max_recoveries must be 1 or more"):
        Workflow(id="w", max_recoveries=0)
