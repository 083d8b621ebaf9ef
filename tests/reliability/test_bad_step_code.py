"""Step code that raises what it should not (SystemExit, KeyboardInterrupt, a stray CancelledError...) or returns
what cannot be stored: the step fails, its run fails with the step named, and the 20 healthy runs executing beside
it in the same process finish as if nothing happened. The test process itself is the proof that the process
survives: before, ``sys.exit(3)`` in a step ended the process executing it.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from storage import Database
from tests.conftest import EngineFactory
from tests.helpers import eventually
from tests.reliability.faulty_flows import Num, a, healthy, record
from tests.reliability.tally import tally
from workflows import Engine, RetryPolicy, StepContext, Workflow, step

HEALTHY_RUNS = 20


class Stop(BaseException):
    """A BaseException of the step's own (not an Exception)."""


def _raise(exc: BaseException) -> Any:
    def go() -> None:
        raise exc

    return go


RAISED = [
    pytest.param(lambda: sys.exit(3), "SystemExit", "sys.exit(3)", id="sys.exit"),
    pytest.param(_raise(KeyboardInterrupt()), "KeyboardInterrupt", "KeyboardInterrupt", id="KeyboardInterrupt"),
    pytest.param(_raise(GeneratorExit()), "GeneratorExit", "GeneratorExit", id="GeneratorExit"),
    pytest.param(_raise(Stop("stop here")), "Stop", "stop here", id="BaseException-subclass"),
    pytest.param(_raise(asyncio.CancelledError()), "CancelledError", "was not canceled", id="stray-CancelledError"),
]


async def start_healthy(e: Engine) -> dict[str, Any]:
    """Start the healthy runs; return run id -> the output each must end with."""
    handles = [await e.start("healthy", {"n": i}) for i in range(HEALTHY_RUNS)]
    return {h.run_id: {"n": i + 8} for i, h in enumerate(handles)}


@pytest.mark.parametrize(("raise_it", "error_type", "says"), RAISED)
async def test_whatever_a_step_raises_fails_that_step_and_the_runs_beside_it_finish(
    engine: EngineFactory, fault_dir: Path, raise_it: Any, error_type: str, says: str
) -> None:
    @step(id="bad", input=Num, output=Num)
    async def bad(ctx: StepContext[Num]) -> Num:
        record(ctx)
        await asyncio.sleep(0.02)
        raise_it()
        raise AssertionError("unreachable")

    e = engine(healthy, Workflow(id="bad", input=Num, output=Num).then(a).then(bad).commit())
    expected = await start_healthy(e)
    result = await (await e.start("bad", {"n": 1})).result(timeout=10)

    assert result.status == "failed" and result.error_path == "bad" and result.error_type == error_type
    assert "Step 'bad' failed" in (result.error or "") and says in (result.error or "")
    failed = [ev for ev in (await e.details(result.run_id)).events if ev.type == "step.failed"]
    assert [ev.path for ev in failed] == ["bad"]
    counts = tally(f"step raises {error_type}", e, expected, fault_dir)
    assert (await counts).save().harmless
    # The engine goes on executing new runs.
    assert (await (await e.start("healthy", {"n": 100})).result(timeout=10)).output == {"n": 108}


async def test_a_step_that_calls_sys_exit_is_retried_by_its_retry_policy(engine: EngineFactory, fault_dir: Path) -> None:
    @step(id="flaky-exit", input=Num, output=Num, retry=RetryPolicy(attempts=3, backoff=0))
    async def flaky(ctx: StepContext[Num]) -> Num:
        if ctx.attempt == 1:
            sys.exit(3)
        return Num(n=ctx.input.n * 2)

    e = engine(Workflow(id="retried", input=Num, output=Num).then(flaky).commit())
    result = await (await e.start("retried", {"n": 21})).result(timeout=10)

    assert result.status == "success" and result.output == {"n": 42}
    [info] = (await e.details(result.run_id)).steps
    assert info.attempts == 2
    [retrying] = [ev for ev in (await e.details(result.run_id)).events if ev.type == "step.retrying"]
    assert "SystemExit" in retrying.data["error"]


