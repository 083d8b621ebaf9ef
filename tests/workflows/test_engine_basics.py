"""Starting runs and reading their results: the smallest useful workflows, typed input and output."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sqlite3
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import closing as closing_connection
from contextlib import contextmanager
from typing import Any

import pytest
from pydantic import BaseModel

from tests.helpers import event_types
from tests.helpers.leaky_flows import STEP_TOKEN, refusing_api, sync_users
from workflows import (
    Engine,
    InvalidInput,
    RunFailure,
    RunNotFound,
    StepContext,
    UsageError,
    Workflow,
    WorkflowNotFound,
    new_run_id,
    step,
)
from workflows.memory import Memory


class Name(BaseModel):
    name: str


class Greeting(BaseModel):
    text: str


class Shout(BaseModel):
    text: str
    length: int


@step(id="greet", input=Name, output=Greeting)
async def greet(ctx: StepContext[Name]) -> Greeting:
    return Greeting(text=f"Hello, {ctx.input.name}!")


@step(id="shout", input=Greeting, output=Shout)
async def shout(ctx: StepContext[Greeting]) -> Shout:
    return Shout(text=ctx.input.text.upper(), length=len(ctx.input.text))


greet_user = Workflow(id="greet-user", input=Name, output=Greeting).then(greet).commit()
greet_loudly = Workflow(id="greet-loudly", input=Name, output=Shout).then(greet).then(shout).commit()


async def test_a_one_step_workflow_returns_its_typed_output(engine):
    e = engine(greet_user)

    handle = await e.start("greet-user", {"name": "Ada"})
    result = await handle.result(timeout=5)

    assert result.status == "success"
    assert result.output == {"text": "Hello, Ada!"}
    assert result.run_id == handle.run_id
    assert result.workflow_id == "greet-user"
    assert result.error is None and result.suspended == []
    assert await handle.status() == "success"


async def test_input_may_be_a_model_instance(engine):
    e = engine(greet_user)

    result = await (await e.start("greet-user", Name(name="Grace"))).result(timeout=5)

    assert result.output == {"text": "Hello, Grace!"}


async def test_each_step_gets_the_previous_steps_output(engine):
    e = engine(greet_loudly)

    result = await (await e.start("greet-loudly", {"name": "Ada"})).result(timeout=5)

    assert result.status == "success"
    assert result.output == {"text": "HELLO, ADA!", "length": 11}
    details = await e.details(result.run_id)
    assert [s.path for s in details.steps] == ["greet", "shout"]
    assert [s.output for s in details.steps] == [{"text": "Hello, Ada!"}, {"text": "HELLO, ADA!", "length": 11}]
    assert all(s.attempts == 1 for s in details.steps)


async def test_input_the_database_could_not_give_back_is_refused_and_creates_no_run(engine):
    class Count(BaseModel):
        n: int

    @step(id="count", input=Count, output=Count)
    async def count(ctx: StepContext[Count]) -> Count:
        return ctx.input

    e = engine(Workflow(id="count", input=Count, output=Count).then(count).commit())

    with pytest.raises(InvalidInput) as err:
        await e.start("count", {"n": 2**64 + 1})  # it would be read back as 1.8446744073709552e+19

    assert "input of workflow 'count'" in str(err.value) and "data.n is an integer beyond 64 bits" in str(err.value)
    assert await e.list_runs() == []
    assert (await (await e.start("count", {"n": 2**64 - 1})).result(timeout=5)).output == {"n": 2**64 - 1}


async def test_invalid_workflow_input_names_the_workflow_and_field_and_creates_no_run(engine):
    e = engine(greet_user)

    with pytest.raises(InvalidInput) as err:
        await e.start("greet-user", {"nom": "Ada"})

    message = str(err.value)
    assert "greet-user" in message and "'name'" in message
    assert "unknown field 'nom'; expected fields: name" in message  # the misspelt key is named, not dropped
    assert [tuple(x["loc"]) for x in err.value.errors] == [("nom",), ("name",)]
    assert await e.list_runs() == []


async def test_starting_an_unknown_workflow_lists_the_known_ones(engine):
    e = engine(greet_user, greet_loudly)

    with pytest.raises(WorkflowNotFound) as err:
        await e.start("greet-usr", {"name": "Ada"})

    assert "greet-usr" in str(err.value)
    assert "greet-loudly, greet-user" in str(err.value)


async def test_unknown_run_ids_raise_run_not_found(engine):
    e = engine(greet_user)

    with pytest.raises(RunNotFound, match="nope"):
        await e.get_run("nope")
    with pytest.raises(RunNotFound):
        await e.details("nope")
    with pytest.raises(RunNotFound):
        await e.resume("nope", data={})
    with pytest.raises(RunNotFound):
        await e.cancel("nope")


async def test_a_step_that_raises_fails_the_run_with_its_error_and_path(engine):
    @step(id="explode", input=Greeting, output=Greeting)
    async def explode(ctx: StepContext[Greeting]) -> Greeting:
        raise ValueError("the kettle is on fire")

    after = Counter()

    @step(id="after", input=Greeting, output=Greeting)
    async def never(ctx: StepContext[Greeting]) -> Greeting:
        after["ran"] += 1
        return ctx.input

    wf = Workflow(id="explodes", input=Name).then(greet).then(explode).then(never).commit()
    e = engine(wf)

    result = await (await e.start("explodes", {"name": "Ada"})).result(timeout=5)

    assert result.status == "failed"
    assert result.error_type == "ValueError"
    assert result.error_path == "explode"
    assert "the kettle is on fire" in result.error and "explode" in result.error
    assert after["ran"] == 0
    types = await event_types(e, result.run_id)
    assert types[0] == "run.started"
    assert "step.failed" in types and types[-1] == "run.finished"
    details = await e.details(result.run_id)
    assert [s.path for s in details.steps] == ["greet"]
    assert details.run.error["type"] == "ValueError"


async def test_a_token_in_a_failed_steps_error_text_is_masked_everywhere_it_is_stored(engine):
    """httpx's error names the URL, and Slack's Web API takes ``?token=``: the run's error, the step.failed event
    and its traceback say what failed, with the token cut to its kind (``xoxb-…``)."""
    e = engine(sync_users)
    async with refusing_api() as api:
        result = await (await e.start("sync-users", {"api": api})).result(timeout=10)

    assert result.status == "failed"
    assert "users.list" in (result.error or "") and "xoxb-…" in (result.error or "")  # says what failed...
    details = await e.details(result.run_id)
    [failed] = [ev for ev in details.events if ev.type == "step.failed"]
    stored = [result.error or "", str(details.run.error), failed.data["error"], failed.data["traceback"]]
    assert not [text for text in stored if STEP_TOKEN in text]  # ...without the token


class _Interrupted(BaseException):
    """Not an Exception: what a library may raise from deep inside (a stop signal of its own)."""


def _deny_with_token(value: Name) -> bool:
    raise RunFailure(f"the API refused token={STEP_TOKEN}")  # a condition that gives up, naming what it used


def _interrupt_with_token(value: Name) -> Name:
    raise _Interrupted(f"GET https://slack.com/api/users.list?token={STEP_TOKEN} was interrupted")


@pytest.mark.parametrize("how", ["a-condition-raising-run-failure", "a-map-raising-a-base-exception"])
async def test_a_token_in_the_error_of_a_workflow_function_is_masked_too(engine, how: str) -> None:
    """Conditions and maps fail the run with their own error text: it is masked like a step's."""
    wf = Workflow(id="leaky-functions", input=Name)
    wf = (wf.branch([(_deny_with_token, greet)]) if how.startswith("a-condition")
          else wf.map(_interrupt_with_token, output=Name, id="lookup").then(greet))
    e = engine(wf.commit())
    result = await (await e.start("leaky-functions", {"name": "Ada"})).result(timeout=10)

    assert result.status == "failed" and "xoxb-…" in (result.error or ""), result
    details = await e.details(result.run_id)
    stored = [result.error or "", str(details.run.error), *(str(ev.data) for ev in details.events)]
    assert not [text for text in stored if STEP_TOKEN in text]


