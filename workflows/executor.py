"""Executing a run = walking its tree, using recorded results where they exist.

Start, resume, wake-up, recovery and re-run are all this one walk: a step with a result at its path is
not run again, its recorded output is used; a step with an open suspension halts its branch; everything
else executes and commits its result (with its events) before the walk goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from storage.faults import describe, refused_data
from storage.records import (
    NewEvent,
    RunProgress,
    RunRecord,
    StepResultRecord,
    SuspensionRecord,
    step_result,
    updated,
)
from storage.runs import FinishedStep, LeaseLost

from .context import Halt, StepContext
from .errors import (
    EventTimeout,
    InvalidInput,
    LoopLimitExceeded,
    OutputInvalid,
    OutputUnstorable,
    RunFailure,
    StepCrashed,
    StepFailed,
    StepTimeout,
    ThreadflowError,
)
from .graph import (
    BranchNode,
    ForeachNode,
    LoopNode,
    MapNode,
    Node,
    ParallelNode,
    SequenceNode,
    SleepNode,
    StepNode,
    WaitForEventNode,
    WorkflowNode,
)
from .observe import emit, observing
from .secrets import redact
from .step import NO_RETRY, Step, checked_dump, dump_value, parse_model, storable, to_jsonable
from .step_call import call_step, failure_message, is_shutdown, timeout_of
from .tracing import scope
from .workflow import CommittedWorkflow, segment_node

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("threadflow.engine")

#: Sleeps shorter than this are slept in-process (still durable: the wake time is committed first).
IN_PROCESS_SLEEP = 1.0

OVERRIDE_PREFIX = "__input__/"
#: Where the branches a ``.branch()`` chose are recorded: ``__branch__/<path>`` (see _choose).
BRANCH_PREFIX = "__branch__/"
#: Where the list a ``foreach(..., items=fn)`` picked is recorded: ``__items__/<path>`` (see _foreach_items).
ITEMS_PREFIX = "__items__/"
#: Where a failed attempt that will be retried is recorded: ``__retry__/<attempt>/<path>`` (see _record_retry).
RETRY_PREFIX = "__retry__/"

#: A step that runs longer than this has its ``step.started`` event written on its own (seconds).
ANNOUNCE_AFTER = 0.05


def join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


class DotDict(dict[str, Any]):
    """A dict whose keys read as attributes, so conditions can say ``x.cost`` on untyped data."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc
        return DotDict(value) if isinstance(value, dict) else value