async def test_a_real_cancel_still_cancels_a_step_in_flight(engine: EngineFactory, fault_dir: Path) -> None:
    started = asyncio.Event()

    @step(id="waits", input=Num, output=Num)
    async def waits(ctx: StepContext[Num]) -> Num:
        started.set()
        await asyncio.sleep(30)
        return ctx.input

    e = engine(Workflow(id="waiting", input=Num, output=Num).then(waits).commit())
    handle = await e.start("waiting", {"n": 1})
    await asyncio.wait_for(started.wait(), 5)

    result = await e.cancel(handle.run_id, by="U1")

    assert result.status == "canceled"
    await eventually(lambda: handle.run_id not in e._tasks)  # the task ended (it was not turned into a failure)
    assert "step.failed" not in [ev.type for ev in (await e.details(handle.run_id)).events]


async def test_systemexit_in_a_map_inside_a_parallel_branch_fails_the_run_not_the_process(
    engine: EngineFactory, fault_dir: Path
) -> None:
    inner = Workflow(id="inner", input=Num).map(lambda x: sys.exit(4), id="quit").commit()
    wf = Workflow(id="parallel-exit", input=Num).parallel([inner, a]).commit()
    e = engine(healthy, wf)
    expected = await start_healthy(e)

    result = await (await e.start("parallel-exit", {"n": 1})).result(timeout=10)

    assert result.status == "failed" and result.error_type == "SystemExit" and result.error_path == "inner/quit"
    assert (await tally("a map raises SystemExit", e, expected, fault_dir)).save().harmless


class Blob(BaseModel):
    value: Any


class Ratio(BaseModel):
    ratio: float


UNSTORABLE = [
    pytest.param(None, {"data": b"\x00\x01"}, "output.data is a bytes object", id="bytes"),
    pytest.param(None, {"items": [1, object()]}, "output.items[1] is an object object", id="object"),
    pytest.param(None, {"ratio": math.nan}, "output.ratio is nan", id="nan"),
    # A model keeps NaN (pydantic allows it) and the database would give it back as null.
    pytest.param(Ratio, Ratio(ratio=math.inf), "output.ratio is inf", id="infinity-in-a-model"),
    # The database's JSON reader would give it back as a float.
    pytest.param(None, {"id": 2**64 + 1}, "output.id is an integer beyond 64 bits", id="integer-beyond-64-bits"),
    pytest.param(None, {"tags": {"a", "b"}}, "output.tags is a set object", id="set"),
    pytest.param(Blob, Blob(value=object()), "Unable to serialize unknown type", id="model-with-an-object"),
]


@pytest.mark.parametrize(("model", "returned", "problem"), UNSTORABLE)
async def test_output_that_cannot_be_stored_fails_its_step_with_its_path_and_no_sql(
    engine: EngineFactory, fault_dir: Path, model: type[BaseModel] | None, returned: Any, problem: str
) -> None:
    @step(id="bad-output", input=Num, output=model)
    async def bad_output(ctx: StepContext[Num]) -> Any:
        record(ctx)
        return returned

    e = engine(healthy, Workflow(id="unstorable", input=Num).then(a).then(bad_output).commit())
    expected = await start_healthy(e)
    result = await (await e.start("unstorable", {"n": 1})).result(timeout=10)

    assert result.status == "failed" and result.error_type == "OutputUnstorable" and result.error_path == "bad-output"
    error = result.error or ""
    assert "Step 'bad-output' returned output that cannot be stored" in error and problem in error
    assert not any(sql in error for sql in ("INSERT", "SELECT", "[SQL", "step_results"))
    failed = [ev for ev in (await e.details(result.run_id)).events if ev.type == "step.failed"]
    assert [ev.path for ev in failed] == ["bad-output"] and "OutputUnstorable" in failed[0].data["error"]
    assert (await tally("step returns unstorable output", e, expected, fault_dir)).save().harmless


class ApiError(Exception):
    """An HTTP client's error, raised without a response when the connection dropped before one came: its ``__str__``
    reads a field it was not given, so ``str()`` of it raises."""

    def __init__(self, response: Any) -> None:
        super().__init__(response)
        self.response = response

    def __str__(self) -> str:
        return f"HTTP {self.response.status}: {self.response.reason}"


async def test_an_exception_whose_str_fails_is_still_that_steps_failure_and_is_retried(engine: EngineFactory) -> None:
    @step(id="call-api", input=Num, output=Num, retry=RetryPolicy(attempts=3, backoff=0))
    async def call_api(ctx: StepContext[Num]) -> Num:
        if ctx.attempt == 1:
            raise ApiError(None)  # the connection dropped: the next attempt gets through
        return Num(n=ctx.input.n * 2)

    e = engine(Workflow(id="calls", input=Num, output=Num).then(call_api).commit())
    result = await (await e.start("calls", {"n": 21})).result(timeout=10)

    assert (result.status, result.output) == ("success", {"n": 42}), result
    [retrying] = [ev for ev in (await e.details(result.run_id)).events if ev.type == "step.retrying"]
    assert retrying.data["error"].startswith("ApiError: ")