async def test_output_that_does_not_fit_the_model_fails_naming_step_and_field(engine):
    @step(id="sloppy", input=Name, output=Shout)
    async def sloppy(ctx: StepContext[Name]) -> dict:
        return {"text": ctx.input.name, "length": "long"}

    wf = Workflow(id="sloppy-wf", input=Name).then(sloppy).commit()
    e = engine(wf)

    result = await (await e.start("sloppy-wf", {"name": "Ada"})).result(timeout=5)

    assert result.status == "failed"
    assert result.error_type == "OutputInvalid"
    assert "'sloppy'" in result.error and "'length'" in result.error
    assert result.error_path == "sloppy"
    details = await e.details(result.run_id)
    assert details.steps == []
    failed = [ev for ev in details.events if ev.type == "step.failed"]
    assert [ev.path for ev in failed] == ["sloppy"]


async def test_input_that_does_not_fit_a_steps_model_fails_naming_step_and_field(engine):
    # A map without an output model hands untyped data on; the next step validates it for real.
    wf = Workflow(id="bad-map", input=Name).map(lambda n: {"name": 42}).then(greet).commit()
    e = engine(wf)

    result = await (await e.start("bad-map", {"name": "Ada"})).result(timeout=5)

    assert result.status == "failed"
    assert result.error_type == "InvalidInput"
    assert "input of step 'greet'" in result.error and "'name'" in result.error
    assert result.error_path == "greet"