def view(value: Any, model: type[BaseModel] | None) -> Any:
    """What conditions and map functions receive: the typed model when known, else attribute-friendly data."""
    if model is not None:
        try:
            return model.model_validate(value, by_alias=True, by_name=True)  # recorded data is by field name
        except Exception:  # untyped fallback; the next step validates for real
            pass
    return DotDict(value) if isinstance(value, dict) else value


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class RunExecution:
    """One process executing one run it holds the lease for."""

    #: A step that returns is looked at first (see _check_return): set once the run is lost, or a suspension opened.
    _check_returns = False

    def __init__(
        self, engine: Engine, workflow: CommittedWorkflow, run: RunRecord, progress: RunProgress,
        *, crashed: int | None = None,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.workflow = workflow
        self.run = run
        self.results = dict(progress.results)
        self.suspensions = dict(progress.suspensions)
        self.signals = list(progress.signals)
        #: Decisions recorded before this execution started (a settle must not mistake them for new input).
        self.decided_before = [p for p, susp in progress.suspensions.items() if susp.status == "resolved"]
        self.failure_events: list[NewEvent] = []
        self._announcements: dict[str, StartAnnouncement] = {}
        #: The run as settled by this execution (None until it settles, or if it lost its lease).
        self.final: RunRecord | None = None
        #: The process running this run died this many times without it making progress (the limit): the
        #: first step the walk would execute again fails the run instead (StepCrashed).
        self.crashed = crashed
        #: Recovered from a dead process: its first step's commit starts the count of deaths over.
        self._recovered = run.recoveries > 0
        #: The path of the step nothing runs after (the last of the top sequence), if any: its result commits
        #: with the run's end (``_held`` until then), one commit where there were two.
        self._last_step = last_step_path(workflow)
        self._held: FinishedStep | None = None
        self._held_observe: Step[Any, Any] | None = None
        #: Set once a commit found the run no longer this process's: no step of it may start after that.
        self.lost: LeaseLost | None = None
        #: Some step failed attempts that were retried before this execution (see _wait_out_backoff): only then
        #: does a step look for them (the records are written by the execution that retries, which goes on itself).
        self._retried_before = any(path.startswith(RETRY_PREFIX) for path in self.results)

    # -- the run ---------------------------------------------------------------------------------------

    async def execute(self) -> None:
        try:
            await self._walk_and_settle()
        except LeaseLost:
            # Canceled or taken over by another process: while walking, or when a commit of the run's end (with
            # its last step, held until then) found the run no longer this process's. Nothing of it was written.
            log.info("run %s: lease lost (canceled or taken over); stopping", self.run.id)

    async def _walk_and_settle(self) -> None:
        owner, run_id = self.engine.owner, self.run.id
        try:
            value = await self.exec_node(self.workflow.root, "", self.run.input, self.workflow, self.workflow.input)
            output = dump_value(self.workflow.output, value) if value is not None or self.workflow.output else None
            if self._last_step is None and output is not None:
                output = self._storable_output(output)  # (a last step's output was checked as it returned)
        except Halt as halt:
            await self._settle_halt(halt)
            return
        except LeaseLost:
            raise
        except BaseException as exc:
            if is_shutdown(exc):
                raise
            await self._settle_failed(exc)
            return
        finished = [NewEvent(type="run.finished", data={"status": "success", "output": output})]
        if self._held is not None and not self.store.settles_with_step:
            await self._store_held()  # PostgreSQL: a step and a settle are one statement each (see RunStore.settle)
        held, self._held = self._held, None
        if held is not None:
            try:
                self._settled(await self.store.settle(
                    run_id, owner, "success", finished, output=output, alone=self.engine.executing <= 1, step=held))
            except LeaseLost:
                raise
            except Exception as exc:
                # Not a transient error (those are retried): the last step's own data, most likely. It commits on
                # its own, as any step (a value the database refuses fails the step), then the run settles.
                log.info("run %s: its last step and its end could not commit together (%s); one at a time",
                         run_id, describe(exc))
                self._held = held
                try:
                    await self._store_held()
                except OutputUnstorable as unstorable:
                    await self._settle_failed(unstorable)
                    return
            else:
                self._held_done(held)
                emit("run.finished", workflow_id=self.run.workflow_id, status="success")
                return
        self._settled(await self.store.settle(
            run_id, owner, "success", finished, output=output, alone=self.engine.executing <= 1,
        ))
        emit("run.finished", workflow_id=self.run.workflow_id, status="success")

    def _storable_output(self, output: Any) -> Any:
        """The run's output as its last node (a map, a branch, a foreach) gave it, checked as a step's output is: the
        database would give NaN back as null, and PostgreSQL refuses NaN beside an integer beyond 64 bits."""
        try:
            return checked_dump(output)
        except OutputUnstorable as exc:
            node = last_node(self.workflow)
            unstorable = OutputUnstorable(
                f"The output of workflow {self.workflow.id!r}, as its last node {node.id!r} gave it, cannot be stored: "
                f"{exc.problem}. Return JSON data (dicts, lists, strings, numbers, booleans, None) or a pydantic "
                "model; None or a string for a number that is not finite.", problem=exc.problem)
            unstorable.path = node.id  # type: ignore[attr-defined]
            raise unstorable from exc

    async def fail(self, exc: BaseException) -> None:
        """Fail the run without walking it (its process kept dying before it reached a step)."""
        await self._settle_failed(exc)

    async def _settle_halt(self, halt: Halt) -> None:
        await self._store_held()
        run_id, owner = self.run.id, self.engine.owner
        unreached = [p for p in self.decided_before if p not in self.results]
        if halt.suspended:
            # A person must act: the run is ``suspended`` (listed so, and a waiting caller returns) even while
            # other branches sleep or wait for an event; ``ready_at`` still wakes it when a timer is due.
            self.engine.note_timer(halt.wake_at)
            data: dict[str, Any] = {"paths": halt.suspended, **({"until": halt.wake_at} if halt.wake_at is not None else {}),
                    **({"events": halt.events} if halt.events else {})}
            self._settled(await self.store.settle(
                run_id, owner, "suspended", [NewEvent(type="run.suspended", data=data)],
                ready_at=halt.wake_at, waiting_for=",".join(halt.events) or None, seen=unreached,
            ))
            return
        if halt.wake_at is not None or halt.events:
            self.engine.note_timer(halt.wake_at)
            data = {"until": halt.wake_at, "events": halt.events, "suspended": halt.suspended}
            self._settled(await self.store.settle(
                run_id, owner, "waiting", [NewEvent(type="run.waiting", data=data)],
                ready_at=halt.wake_at, waiting_for=",".join(halt.events) or None, seen=unreached,
            ))
            return
        self._settled(await self.store.settle(
            run_id, owner, "suspended", [NewEvent(type="run.suspended", data={"paths": halt.suspended})],
            seen=unreached,
        ))

    async def _settle_failed(self, exc: BaseException) -> None:
        if self._held is not None:
            try:
                await self._store_held()  # the last step succeeded; what failed came after it (the run's output)
            except OutputUnstorable as unstorable:
                exc = unstorable
        error = error_dict(exc)
        log.info("run %s failed: %s", self.run.id, error["message"])
        events = list(self.failure_events)
        if isinstance(exc, StepCrashed):
            # The run is failed by the engine, not by a step's error: say so in an event of its own.
            events.append(NewEvent(type="run.failed", path=exc.path, data={
                "reason": "crashed", "deaths": exc.deaths, "error": error,
            }))
        events.append(NewEvent(type="run.finished", data={"status": "failed", "error": error}))
        self._settled(await self.store.settle(self.run.id, self.engine.owner, "failed", events, error=error,
                                              alone=self.engine.executing <= 1))
        emit("run.finished", workflow_id=self.run.workflow_id, status="failed")

    def _settled(self, values: dict[str, Any]) -> None:
        """The run as this process just committed it: local waiters get it without reading it back."""
        self.final = updated(self.run, values)

    def output_of(self, step_id: str, caller: str = "") -> Any:
        """The recorded output of step ``step_id`` as the step (or map) at path ``caller`` sees it.

        The nearest one: in the caller's own nested workflow (its foreach item, its loop iteration) first, then in
        the workflows around it; of those, the latest (a loop's last iteration). Another item or iteration of a
        foreach or loop the caller is in is never seen: its ``lookup`` is not the caller's. From the top level
        (``caller`` ""), every record is as near: the latest one anywhere.
        """
        scope = caller.split("/")[:-1]
        best: StepResultRecord | None = None
        best_near = -1
        for rec in self.results.values():
            if rec.step_id != step_id or rec.kind != "step":
                continue
            near = nearness(scope, rec.path)
            if near > best_near or (near == best_near and best is not None and rec.finished_at >= best.finished_at):
                best, best_near = rec, near
        return best.output if best else None

    # -- the walk ----------------------------------------------------------------------------------------

    async def exec_node(
        self, node: Node, prefix: str, value: Any, wf: CommittedWorkflow, upstream: type[BaseModel] | None,
        name: str | None = None,
    ) -> Any:
        path = join(prefix, name or node.id)
        if isinstance(node, StepNode):
            return await self.exec_step(node.step, path, value, wf)
        try:
            return await self._exec_other(node, path, prefix, value, wf, upstream)
        except (Exception, Halt):
            raise
        except BaseException as exc:
            # A condition, map or items function raised SystemExit or the like: it fails the run, not the
            # process (in a parallel branch's task it would otherwise stop the event loop).
            if is_shutdown(exc):
                raise
            raise StepFailed(path, failure_message(exc), type(exc).__name__) from exc

    async def _exec_other(
        self, node: Node, path: str, prefix: str, value: Any, wf: CommittedWorkflow, upstream: type[BaseModel] | None,
    ) -> Any:
        if isinstance(node, SequenceNode):
            model = upstream
            for child in node.children:
                value = await self.exec_node(child, prefix, value, wf, model)
                if not isinstance(child, SleepNode):
                    model = child.output_model
            return value
        if isinstance(node, WorkflowNode):
            inner = node.workflow
            parsed = dump_value(inner.input, parse_model(inner.input, value, f"input of workflow {inner.id!r}"))
            out = await self.exec_node(inner.root, path, parsed, inner, inner.input)
            return dump_value(inner.output, out) if inner.output else out
        if isinstance(node, ParallelNode):
            outs = await self._gather([self.exec_node(c, prefix, value, wf, upstream) for c in node.children])
            return {c.id: o for c, o in zip(node.children, outs, strict=True)}
        if isinstance(node, BranchNode):
            chosen = await self._choose(node, path, value, upstream)
            outs = await self._gather([self.exec_node(n, prefix, value, wf, upstream) for n in chosen])
            return {n.id: o for n, o in zip(chosen, outs, strict=True)}
        if isinstance(node, LoopNode):
            return await self._exec_loop(node, prefix, value, wf, upstream)
        if isinstance(node, ForeachNode):
            return await self._exec_foreach(node, path, prefix, value, wf, upstream)
        if isinstance(node, MapNode):
            return await self._exec_map(node, path, value, upstream)
        if isinstance(node, SleepNode):
            return await self._exec_sleep(node, path, value, upstream)
        if isinstance(node, WaitForEventNode):
            return await self._exec_wait(node, path)
        raise TypeError(f"unknown node {node!r}")

    async def _choose(self, node: BranchNode, path: str, value: Any, upstream: type[BaseModel] | None) -> list[Node]:
        """The branches to run: chosen once, then recorded at the branch's path and reused by every later walk.

        Conditions may be async and ask the outside world (a flag, an API); evaluated again after a resume or a
        restart they could pick another branch, dropping a step a person already approved.
        """
        key = BRANCH_PREFIX + path  # (a step may have the id an unnamed branch got: "branch-1")
        rec = self.results.get(key)
        if rec is not None:
            ids = set(rec.output["chosen"])
            return [n for _, n in node.branches if n.id in ids]
        arg = view(value, upstream)
        chosen = [n for cond, n in node.branches if await maybe_await(cond(arg))]
        record = step_result(
            run_id=self.run.id, path=key, step_id=node.id, kind="branch", output={"chosen": [n.id for n in chosen]},
            attempts=1, started_at=None, finished_at=time.time(),
        )
        await self._store(record, [], progressed=False)
        return chosen

    async def _gather(self, coros: list[Any]) -> list[Any]:
        """Run branches to the end; a failure beats a halt, halts merge (so parallel suspensions all open).

        A branch that finds the run no longer this process's (LeaseLost: canceled, or taken over) stops the
        others at once: nothing they would still start (a foreach's waiting items) may run its step's code.
        """
        if len(coros) == 1:
            return [await coros[0]]
        tasks: list[asyncio.Task[Any]] = []

        async def branch(coro: Any) -> Any:
            try:
                return await coro
            except LeaseLost as exc:
                self.lose(exc)
                for task in tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
                raise

        tasks.extend(asyncio.ensure_future(branch(c)) for c in coros)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if self.lost is not None:
            raise self.lost
        halt: Halt | None = None
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Halt):
                raise r
            if isinstance(r, Halt):
                halt = r if halt is None else halt.merge(r)
        if halt is not None:
            raise halt
        return list(results)

    async def _exec_loop(
        self, node: LoopNode, prefix: str, value: Any, wf: CommittedWorkflow, upstream: type[BaseModel] | None
    ) -> Any:
        model = upstream
        for i in range(node.max_iterations):
            value = await self.exec_node(node.body, prefix, value, wf, model, name=f"{node.body.id}#{i}")
            model = node.body.output_model
            holds = bool(await maybe_await(node.condition(view(value, model))))
            if holds == node.until:
                return value
        raise LoopLimitExceeded(
            f"Loop {join(prefix, node.id)!r} ran {node.max_iterations} times without its condition ending it; "
            "raise max_iterations or change the condition."
        )

    async def _exec_foreach(
        self, node: ForeachNode, path: str, prefix: str, value: Any, wf: CommittedWorkflow,
        upstream: type[BaseModel] | None,
    ) -> Any:
        items = await self._foreach_items(node, path, value, upstream)
        sem = asyncio.Semaphore(node.concurrency)
        failed = False

        async def one(i: int, item: Any) -> Any:
            nonlocal failed
            async with sem:
                if failed:
                    return None  # an item failed, so has the run: the items not started yet do not start
                try:
                    return await self.exec_node(node.body, prefix, item, wf, None, name=f"{node.body.id}[{i}]")
                except Exception:
                    failed = True
                    raise

        return await self._gather([one(i, item) for i, item in enumerate(items)])

    async def _foreach_items(
        self, node: ForeachNode, path: str, value: Any, upstream: type[BaseModel] | None,
    ) -> list[Any]:
        """The items to run the body for. With ``items=``, the list ``items(input)`` gave: picked once, recorded at
        the foreach's path (``__items__/<path>``) and reused by every later walk.

        Like a branch's conditions, the function may ask the outside world (a host inventory); asked again after a
        resume it could give another list, and an approval given for one item would apply to another. The items
        are recorded as JSON data, and every walk (the first included) gives the steps the recorded form.
        """
        if node.items is None:
            return item_list(node, value)  # the incoming value: recorded already (an earlier step's, the run's input)
        key = ITEMS_PREFIX + path
        rec = self.results.get(key)
        if rec is not None:
            return list(rec.output["items"])
        items = item_list(node, await maybe_await(node.items(view(value, upstream))))
        try:
            recorded: list[Any] = storable(to_jsonable_python(items), "items")
        except (PydanticSerializationError, OutputUnstorable) as exc:
            reason = exc.problem if isinstance(exc, OutputUnstorable) else str(exc).splitlines()[0]
            raise InvalidInput(
                f"items of foreach {node.id!r}", f"{reason}. The items are recorded with the run: return JSON data "
                "(dicts, lists, strings, numbers, booleans, None) or pydantic models."
            ) from exc
        record = step_result(
            run_id=self.run.id, path=key, step_id=node.id, kind="items", output={"items": recorded},
            attempts=1, started_at=None, finished_at=time.time(),
        )
        await self._store(record, [], progressed=False)
        return recorded

    async def _exec_map(self, node: MapNode, path: str, value: Any, upstream: type[BaseModel] | None) -> Any:
        arg = view(value, upstream)
        params = len(inspect.signature(node.fn).parameters)
        try:
            result = node.fn(arg, MapContext(self, path)) if params >= 2 else node.fn(arg)
            result = await maybe_await(result)
        except ThreadflowError:
            raise
        except Exception as exc:  # the run's error names the map, as a step's names the step
            raise StepFailed(path, failure_message(exc), type(exc).__name__) from exc
        try:
            return dump_value(node.output, result)
        except Exception as exc:
            raise OutputInvalid(f"Map {node.id!r} returned data that does not fit its output model: {exc}") from exc

    async def _exec_sleep(self, node: SleepNode, path: str, value: Any, upstream: type[BaseModel] | None) -> Any:
        rec = self.results.get(path)
        if rec is None:
            until = _wake_time(node, view(value, upstream))  # ``when(input)`` sees what conditions see
            rec = await self._commit(path, node.id, "sleep", {"until": until}, attempts=1, started=time.time(),
                                     events=[])
        until = float(rec.output["until"])
        remaining = until - time.time()
        if remaining <= 0:
            return value
        if remaining <= IN_PROCESS_SLEEP:
            await asyncio.sleep(remaining)
            return value
        raise Halt(wake_at=until)

    async def _exec_wait(self, node: WaitForEventNode, path: str) -> Any:
        rec = self.results.get(path)
        if rec is not None:
            return rec.output
        susp = self.suspensions.get(path)
        deadline = susp.expires_at if susp is not None else None
        data: Any = None
        found = False
        if susp is not None and susp.status == "resolved":
            if not self._came_late(susp):
                data, found = susp.resume_data, True
        else:
            for sig in self.signals:
                # (One this wait took already, before its result was committed: a process stopped in between.)
                # An event sent once the wait's deadline had passed does not count: the wait timed out.
                if sig.name == node.event and sig.consumed_path in (None, path) and (
                        deadline is None or sig.created_at < deadline):
                    if await self.store.consume_signal(self.run.id, sig.id, path):
                        data, found = sig.data, True
                        if susp is not None:
                            await self.store.resolve_suspension(self.run.id, path, data, "event", [])
                        break
        if not found:
            if susp is None:
                now = time.time()
                susp = SuspensionRecord(
                    run_id=self.run.id, path=path, step_id=node.id, kind="event", event_name=node.event,
                    created_at=now, expires_at=now + node.timeout if node.timeout else None,
                )
                await self.store.open_suspension(susp, self.engine.owner, self.engine.lease_seconds, [
                    NewEvent(type="step.suspended", path=path, data={
                        "step_id": node.id, "event": node.event, "expires_at": susp.expires_at,
                    })
                ])
                self.suspensions[path] = susp
            if susp.expires_at is not None and time.time() >= susp.expires_at:
                timeout = EventTimeout(f"Event {node.event!r} did not arrive within {node.timeout:g} seconds.")
                timeout.path = path
                raise timeout
            raise Halt(events=[node.event], wake_at=susp.expires_at)
        out = dump_value(node.schema, parse_model(node.schema, data, f"event {node.event!r}"))
        rec = await self._commit(path, node.id, "event", out, attempts=1, started=time.time(), events=[
            NewEvent(type="event.received", path=path, data={"step_id": node.id, "event": node.event})
        ])
        return rec.output

    def _came_late(self, susp: SuspensionRecord) -> bool:
        """The event that resolved this wait was sent once its deadline had passed: a wait times out only when the
        run is walked, so one whose deadline passed while nothing walked it (its worker down, a parallel branch
        still at work) is open still, and ``send_event`` resolves it (unless it sees the wait expired first). Not
        an event the wait took from those buffered: it resolved the wait when it took it, and came in time."""
        return (susp.expires_at is not None and susp.resolved_by == "event" and susp.resolved_at is not None
                and susp.resolved_at >= susp.expires_at
                and not any(sig.consumed_path == susp.path for sig in self.signals))

    # -- steps -------------------------------------------------------------------------------------------

    async def exec_step(self, step: Step[Any, Any], path: str, value: Any, wf: CommittedWorkflow) -> Any:
        done = self.results.get(path)
        if done is not None:
            return done.output
        resume_data: Any = None
        payload: Any = None
        susp = self.suspensions.get(path)
        if susp is not None:
            if susp.status == "open":
                raise Halt(suspended=[path])
            resume_data = parse_model(step.resume, susp.resume_data, f"resume data of step {step.id!r}")
            payload = susp.payload
        override = self.results.get(OVERRIDE_PREFIX + path)
        if override is not None:
            value = override.output
        try:
            parsed = step.parse_input(value)
        except InvalidInput as exc:
            self._record_failure(step, path, exc, 1)
            raise
        if self.lost is not None:
            raise self.lost  # a sibling branch found the run canceled or taken over
        if self.crashed is not None:
            # This is where the walk stood each time the process died: do not run it again.
            crashed = StepCrashed(path, self.crashed)
            self._record_failure(step, path, crashed, 1)
            self._observe_step(step, "failed", time.time())
            raise crashed
        # The step's, else its workflow's, else that of a workflow around it (the run's top workflow's last).
        policy = step.retry or wf.options.retry or (
            self.workflow.option_at(path, "retry") if wf is not self.workflow else None) or NO_RETRY
        timeout = timeout_of(step, wf, self.workflow, self.engine.step_timeout)
        # Attempts made before this execution (its process stopped during a backoff): they count, and their
        # backoff is waited out, as if the process had not stopped.
        attempt = await self._wait_out_backoff(path) if self._retried_before else 0
        started = time.time()
        while True:
            attempt += 1
            if attempt > 1 or self._recovered:
                # An earlier attempt may have written to the thread before failing, or before its process died.
                await self.engine.forget_step_writes(self.run, path)
            announcement = self._announce_start(path, step.id, attempt, value if attempt == 1 else _NO_INPUT)
            ctx: StepContext[Any] = StepContext(
                execution=self, step=step, path=path, input=parsed, attempt=attempt,
                resume_data=resume_data, suspend_payload=payload,
            )
            try:
                with scope("step", path=path, step_id=step.id, attempt=attempt):
                    result = await call_step(step, ctx, timeout, self.engine.step_threads)
                if self._check_returns:
                    self._check_return(path)
                output = step.dump_output(result)
            except Halt:
                announcement.flush()
                self._observe_step(step, "suspended", started)
                raise
            except LeaseLost:
                announcement.cancel()
                raise
            except OutputInvalid as exc:
                announcement.flush()
                self._record_failure(step, path, exc, attempt)
                raise
            except BaseException as exc:
                # Whatever the step raised (SystemExit, KeyboardInterrupt, a stray CancelledError included)
                # fails the step, never the process; only a real cancel or a signal to the process goes on.
                if is_shutdown(exc):
                    announcement.cancel()
                    raise
                if self.lost is not None:  # it ended after the run stopped being this process's
                    announcement.cancel()
                    raise self.lost from None
                failure = exc
            else:
                rec = await self._commit(path, step.id, "step", output, attempts=attempt, started=started, events=[
                    *announcement.take(),
                    NewEvent(type="step.succeeded", path=path, data={
                        "step_id": step.id, "output": output, "attempts": attempt,
                        "duration": round(time.time() - started, 6),
                    })
                ], observe=step)
                return rec.output
            announcement.flush()
            if isinstance(failure, StepTimeout):
                emit("step.timeout", workflow_id=self.run.workflow_id, step_id=step.id)
            deliberate = isinstance(failure, RunFailure) and not isinstance(failure, StepTimeout)
            message = failure_message(failure)
            if not deliberate and policy.should_retry(failure, attempt):
                delay = policy.delay(attempt)
                emit("step.retrying", workflow_id=self.run.workflow_id, step_id=step.id, attempt=attempt)
                retry_at = await self._record_retry(step, path, attempt, started, delay, {
                    "step_id": step.id, "attempt": attempt, "error": f"{type(failure).__name__}: {message}",
                    "delay": round(delay, 3), "traceback": traceback_text(failure),
                })
                if delay > IN_PROCESS_SLEEP:
                    # The run gives its slot back, as for a long sleep: it waits, woken when the next attempt is due
                    # (the walk then goes on from the record just committed: see _wait_out_backoff).
                    raise Halt(wake_at=retry_at)
                await asyncio.sleep(delay)
                continue
            self._record_failure(step, path, failure, attempt)
            self._observe_step(step, "failed", started)
            raise StepFailed(path, message, type(failure).__name__, attempt, deliberate=deliberate) from failure

    def lose(self, exc: LeaseLost) -> None:
        """The run is no longer this process's (canceled, taken over, handed back): no step of it starts, and what
        a step that was running does when it ends (it may have ignored its cancel) is not recorded."""
        self.lost = self.lost or exc
        self._check_returns = True

    def _check_return(self, path: str) -> None:
        """A step returned (rather than raising) though the run is no longer this process's, or with a suspension of
        its own open: then its code caught the Halt ``ctx.suspend()`` raises (a bare ``except:``), and it would end
        ``success`` with its approval left waiting for nobody."""
        if self.lost is not None:
            raise self.lost  # stopped while it ran and, swallowing its cancel, abandoned: nothing more is recorded
        opened = self.suspensions.get(path)
        if opened is not None and opened.status == "open":
            raise RunFailure(
                "it called ctx.suspend() and then returned instead of waiting: its code caught the Halt "
                "that suspend() raises (a bare `except:` or `except BaseException:` around it). Catch Exception "
                f"instead, then run it again with `threadflow rerun {self.run.id} --from {path}`."
            )

    async def _record_retry(
        self, step: Step[Any, Any], path: str, attempt: int, started: float, delay: float, data: dict[str, Any],
    ) -> float:
        """Commit that attempt ``attempt`` failed and when the next is due (with its ``step.retrying`` event).

        A process that stops during the backoff (a deploy) hands the run on; the next one goes on from this
        record (see ``_wait_out_backoff``) instead of starting the step over at attempt 1. One record per attempt
        (``__retry__/<n>/<path>``): results are insert-if-absent. Not progress: a step that keeps failing is not
        a run that moves on (the count of its process's deaths goes on)."""
        now = time.time()
        retry_at = now + delay
        event = NewEvent(type="step.retrying", path=path, data={**data, "retry_at": round(retry_at, 3)})
        record = step_result(
            run_id=self.run.id, path=retry_path(path, attempt), step_id=step.id, kind="retry",
            output={"attempt": attempt, "retry_at": retry_at}, attempts=attempt, started_at=started, finished_at=now,
        )
        await self._store(record, [event], progressed=False)
        return retry_at

    async def _wait_out_backoff(self, path: str) -> int:
        """How many attempts at ``path`` failed before this execution; the last one's backoff waited out first
        (here if short, else the run waits, woken when it is over, as a sleep does)."""
        tried = 0
        while retry_path(path, tried + 1) in self.results:
            tried += 1
        if not tried:
            return 0
        retry_at = float(self.results[retry_path(path, tried)].output["retry_at"])
        remaining = retry_at - time.time()
        if remaining > IN_PROCESS_SLEEP:
            raise Halt(wake_at=retry_at)
        if remaining > 0:
            await asyncio.sleep(remaining)
        return tried

    def _announce_start(self, path: str, step_id: str, attempt: int, value: Any = None) -> StartAnnouncement:
        data: dict[str, Any] = {"step_id": step_id, "attempt": attempt}
        if value is not _NO_INPUT:
            data["input"] = to_jsonable(value)  # the step's input, once: the inspector shows it
        announcement = StartAnnouncement(self, path, NewEvent(type="step.started", path=path, data=data, at=time.time()))
        self._announcements[path] = announcement
        return announcement

    def _observe_step(self, step: Step[Any, Any], status: str, started: float) -> None:
        if observing():
            emit("step.finished", workflow_id=self.run.workflow_id, step_id=step.id, status=status,
                 duration=time.time() - started)

    def _record_failure(self, step: Step[Any, Any], path: str, exc: BaseException, attempts: int) -> None:
        if isinstance(exc, ThreadflowError) and getattr(exc, "path", None) is None:
            setattr(exc, "path", path)  # noqa: B010 (error_dict reads it: the run's error names the step)
        self.failure_events.append(NewEvent(type="step.failed", path=path, data={
            "step_id": step.id, "attempts": attempts, "error": f"{type(exc).__name__}: {failure_message(exc)}",
            "traceback": traceback_text(exc),
        }))

    async def _commit(
        self, path: str, step_id: str, kind: str, output: Any, *, attempts: int, started: float, events: list[NewEvent],
        observe: Step[Any, Any] | None = None,
    ) -> StepResultRecord:
        """Commit a finished step's result (``observe``: the step, told to observers as a success once durable)."""
        # Every field is ours and already of its type (the output was dumped by the step): no validation.
        record = step_result(
            run_id=self.run.id, path=path, step_id=step_id, kind=kind, output=output, attempts=attempts,
            started_at=started, finished_at=time.time(),
        )
        progressed, self._recovered = self._recovered, False
        if path == self._last_step and kind == "step":
            # Nothing runs after it: it commits with the run's end, one commit instead of two (see execute).
            self._held = FinishedStep(record, events, self.engine.lease_seconds, progressed)
            self._held_observe = observe
            self.results[path] = record
            return record
        await self._store(record, events, progressed)
        if observe is not None:
            self._observe_step(observe, "success", started)
        self.engine.fault("after_step_commit", run_id=self.run.id, path=path)
        return record

    def _held_done(self, held: FinishedStep) -> None:
        """The held last step is durable: observers hear of it, and the fault point after a step's commit is passed."""
        step, self._held_observe = self._held_observe, None
        if step is not None and held.result.started_at is not None:
            self._observe_step(step, "success", held.result.started_at)
        self.engine.fault("after_step_commit", run_id=self.run.id, path=held.result.path)

    async def _store(self, record: StepResultRecord, events: Sequence[NewEvent], progressed: bool) -> None:
        try:
            await self.store.commit_step(record, self.engine.owner, self.engine.lease_seconds, events,
                                         progressed=progressed, alone=self.engine.executing <= 1)
        except Exception as exc:
            # Transient database errors were retried until the commit worked; what may still fail is the data
            # itself (a value the database refuses): the step's failure, told without SQL.
            if record.kind != "step" or not refused_data(exc):
                raise
            self.results.pop(record.path, None)
            unstorable = OutputUnstorable(
                f"The result of step {record.path!r} could not be stored: {describe(exc)}.", problem=describe(exc))
            unstorable.path = record.path  # type: ignore[attr-defined]
            self.failure_events.append(NewEvent(type="step.failed", path=record.path, data={
                "step_id": record.step_id, "attempts": record.attempts, "error": redact(f"OutputUnstorable: {unstorable}"),
            }))
            raise unstorable from exc
        if progressed:
            self.engine.made_progress(self.run.id)
        self.results[record.path] = record

    async def _store_held(self) -> None:
        """The held last step committed on its own (the run ends some other way than with its settle)."""
        held, self._held = self._held, None
        if held is not None:
            await self._store(held.result, held.events, held.progressed)
            self._held_done(held)

    async def open_suspension(self, step: Step[Any, Any], path: str, payload: Any, ttl: float | None) -> None:
        if self.lost is not None:
            raise self.lost  # (a step abandoned after its run stopped being this process's)
        if ttl is None:
            # The step's, else its own workflow's (a nested one's), else those of the workflows around it.
            ttl = step.suspend_ttl if step.suspend_ttl is not None else self.workflow.option_at(path, "suspend_ttl")
        now = time.time()
        record = SuspensionRecord(
            run_id=self.run.id, path=path, step_id=step.id, kind="suspend", payload=payload, created_at=now,
            expires_at=now + ttl if ttl else None,
        )
        started = self._announcements.pop(path, None)
        self.engine.note_timer(record.expires_at)
        await self.store.open_suspension(record, self.engine.owner, self.engine.lease_seconds, [
            *(started.take() if started is not None else []),
            NewEvent(type="step.suspended", path=path, data={
                "step_id": step.id, "payload": payload, "expires_at": record.expires_at,
            })
        ])
        self.suspensions[path] = record
        self._check_returns = True  # (a step that catches the Halt of ctx.suspend() returns instead: see _check_return)


