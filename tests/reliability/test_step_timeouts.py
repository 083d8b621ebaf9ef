"""Step timeouts (``@step(timeout=)``, the workflow's ``step_timeout``, ``THREADFLOW_STEP_TIMEOUT``), plain ``def``
steps in threads, and a step that blocks the event loop: it is named in the log and counted in ``/metrics``.

Timings here are generous bounds on waits ("fails within a few seconds of a 0.3 s timeout"), not speed targets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from bot.metrics import Metrics
from tests.conftest import EngineFactory
from tests.helpers import eventually
from tests.helpers.processes import spawner
from tests.reliability.faulty_flows import Num, a, block_flow, hang_flow, healthy
from tests.reliability.tally import tally
from workflows import RetryPolicy, StepContext, Workflow, step
from workflows.errors import StepTimeout


async def test_a_step_that_hangs_fails_with_step_timeout_and_the_other_runs_finish(
    engine: EngineFactory, fault_dir: Path
) -> None:
    e = engine(healthy, hang_flow)
    expected = {(await e.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(10)}
    began = time.monotonic()

    result = await (await e.start("hangs", {"n": 1})).result(timeout=10)

    assert result.status == "failed" and result.error_type == "StepTimeout" and result.error_path == "hang"
    assert "did not finish within its timeout of 0.3 seconds" in (result.error or "")
    assert time.monotonic() - began < 5  # it did not hold its slot forever
    assert (await tally("step hangs past its timeout", e, expected, fault_dir)).save().harmless


async def test_the_retry_policy_applies_to_a_timed_out_step(engine: EngineFactory) -> None:
    @step(id="slow-then-fast", input=Num, output=Num, timeout=0.2, retry=RetryPolicy(attempts=3, backoff=0))
    async def slow_then_fast(ctx: StepContext[Num]) -> Num:
        if ctx.attempt < 3:
            await asyncio.sleep(5)
        return Num(n=ctx.attempt)

    e = engine(Workflow(id="retry-timeouts", input=Num, output=Num).then(slow_then_fast).commit())
    result = await (await e.start("retry-timeouts", {"n": 0})).result(timeout=10)

    assert result.status == "success" and result.output == {"n": 3}
    retries = [ev.data["error"] for ev in (await e.details(result.run_id)).events if ev.type == "step.retrying"]
    assert len(retries) == 2 and all(err.startswith("StepTimeout: Step 'slow-then-fast'") for err in retries)


async def test_a_workflow_default_timeout_applies_to_steps_without_their_own(engine: EngineFactory) -> None:
    @step(id="slow", input=Num, output=Num)
    async def slow(ctx: StepContext[Num]) -> Num:
        await asyncio.sleep(5)
        return ctx.input

    @step(id="patient", input=Num, output=Num, timeout=5)
    async def patient(ctx: StepContext[Num]) -> Num:
        await asyncio.sleep(0.4)  # longer than the workflow's default, within its own timeout
        return Num(n=ctx.input.n + 1)

    e = engine(
        Workflow(id="defaults", input=Num, output=Num, step_timeout=0.2).then(patient).then(slow).commit(),
    )
    result = await (await e.start("defaults", {"n": 1})).result(timeout=10)

    assert result.status == "failed" and result.error_type == "StepTimeout" and result.error_path == "slow"
    assert [s.path for s in (await e.details(result.run_id)).steps] == ["patient"]


@pytest.mark.parametrize("how", ["setting", "argument"])
async def test_threadflow_step_timeout_is_the_default_for_every_step(
    engine: EngineFactory, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    @step(id="sleepy", input=Num, output=Num)
    async def sleepy(ctx: StepContext[Num]) -> Num:
        await asyncio.sleep(5)
        return ctx.input

    wf = Workflow(id="sleepy", input=Num, output=Num).then(sleepy).commit()
    if how == "setting":
        monkeypatch.setenv("THREADFLOW_STEP_TIMEOUT", "0.2")
        e = engine(wf)
    else:
        e = engine(wf, step_timeout=0.2)
    result = await (await e.start("sleepy", {"n": 1})).result(timeout=10)

    assert result.status == "failed" and result.error_type == "StepTimeout"
    assert "timeout of 0.2 seconds" in (result.error or "")


async def test_a_plain_def_step_runs_in_a_thread_without_blocking_the_other_runs(
    engine: EngineFactory, fault_dir: Path
) -> None:
    finished: list[str] = []

    @step(id="blocking", input=Num, output=Num)
    def blocking(ctx: StepContext[Num]) -> Num:
        time.sleep(1.5)  # a sync HTTP call, CPU work in a C library...
        finished.append("blocking")
        return Num(n=ctx.input.n * 2)

    e = engine(healthy, Workflow(id="sync", input=Num, output=Num).then(blocking).commit())
    sync_run = await e.start("sync", {"n": 21})
    quick = await (await e.start("healthy", {"n": 0})).result(timeout=10)
    finished.append("healthy")

    assert quick.output == {"n": 8}
    result = await sync_run.result(timeout=10)
    assert result.status == "success" and result.output == {"n": 42}
    assert finished == ["healthy", "blocking"]  # three steps of another run finished while the thread slept


async def test_a_plain_def_step_that_hangs_times_out(engine: EngineFactory) -> None:
    @step(id="stuck", input=Num, output=Num, timeout=0.3)
    def stuck(ctx: StepContext[Num]) -> Num:
        time.sleep(3)  # a thread cannot be stopped: it finishes on its own later, and its result is dropped
        return ctx.input

    e = engine(Workflow(id="stuck", input=Num, output=Num).then(stuck).commit())
    began = time.monotonic()
    result = await (await e.start("stuck", {"n": 1})).result(timeout=10)

    assert result.status == "failed" and result.error_type == "StepTimeout" and result.error_path == "stuck"
    assert time.monotonic() - began < 2.5


async def test_a_step_that_blocks_the_event_loop_is_named_in_the_log_and_counted_in_metrics(
    engine: EngineFactory, fault_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("tests.reliability.faulty_flows.BLOCK_SECONDS", 1.6)
    monkeypatch.setattr("workflows.watchdog.STILL_STUCK_AFTER", 1.2)  # also say so while it lasts
    e = engine(block_flow)
    metrics = Metrics(e)
    try:
        with caplog.at_level(logging.WARNING, logger="threadflow.engine"):
            result = await (await e.start("blocks", {"n": 1})).result(timeout=15)
            await eventually_stall_counted(metrics)
        body = (await metrics.render()).decode()
    finally:
        metrics.close()

    assert result.status == "success" and result.output == {"n": 17}  # 1 + 1 + 10 + 5: a slow step is not killed
    stalls = [r.getMessage() for r in caplog.records if "event loop was blocked" in r.getMessage()]
    assert len(stalls) == 1 and f"in step `block` of run {result.run_id}" in stalls[0]
    ongoing = [r.getMessage() for r in caplog.records if "event loop has been blocked" in r.getMessage()]
    assert len(ongoing) == 1 and f"in step `block` of run {result.run_id}" in ongoing[0]
    assert 'threadflow_loop_stalls_total{step="block",workflow="blocks"} 1.0' in body


async def eventually_stall_counted(metrics: Metrics) -> None:
    for _ in range(100):
        if 'threadflow_loop_stalls_total{step="block"' in (await metrics.render()).decode():
            return
        await asyncio.sleep(0.05)


def test_step_timeout_is_a_run_failure_that_names_the_step() -> None:
    exc = StepTimeout("deploy/build", 30)
    assert exc.path == "deploy/build" and "Step 'deploy/build' did not finish within its timeout of 30 seconds" in str(exc)


async def test_a_step_that_blocks_the_loop_past_its_timeout_still_times_out(engine: EngineFactory, fault_dir: Path) -> None:
    @step(id="hog", input=Num, output=Num, timeout=0.2)
    async def hog(ctx: StepContext[Num]) -> Num:
        time.sleep(0.5)  # noqa: ASYNC251 (the timeout cannot interrupt it; it is late all the same)
        return ctx.input

    e = engine(Workflow(id="hog", input=Num, output=Num).then(a).then(hog).commit())
    result = await (await e.start("hog", {"n": 1})).result(timeout=10)
    assert result.status == "failed" and result.error_type == "StepTimeout" and result.error_path == "hog"


async def test_a_process_whose_sync_step_hung_past_its_timeout_still_exits(db_url: str, tmp_path: Path) -> None:
    """A plain ``def`` step's thread cannot be stopped; a timed-out one is abandoned (counted, logged) and runs in
    a daemon thread, so the process exits when it is done instead of waiting for the step for an hour."""
    async with spawner("tests.reliability.hung_thread_main", tmp_path) as spawn:
        proc = await spawn(db_url)
        assert await proc.line() == "failed StepTimeout"
        assert await proc.line() == "abandoned 1"
        assert await proc.line() == "closed"
        code = await proc.exit_code(timeout=15)

    assert code == 0, proc.errors()
    assert "1 abandoned step thread" in proc.errors()


async def test_abandoned_step_threads_are_counted_in_metrics_until_they_end(engine: EngineFactory) -> None:
    release = threading.Event()

    @step(id="stuck", input=Num, output=Num, timeout=0.2)
    def stuck(ctx: StepContext[Num]) -> Num:
        release.wait(30)
        return ctx.input

    e = engine(Workflow(id="stuck-in-a-thread", input=Num, output=Num).then(stuck).commit())
    metrics = Metrics(e)
    try:
        result = await (await e.start("stuck-in-a-thread", {"n": 1})).result(timeout=10)
        assert result.status == "failed" and result.error_type == "StepTimeout"
        assert e.abandoned_step_threads == 1
        assert "threadflow_step_threads_abandoned 1.0" in (await metrics.render()).decode()

        release.set()  # the step ends after all: its thread is no longer abandoned
        await eventually(lambda: e.abandoned_step_threads == 0, timeout=5)
        assert "threadflow_step_threads_abandoned 0.0" in (await metrics.render()).decode()
    finally:
        release.set()
        metrics.close()