async def test_a_step_sees_its_run_thread_resource_and_earlier_outputs(engine):
    seen = {}

    @step(id="look", input=Greeting, output=Greeting)
    async def look(ctx: StepContext[Greeting]) -> Greeting:
        seen.update(
            run_id=ctx.run_id, workflow_id=ctx.workflow_id, thread_id=ctx.thread_id, resource_id=ctx.resource_id,
            started_by=ctx.started_by, workflow_input=ctx.workflow_input, path=ctx.path, attempt=ctx.attempt,
            greet=ctx.step_output("greet"), missing=ctx.step_output("nothing-here"), resumed=ctx.is_resumed,
        )
        return ctx.input

    wf = Workflow(id="looker", input=Name).then(greet).then(look).commit()
    e = engine(wf)

    handle = await e.start("looker", {"name": "Ada"}, thread_id="t-1", resource_id="r-1", started_by="U1")
    assert (await handle.result(timeout=5)).status == "success"

    assert seen == {
        "run_id": handle.run_id, "workflow_id": "looker", "thread_id": "t-1", "resource_id": "r-1",
        "started_by": "U1", "workflow_input": {"name": "Ada"}, "path": "look", "attempt": 1,
        "greet": {"text": "Hello, Ada!"}, "missing": None, "resumed": False,
    }
    run = await e.get_run(handle.run_id)
    assert (run.thread_id, run.resource_id, run.started_by) == ("t-1", "r-1", "U1")


async def test_a_run_id_may_be_chosen_by_the_caller(engine):
    e = engine(greet_user)

    handle = await e.start("greet-user", {"name": "Ada"}, run_id="my-run-1")

    assert handle.run_id == "my-run-1"
    assert (await handle.result(timeout=5)).output == {"text": "Hello, Ada!"}


async def test_run_ids_made_by_one_process_count_up_behind_the_time_and_never_repeat(engine):
    """16 hex digits: the time in seconds, then the process's counter, so new runs' rows land at the end of the
    indexes keyed by run id (see new_run_id)."""
    e = engine(greet_user)
    started = [(await e.start("greet-user", {"name": f"n{i}"})).run_id for i in range(5)]
    made = [new_run_id() for _ in range(10_000)]

    ids = started + made
    assert all(re.fullmatch(r"[0-9a-f]{16}", run_id) for run_id in ids)
    assert len(set(ids)) == len(ids)
    now = int(time.time())
    for before, after in itertools.pairwise(ids):
        assert int(before[:8], 16) <= int(after[:8], 16) <= now
        assert int(after[8:], 16) == (int(before[8:], 16) + 1) % 2**32  # one count on, wherever it started