class StartAnnouncement:
    """A step's ``step.started`` event, written only if the step runs longer than ANNOUNCE_AFTER.

    A quick step's start rides in the same commit as its result (one commit per step); a slow one's is
    queued on its own after the delay, so watchers (the Slack checklist) see it running live.
    """

    def __init__(self, execution: RunExecution, path: str, event: NewEvent) -> None:
        self._execution = execution
        self._path = path
        self._event: NewEvent | None = event
        self.since = time.monotonic()
        execution.engine.announcer.add(self)

    def take(self) -> list[NewEvent]:
        """The event, if not written yet, to commit with the step's next state change."""
        execution = self._execution
        execution.engine.announcer.discard(self)
        if execution._announcements.get(self._path) is self:
            # The execution holds its announcements and each announcement its execution: a cycle, which left
            # every finished run (its records, its results) to the cyclic collector, ~6 ms a collection.
            del execution._announcements[self._path]
        event, self._event = self._event, None
        return [event] if event is not None else []

    def flush(self) -> None:
        """Write the event now (queued; it commits before anything queued after it)."""
        for event in self.take():
            self._execution.store.add_events_nowait(self._execution.run.id, [event])

    def cancel(self) -> None:
        self.take()


class Announcer:
    """Flushes the start announcements of steps running longer than ANNOUNCE_AFTER, with one timer.

    One timer per engine, not one per step: a hundred runs in flight would otherwise push and cancel a
    hundred timers for every round of steps.
    """

    def __init__(self) -> None:
        self._pending: dict[int, StartAnnouncement] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, announcement: StartAnnouncement) -> None:
        self._pending[id(announcement)] = announcement
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(ANNOUNCE_AFTER, self._tick)

    def discard(self, announcement: StartAnnouncement) -> None:
        self._pending.pop(id(announcement), None)

    def _tick(self) -> None:
        self._timer = None
        now = time.monotonic()
        for announcement in [a for a in self._pending.values() if now - a.since >= ANNOUNCE_AFTER]:
            announcement.flush()
        if self._pending:
            oldest = min(a.since for a in self._pending.values())
            delay = max(0.001, oldest + ANNOUNCE_AFTER - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()


class MapContext:
    """The second argument of a two-parameter map function."""

    def __init__(self, execution: RunExecution, path: str = "") -> None:
        self._execution = execution
        self._path = path

    @property
    def run_id(self) -> str:
        return self._execution.run.id

    @property
    def workflow_input(self) -> Any:
        return self._execution.run.input

    def step_output(self, step_id: str) -> Any:
        """The recorded output of an earlier step, the nearest to this map (see ``StepContext.step_output``)."""
        return self._execution.output_of(step_id, self._path)


def nearness(scope: list[str], path: str) -> int:
    """How near the record at ``path`` is to a caller whose path's segments but the last are ``scope``: the number of
    segments their scopes share; -1 if the record lies in another item of a foreach the caller is in (the scopes
    part at two item marks of one node: ``deploy[0]`` and ``deploy[1]``). An earlier iteration of a loop the caller
    is in is as near as the scope around the loop: "refine with the last critique" reads it."""
    segments = path.split("/")[:-1]
    shared = 0
    for mine, theirs in zip(scope, segments, strict=False):
        if mine != theirs:
            other_item = segment_node(mine) == segment_node(theirs) and _ITEM_MARKS.findall(mine) != _ITEM_MARKS.findall(theirs)
            return -1 if other_item else shared
        shared += 1
    return shared


_ITEM_MARKS = re.compile(r"\[\d+\]")


def item_list(node: ForeachNode, value: Any) -> list[Any]:
    """The items a foreach runs its body for: a list, or the one list field of a model (or dict)."""
    items = to_jsonable(value)
    if isinstance(items, dict):
        lists = [v for v in items.values() if isinstance(v, list)]
        if len(lists) == 1:
            items = lists[0]
    if not isinstance(items, list):
        raise InvalidInput(
            f"input of foreach {node.id!r}", "expected a list of items (or a model with one list field); "
            "use .map(...) or foreach(..., items=...) to pick the list."
        )
    return items


def last_step_path(workflow: CommittedWorkflow) -> str | None:
    """The path of the step that ends the workflow (its top sequence's last node, if a step), else None."""
    node: Node | None = workflow.root
    if isinstance(node, SequenceNode):
        node = node.children[-1] if node.children else None
    return node.id if isinstance(node, StepNode) else None


def last_node(workflow: CommittedWorkflow) -> Node:
    """The node whose value is the workflow's output: its top sequence's last node (or its root)."""
    root = workflow.root
    return root.children[-1] if isinstance(root, SequenceNode) and root.children else root


def retry_path(path: str, attempt: int) -> str:
    """Where the failure of attempt ``attempt`` of the step at ``path`` is recorded, when it is retried."""
    return f"{RETRY_PREFIX}{attempt}/{path}"


def _wake_time(node: SleepNode, value: Any) -> float:
    if node.seconds is not None:
        return time.time() + node.seconds
    when = node.until(value) if callable(node.until) else node.until
    if not isinstance(when, datetime):
        raise InvalidInput(f"sleep_until {node.id!r}", f"expected a datetime, got {when!r}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


#: Marks "no input to record" (a retry's start; None is a valid input).
_NO_INPUT: Any = object()
#: Tracebacks kept in events are cut to this many characters (the end, where the error is, is kept).
MAX_TRACEBACK = 16_000


def traceback_text(exc: BaseException) -> str:
    """The exception's traceback as text for the step's failure event (the run inspector shows it), tokens and keys
    masked (an error's text may repeat one)."""
    text = redact("".join(traceback.format_exception(exc)))
    return text if len(text) <= MAX_TRACEBACK else "...\n" + text[-MAX_TRACEBACK:]


def error_dict(exc: BaseException) -> dict[str, Any]:
    """How a failure is stored on the run and shown to people: type, message, and the step's path."""
    path = getattr(exc, "path", None)
    if isinstance(exc, StepFailed):
        return {"type": exc.error_type, "message": str(exc), "path": path, "attempts": exc.attempts}
    kind = type(exc).__name__
    if not isinstance(exc, ThreadflowError | RunFailure):
        return {"type": kind, "message": f"{kind}: {failure_message(exc)}", "path": path}
    return {"type": kind, "message": redact(str(exc)), "path": path}  # (a RunFailure a step raised may name a token)