async def test_an_exception_whose_str_fails_names_the_step_and_is_recorded_as_its_failure(
    engine: EngineFactory,
) -> None:
    @step(id="call-api", input=Num, output=Num)
    async def call_api(ctx: StepContext[Num]) -> Num:
        raise ApiError(None)

    e = engine(Workflow(id="calls", input=Num, output=Num).then(call_api).commit())
    result = await (await e.start("calls", {"n": 1})).result(timeout=10)

    assert (result.status, result.error_type, result.error_path) == ("failed", "ApiError", "call-api")
    assert "its message could not be read" in (result.error or "")
    failed = [ev.path for ev in (await e.details(result.run_id)).events if ev.type == "step.failed"]
    assert failed == ["call-api"]


def reshape(value: Any) -> Any:
    raise ApiError(None)  # e.g. a lookup in a .map that calls a client


async def test_a_map_that_raises_an_unprintable_exception_fails_the_run_at_once_naming_the_map(
    engine: EngineFactory,
) -> None:
    e = engine(Workflow(id="reshapes", input=Num).map(reshape, id="reshape").commit())

    result = await (await e.start("reshapes", {"n": 1})).result(timeout=4)  # two leases of this test's engine

    assert (result.status, result.error_type, result.error_path) == ("failed", "ApiError", "reshape")
    assert "run.recovered" not in [ev.type for ev in (await e.details(result.run_id)).events]


async def test_an_unexpected_error_of_the_engine_fails_the_run_at_once_rather_than_as_a_dead_process(
    tmp_path: Path,
) -> None:
    """Not a step's error (those fail their step): one of the engine's own, here a run's end the database refuses for
    a reason nobody foresaw (a trigger a DBA added). Left ``running``, the run was taken over every lease "from a
    dead process" and failed as StepCrashed minutes later."""
    path = tmp_path / "refusing.db"
    e = Engine(Database(f"sqlite+aiosqlite:///{path}"), poll_interval=0.05, lease_seconds=2.0)
    e.register(Workflow(id="reshapes", input=Num).map(lambda x: x, id="same").commit())
    await e.open()
    try:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TRIGGER refuse_success BEFORE UPDATE OF status ON runs WHEN NEW.status = 'success' "
                       "BEGIN SELECT RAISE(ABORT, 'runs may not succeed here'); END")
        result = await (await e.start("reshapes", {"n": 1})).result(timeout=4)  # two leases of this engine

        assert (result.status, result.error_type) == ("failed", "IntegrityError"), result
        assert "threadflow failed while executing this run (IntegrityError" in (result.error or "")
        assert "run.recovered" not in [ev.type for ev in (await e.details(result.run_id)).events]
    finally:
        await e.close()


class Counts(BaseModel):
    errors: int
    total: int


def error_rate(counts: Counts) -> dict[str, Any]:
    return {"rate": counts.errors / counts.total if counts.total else math.nan}


def report(counts: Counts) -> dict[str, Any]:
    return {"report_id": uuid.uuid4().int, **error_rate(counts)}  # an integer beyond 64 bits beside the NaN


@pytest.mark.parametrize("last", [error_rate, report], ids=["nan", "nan-beside-an-integer-beyond-64-bits"])
async def test_a_final_map_whose_output_cannot_be_stored_fails_the_run_at_once_naming_the_map(
    engine: EngineFactory, last: Any
) -> None:
    """Not stored as null (NaN: the caller waiting here got ``nan``, everyone reading the run back ``None``), nor
    refused by PostgreSQL every time the run was taken over "from a dead process" (NaN beside a 128-bit integer)."""
    e = engine(Workflow(id="error-rate", input=Counts).map(last, id="rate").commit())

    result = await (await e.start("error-rate", {"errors": 0, "total": 0})).result(timeout=4)  # two leases

    assert (result.status, result.error_type, result.error_path) == ("failed", "OutputUnstorable", "rate"), result
    assert "as its last node 'rate' gave it, cannot be stored: output." in (result.error or "")
    assert (await e.get_run(result.run_id)).output is None
    assert "run.recovered" not in [ev.type for ev in (await e.details(result.run_id)).events]