async def test_a_start_whose_made_id_is_taken_already_makes_another(engine):
    e = engine(greet_user)
    last = new_run_id()
    second, count = int(last[:8], 16), int(last[8:], 16)
    taken = [f"{second + later:08x}{(count + 1) % 2**32:08x}" for later in range(10)]  # the next id, now or soon
    for run_id in taken:
        await e.start("greet-user", {"name": "Bo"}, run_id=run_id)

    handle = await e.start("greet-user", {"name": "Ada"})

    assert handle.run_id not in taken and re.fullmatch(r"[0-9a-f]{16}", handle.run_id)
    assert (await handle.result(timeout=5)).output == {"text": "Hello, Ada!"}
    with pytest.raises(UsageError, match="exists already"):
        await e.start("greet-user", {"name": "Cy"}, run_id=taken[0])  # an id the caller chose is never replaced


async def test_successful_run_records_its_events_in_order(engine):
    e = engine(greet_loudly)

    result = await (await e.start("greet-loudly", {"name": "Ada"})).result(timeout=5)

    details = await e.details(result.run_id)
    assert [(ev.type, ev.path) for ev in details.events] == [
        ("run.started", None),
        ("step.started", "greet"),
        ("step.succeeded", "greet"),
        ("step.started", "shout"),
        ("step.succeeded", "shout"),
        ("run.finished", None),
    ]
    ids = [ev.id for ev in details.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert details.events[-1].data == {"status": "success", "output": {"text": "HELLO, ADA!", "length": 11}}
    assert details.run.status == "success" and details.run.finished_at is not None


async def test_a_runs_last_step_commits_with_its_end_on_sqlite(engine):
    e = engine(greet_loudly)
    await (await e.start("greet-loudly", {"name": "Bo"})).result(timeout=5)  # the engine's own start-up writes
    before = e.db.commits

    result = await (await e.start("greet-loudly", {"name": "Ada"})).result(timeout=5)

    # The start, the first step, then the last step with the run's end (PostgreSQL: each its own statement).
    assert e.db.commits - before == (3 if e.db.dialect == "sqlite" else 4)
    details = await e.details(result.run_id)
    assert [s.step_id for s in details.steps] == ["greet", "shout"]
    assert details.steps[-1].output == {"text": "HELLO, ADA!", "length": 11}
    assert (await event_types(e, result.run_id))[-3:] == ["step.started", "step.succeeded", "run.finished"]


class Strict(BaseModel):
    text: str
    words: int


@step(id="loose")
async def loose(ctx: StepContext[Any]) -> dict[str, Any]:
    return {"text": "no word count"}


async def test_a_last_step_is_recorded_when_the_workflows_output_is_invalid(engine):
    e = engine(Workflow(id="bad-output", input=Name, output=Strict).then(greet).then(loose).commit())

    result = await (await e.start("bad-output", {"name": "Ada"})).result(timeout=5)

    assert result.status == "failed"
    details = await e.details(result.run_id)
    # The step succeeded; what failed came after it (the run's output): its result and events are kept.
    assert [(s.step_id, s.output) for s in details.steps] == [
        ("greet", {"text": "Hello, Ada!"}), ("loose", {"text": "no word count"})]
    types = await event_types(e, result.run_id)
    assert types.count("step.succeeded") == 2 and types[-1] == "run.finished"


async def test_a_finished_run_leaves_no_cyclic_garbage_of_the_engines(engine):
    import gc

    from storage.records import RunRecord, StepResultRecord
    from workflows.executor import RunExecution, StartAnnouncement

    e = engine(greet_loudly)
    await (await e.start("greet-loudly", {"name": "warm"})).result(timeout=5)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds goes to gc.garbage instead of being freed
    try:
        for i in range(5):
            await (await e.start("greet-loudly", {"name": f"n{i}"})).result(timeout=5)
        gc.collect()
        ours = [o for o in gc.garbage if isinstance(o, RunExecution | StartAnnouncement | StepResultRecord | RunRecord)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    # A finished run is freed at once, by reference counting: in a cycle (an execution and its step
    # announcements) every run's records waited for the cyclic collector, whose passes took ~6 ms each.
    assert ours == []


async def test_a_hundred_concurrent_runs_all_finish_and_share_commits(engine):
    # Waiters are woken by the engine when their run settles; a long poll keeps 100 of them from
    # flooding the reader pool with fallback polls.
    e = engine(greet_loudly, poll_interval=1.0)
    await e.open()
    commits_before = e.db.commits

    handles = await asyncio.gather(*(e.start("greet-loudly", {"name": f"n{i}"}) for i in range(100)))
    results = await asyncio.gather(*(h.result(timeout=20) for h in handles))

    assert [r.status for r in results] == ["success"] * 100
    assert sorted(r.output["text"] for r in results) == sorted(f"HELLO, N{i}!" for i in range(100))
    # 100 runs x (create + 2 steps + settle) = 400 state changes; group commit shares transactions.
    assert e.db.commits - commits_before < 400


async def test_the_engine_is_an_async_context_manager(db_url):
    async with Engine.from_url(db_url, poll_interval=0.05).register(greet_user) as e:
        result = await (await e.start("greet-user", {"name": "Ada"})).result(timeout=5)
        assert result.status == "success"

    async with Engine.from_url(db_url, poll_interval=0.05).register(greet_user) as again:
        assert (await again.get_run(result.run_id)).output == {"text": "Hello, Ada!"}


async def test_registering_an_uncommitted_workflow_is_refused(engine):
    e = engine()

    with pytest.raises(TypeError, match="commit"):
        e.register(Workflow(id="draft", input=Name).then(greet))  # type: ignore[arg-type]


async def test_list_runs_filters_by_status_and_workflow(engine):
    e = engine(greet_user, greet_loudly)

    a = await (await e.start("greet-user", {"name": "A"})).result(timeout=5)
    b = await (await e.start("greet-loudly", {"name": "B"})).result(timeout=5)

    assert {r.id for r in await e.list_runs()} == {a.run_id, b.run_id}
    assert [r.id for r in await e.list_runs(workflow_id="greet-loudly")] == [b.run_id]
    assert {r.id for r in await e.list_runs(status="success")} == {a.run_id, b.run_id}
    assert await e.list_runs(status="failed") == []


def holding_step() -> tuple[asyncio.Event, list[str], Any]:
    """A workflow whose one step records its input's name, then waits for the gate."""
    gate = asyncio.Event()
    started: list[str] = []

    @step(id="hold", input=Name, output=Greeting)
    async def hold(ctx: StepContext[Name]) -> Greeting:
        started.append(ctx.input.name)
        await gate.wait()
        return Greeting(text=ctx.input.name)

    return gate, started, Workflow(id="held", input=Name).then(hold).commit()


async def test_runs_beyond_capacity_wait_their_turn_and_all_finish(engine):
    gate, started, wf = holding_step()
    e = engine(wf, capacity=2, poll_interval=30.0)
    handles = [await e.start("held", {"name": f"n{i}"}) for i in range(5)]
    await asyncio.sleep(0.2)
    assert sorted(started) == ["n0", "n1"]  # two slots; the other three are pending in the database
    assert [(await e.get_run(h.run_id)).status for h in handles[2:]] == ["pending"] * 3
    gate.set()
    # A finished run frees its slot and wakes the dispatcher at once (its poll interval is 30 s here).
    results = [await h.result(timeout=5) for h in handles]
    assert [r.output for r in results] == [{"text": f"n{i}"} for i in range(5)]


async def test_starts_in_flight_at_once_never_take_more_runs_than_capacity(engine):
    gate, started, wf = holding_step()
    e = engine(wf, capacity=2, poll_interval=30.0)
    # Six starts at once: each one's write is in flight while the others decide whether to execute their run here.
    handles = await asyncio.gather(*(e.start("held", {"name": f"n{i}"}) for i in range(6)))
    await asyncio.sleep(0.2)
    statuses = [(await e.get_run(h.run_id)).status for h in handles]
    assert len(started) == 2 and statuses.count("running") == 2 and statuses.count("pending") == 4, statuses
    gate.set()
    results = [await h.result(timeout=5) for h in handles]
    assert [r.output for r in results] == [{"text": f"n{i}"} for i in range(6)]


def sqlite_path(db_url: str, needs: str = "another process holds SQLite's write lock: writes stay in flight meanwhile") -> str:
    """The test database's file; the test is skipped on another database (``needs``: what it needs SQLite for)."""
    if not db_url.startswith("sqlite"):
        pytest.skip(needs)
    return db_url.split("///", 1)[1]


def run_beside(path: str, sql: str) -> None:
    """A statement from another connection to the file, as another process would send it."""
    with closing_connection(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute(sql)


@contextmanager
def write_lock_held(path: str) -> Iterator[None]:
    """Another process holds the file's write lock: the engine's writes wait (its busy timeout is longer)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("COMMIT")
        other.close()


async def test_starts_made_while_the_dispatcher_claims_and_the_claimed_runs_never_exceed_capacity_together(engine, db_url):
    path = sqlite_path(db_url)
    gate, started, wf = holding_step()
    e = engine(wf, capacity=2, poll_interval=0.3)
    await e.open()
    writer = engine(wf, execute=False)  # another process starts two runs; this one's dispatcher claims them
    waiting = [await writer.start("held", {"name": f"p{i}"}) for i in range(2)]
    with write_lock_held(path):
        await asyncio.sleep(0.8)  # the dispatcher found them ready; its claim waits for the lock
        starting = asyncio.gather(*(e.start("held", {"name": f"s{i}"}) for i in range(2)))
        await asyncio.sleep(0.2)
    handles = await starting
    await asyncio.sleep(0.5)
    statuses = [(await e.get_run(h.run_id)).status for h in [*waiting, *handles]]
    # The starts kept the slots they took; the runs claimed meanwhile went back, pending, for the next claim.
    assert e.executing == 2 and sorted(started) == ["s0", "s1"], (e.executing, started)
    assert statuses == ["pending", "pending", "running", "running"]
    gate.set()
    assert [(await h.result(timeout=10)).status for h in [*waiting, *handles]] == ["success"] * 4


#: The statement that hands a claimed run back (``RunStore.release_run``), as SQLite's trace writes it with its values.
HANDED_BACK = re.compile(r"UPDATE runs SET status='pending', owner=NULL, lease_expires_at=NULL, ready_at=[^,]+, "
                         r"updated_at=[^,]+ WHERE runs\.id = ")


async def test_while_runs_wait_for_capacity_a_claim_holds_its_slots_and_hands_nothing_back(engine, db_url):
    # A burst of starts beyond capacity: the runs turned away wait, pending, and the dispatcher claims them as slots
    # free up. Starts made while such a claim is in flight wait behind those runs, rather than take the slots the
    # claim is filling (it then handed back what it had claimed beyond them, a wasted claim and write each).
    sqlite_path(db_url, needs="SQLite's own trace of the statements")

    @step(id="ask")
    async def ask(ctx: StepContext[Any]) -> Any:
        return await ctx.suspend({"q": "?"})

    e = engine(Workflow(id="asks").then(ask).commit(), capacity=4, poll_interval=30.0)
    await e.open()
    statements: list[str] = []
    raw = e.db._backend._writer_connection().connection.dbapi_connection
    raw.set_trace_callback(statements.append)
    limit = asyncio.Semaphore(12)

    async def start(i: int) -> str:
        async with limit:
            return (await e.start("asks", {}, run_id=f"ask-{i:03}")).run_id

    try:
        ids = await asyncio.gather(*(start(i) for i in range(120)))
        for _ in range(500):
            if await e.store.count_runs("suspended") == len(ids):
                break
            await asyncio.sleep(0.02)
    finally:
        raw.set_trace_callback(None)

    assert await e.store.count_runs("suspended") == len(ids)
    assert any(s.startswith("UPDATE runs SET status='running'") for s in statements)  # (the trace saw the claims)
    assert [s for s in statements if HANDED_BACK.match(s)] == []


async def test_a_start_that_fails_gives_its_slot_back_to_a_run_written_pending_meanwhile(engine, db_url):
    path = sqlite_path(db_url)
    gate, started, wf = holding_step()
    gate.set()
    e = engine(wf, capacity=1, poll_interval=30.0)
    await (await e.start("held", {"name": "first"}, run_id="taken")).result(timeout=5)
    with write_lock_held(path):
        taken = asyncio.ensure_future(e.start("held", {"name": "again"}, run_id="taken"))  # holds the one slot
        await asyncio.sleep(0.1)
        other = asyncio.ensure_future(e.start("held", {"name": "other"}))  # none free: written pending
        await asyncio.sleep(0.1)
    with pytest.raises(UsageError, match="exists already"):
        await taken  # its slot is given back unused
    result = await (await other).result(timeout=3)  # the dispatcher is woken for it (its poll is 30 s)
    assert result.status == "success" and started == ["first", "other"]


async def test_a_start_under_way_when_the_engine_closes_leaves_its_run_to_other_processes(engine, db_url):
    path = sqlite_path(db_url)
    gate, started, wf = holding_step()
    gate.set()
    e = engine(wf, capacity=2)
    other = engine(wf, execute=False)
    await e.open()
    with write_lock_held(path):
        starting = asyncio.ensure_future(e.start("held", {"name": "late"}))  # a slot held, its write waits
        await asyncio.sleep(0.1)
        closing = asyncio.ensure_future(e.close())  # begins before the start's write lands
        await asyncio.sleep(0.1)
    handle, _ = await asyncio.gather(starting, closing)

    run = await other.get_run(handle.run_id)
    # Handed back, not left held by the closed engine (that would wait for its lease, and count as a death), and no
    # task outlives close().
    assert not (run.status == "running" and run.owner == e.owner), (run.status, run.owner)
    assert not e._tasks and started == []


async def test_an_engine_freezes_the_start_up_heap_once_per_process(sqlite_url: str) -> None:
    import gc

    from workflows.heap import THRESHOLDS, freeze_startup_heap

    engine = Engine.from_url(sqlite_url)
    await engine.open()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0  # by this engine or an earlier one in this process: the collector skips that heap
        assert freeze_startup_heap() is False  # once per process: later engines leave it alone
        assert gc.get_freeze_count() == frozen
        assert gc.get_threshold() == THRESHOLDS  # CPython's defaults before: young collections 30x rarer
    finally:
        await engine.close()


async def test_a_start_whose_memory_thread_cannot_be_made_writes_no_run(engine, db_url):
    """The run's memory thread is made before the run: a start that fails there leaves nothing behind (before, the
    run stayed held by this process with no task until its lease ran out)."""
    path = sqlite_path(db_url, "the refusing trigger is written in SQLite's dialect")
    e = engine(greet_user)
    await e.open()
    e.memory = Memory(e.db, last_messages=4, summarize_after_tokens=None)
    refuse = "CREATE TRIGGER refuse_threads BEFORE INSERT ON threads BEGIN SELECT RAISE(ABORT, 'no new threads today'); END"
    run_beside(path, refuse)

    with pytest.raises(Exception, match="no new threads today"):
        await e.start("greet-user", {"name": "Ada"}, thread_id="T1")

    assert [await e.store.count_runs(status) for status in ("running", "pending")] == [0, 0]
    run_beside(path, "DROP TRIGGER refuse_threads")
    handle = await e.start("greet-user", {"name": "Ada"}, thread_id="T1")
    assert (await handle.result(timeout=5)).output == {"text": "Hello, Ada!"}


def test_a_forked_process_counts_its_run_ids_from_a_point_of_its_own():
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of fork() beside threads; the child only writes and exits
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its first id, then out without running anything of the parent's
        try:
            os.write(write, new_run_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = new_run_id()

    assert re.fullmatch(r"[0-9a-f]{16}", child)
    assert child[8:] != parent[8:]  # without a new start the child's first count would be the parent's next
