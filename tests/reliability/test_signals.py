"""Signals to the process still stop it gracefully, while the same exceptions raised by a step do not.

SIGTERM or SIGINT to ``threadflow worker`` hands the runs it holds back (``run.released``, no recovery counted)
and exits 0; steps that raise KeyboardInterrupt or call sys.exit fail their runs and the worker goes on; a second
Ctrl+C that lands inside a CPU-bound step stops the process instead of failing the step.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.conftest import EngineFactory
from tests.helpers import eventually
from tests.helpers.processes import spawner
from tests.reliability.conftest import StartWorker
from tests.reliability.faulty_flows import HOLD, WORKFLOWS, executions
from tests.reliability.tally import tally


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_a_worker_gracefully_and_hands_its_runs_back(
    db_url: str, fault_dir: Path, start_worker: StartWorker, engine: EngineFactory, sig: signal.Signals
) -> None:
    (fault_dir / HOLD).touch()
    worker = await start_worker(db_url)
    observer = engine(*WORKFLOWS, execute=False)
    run_id = (await observer.start("held", {"n": 1})).run_id
    await eventually(lambda: executions(fault_dir)[(run_id, "hold")] == 1, timeout=20)

    worker.proc.send_signal(sig)

    assert await worker.exit_code(timeout=15) == 0
    run = await observer.get_run(run_id)
    assert run.status == "pending" and run.owner is None and run.recoveries == 0
    assert "run.released" in [ev.type for ev in (await observer.details(run_id)).events]
    (fault_dir / HOLD).unlink()
    finisher = engine(*WORKFLOWS)
    assert (await finisher.handle(run_id).result(timeout=15)).output == {"n": 107}


async def test_steps_that_raise_keyboardinterrupt_or_call_sys_exit_do_not_stop_the_worker(
    db_url: str, fault_dir: Path, start_worker: StartWorker, engine: EngineFactory
) -> None:
    worker = await start_worker(db_url)
    observer = engine(*WORKFLOWS, execute=False)
    bad = [(await observer.start(wf, {"n": i})).run_id for i in range(3) for wf in ("raises", "exits")]
    expected = {(await observer.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(20)}

    counts = await tally("steps raise KeyboardInterrupt / call sys.exit (worker process)", observer, expected,
                         fault_dir)

    assert counts.save().harmless
    for run_id in bad:
        result = await observer.handle(run_id).result(timeout=15)
        assert result.status == "failed" and result.error_type in ("KeyboardInterrupt", "SystemExit")
    assert worker.proc.returncode is None  # still up, and still executing
    assert (await observer.handle((await observer.start("healthy", {"n": 50})).run_id).result(timeout=15)).status \
        == "success"
    worker.proc.send_signal(signal.SIGINT)
    assert await worker.exit_code(timeout=15) == 0


async def test_a_second_ctrl_c_inside_a_cpu_bound_step_stops_the_process_and_hands_the_run_back(
    db_url: str, tmp_path: Path, engine: EngineFactory
) -> None:
    async with spawner("tests.reliability.spin_main", tmp_path) as spawn:
        proc = await spawn(db_url)
        run_id = await proc.line()
        assert await proc.line() == "spinning"
        proc.proc.send_signal(signal.SIGINT)  # asyncio.run asks the main task to cancel: the busy loop cannot
        await asyncio.sleep(0.5)
        proc.proc.send_signal(signal.SIGINT)  # raised inside the step's code
        code = await proc.exit_code(timeout=15)

    assert code != 0 and "KeyboardInterrupt" in proc.errors()
    observer = engine(execute=False)
    run = await observer.get_run(run_id)
    assert run.status == "pending"  # handed back on the way out, for any process to continue
    types = [ev.type for ev in (await observer.details(run_id)).events]
    assert "run.released" in types and "step.failed" not in types and "run.finished" not in types


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c-twice", "ctrl-c-then-sigterm"])
async def test_a_second_signal_stops_threadflow_worker_while_a_step_blocks_its_event_loop(
    db_url: str, fault_dir: Path, start_worker: StartWorker, engine: EngineFactory, second: signal.Signals
) -> None:
    """The README's promise: the first Ctrl+C asks for a graceful stop (which needs the event loop); a second one
    stops ``threadflow worker`` even while an ``async def`` step holds the loop (here ``time.sleep(120)``)."""
    worker = await start_worker(db_url, env={"THREADFLOW_TEST_BLOCK_SECONDS": "120"})
    observer = engine(*WORKFLOWS, execute=False)
    run_id = (await observer.start("blocks", {"n": 1})).run_id
    await eventually(lambda: executions(fault_dir)[(run_id, "block")] == 1, timeout=20)
    await asyncio.sleep(0.3)  # inside time.sleep now

    worker.proc.send_signal(signal.SIGINT)  # a graceful stop: it cannot happen while the loop is held
    await asyncio.sleep(1.0)
    assert worker.proc.returncode is None
    worker.proc.send_signal(second)

    code = await worker.exit_code(timeout=10)
    assert code == 130, worker.errors()
    run = await observer.get_run(run_id)
    assert run.status == "pending" and run.owner is None and run.recoveries == 0  # handed back, not failed
    types = [ev.type for ev in (await observer.details(run_id)).events]
    assert "run.released" in types and "step.failed" not in types
