"""The engine: the public API (start, resume, cancel, watch, ...) and the dispatcher that executes runs.

Runs are rows; this process is a stateless executor. The dispatcher claims ready runs (new, resumed,
woken, or whose holder's lease ran out), executes each as an asyncio task it keeps a reference to, and
renews leases while they run. Start, resume, wake-up and crash recovery are one mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from storage import Database
from storage.errors import DatabaseUnavailable
from storage.failure_log import FailureLog
from storage.faults import describe
from storage.progress_store import ProgressStore
from storage.records import (
    SETTLED_STATUSES,
    TERMINAL_STATUSES,
    ClaimCandidate,
    NewEvent,
    RunProgress,
    RunRecord,
    SuspensionRecord,
    updated,
)
from storage.runs import CompareAndSetFailed, LeaseLost, RunExists, RunStore
from storage.urls import DEFAULT_DATABASE_URL

from .context import run_thread_id
from .errors import (
    AlreadyResumed,
    InvalidInput,
    NotSuspended,
    NotWaitingForEvent,
    RunFinished,
    RunNotFound,
    StepCrashed,
    UsageError,
    WorkflowNotFound,
)
from .events import WorkflowEvent
from .executor import Announcer, RunExecution
from .graph import Node, WaitForEventNode, WorkflowNode
from .heap import freeze_startup_heap
from .liveness import Liveness
from .observe import emit
from .owners import dead_here, new_owner
from .recovery import Recoveries, default_max_recoveries
from .replicas import Replica
from .rerun import plan_rerun
from .run import RunDetails, RunHandle, RunResult, StepInfo, SuspendedStep
from .step import Step, parse_data
from .step_call import STOP_GRACE, default_step_timeout, failure_message
from .step_threads import StepThreads
from .tracing import scope
from .versions import Registry, VersionInfo, VersionStatus
from .waits import wait_set
from .workflow import CommittedWorkflow, _walk

log = logging.getLogger("threadflow.engine")

FaultHook = Callable[..., None]


#: A NUL or another control character (C0), anywhere in a name.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f]")


def _check_identifier(what: str, value: str | None) -> None:
    """Who and where are short names; a NUL or another control character in one is a caller's mistake
    (and PostgreSQL cannot store NUL in text). (A regular expression: every start and every resume checks a few.)"""
    if value is not None and _CONTROL_CHARACTER.search(value):
        raise InvalidInput(what, f"{what} {value!r} contains a control character; give a plain name or id")


#: Where this process's run ids count from: random, so that two processes' ids differ (see new_run_id).
_run_id_counter = itertools.count(secrets.randbits(32))


def _count_run_ids_afresh() -> None:
    """A forked child counts from a random point of its own, not on from its parent's (the same ids otherwise)."""
    global _run_id_counter
    _run_id_counter = itertools.count(secrets.randbits(32))


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_count_run_ids_afresh)


def new_run_id() -> str:
    """A new run's id: 16 hex digits, the time in seconds (8) and then a counter of this process (8).

    Ids a process makes increase, so a new run's rows land at the end of every index keyed by run id (the
    step results' and the events'), not at a random place in it: a step's commit touches fewer pages, which
    stay in cache, and the index pages fill up instead of splitting half full. The counter starts at a random
    point in each process (and again after a fork): two processes repeat an id only if they make it in the same
    second with the same count. That needs their counters within a second's worth of ids of each other, about
    2 x rate / 2**32 for two processes each making ``rate`` ids a second (and then it may repeat while their rates
    stay alike): rare, not impossible. ``Engine.start`` makes another id from a new random point when its own
    is taken; a caller that passes an id it made here (the bot, the scheduler) gets ``UsageError`` instead.
    """
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{next(_run_id_counter) & 0xFFFFFFFF:08x}"


#: ``Engine(memory=...)``'s default: the engine's own ``Memory`` on its database, made when first needed.
DEFAULT_MEMORY: Any = object()


class Engine:
    """Runs registered workflows durably against one database."""

    def __init__(
        self,
        database: Database | str | None = None,
        *,
        memory: Any = DEFAULT_MEMORY,
        owner: str | None = None,
        lease_seconds: float = 30.0,
        capacity: int = 200,
        poll_interval: float = 1.0,
        execute: bool = True,
        max_recoveries: int | None = None,
        step_timeout: float | None = None,
    ) -> None:
        if database is None or isinstance(database, str):
            database = Database(database or os.environ.get("THREADFLOW_DATABASE_URL") or DEFAULT_DATABASE_URL)
        self.db = database
        self.store = RunStore(database)
        self.owner = owner or new_owner()
        self.lease_seconds = lease_seconds
        self.capacity = capacity
        self.poll_interval = poll_interval
        self.execute_runs = execute
        #: A run whose process died this many times without it making progress fails (per workflow too).
        self.max_recoveries = default_max_recoveries() if max_recoveries is None else max_recoveries
        #: Seconds a step attempt may take when neither the step nor its workflow says (None: no limit).
        self.step_timeout = default_step_timeout() if step_timeout is None else step_timeout
        if self.max_recoveries < 1:
            raise UsageError(f"max_recoveries must be 1 or more (got {self.max_recoveries}): it is how many times a run "
                             "may be taken over from a process that died while executing it.")
        if self.step_timeout is not None and self.step_timeout <= 0:
            raise UsageError("step_timeout must be a positive number of seconds.")
        self.recoveries = Recoveries(self._limit)
        self._memory = memory
        #: Every registered version of every workflow id (new runs take the newest of their id).
        self.registry = Registry()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: The execution each of those tasks runs (once it has one): told when its run is no longer this process's.
        self._executions: dict[str, RunExecution] = {}
        # The lease keeper thread reads the runs held here with ``dict.copy`` (one call, atomic under the GIL).
        self.liveness = Liveness(self.db, self.owner, lease_seconds, capacity, self._tasks.copy, self._lost)
        self._background: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._run_changed: dict[str, RunChanged] = {}
        self.announcer = Announcer()
        #: The last claim found more ready runs than free capacity: a finished run should wake the dispatcher.
        self._backlog = True
        #: Slots held by writes in flight that will execute their run here once committed (a start, a re-run, a
        #: resume's claim): they count toward capacity.
        self._reserved = 0
        #: A start or a resume here found no free slot (not even counting those a claim held), and the claims since
        #: found as many ready runs as free slots: runs wait here for capacity (see _claim_and_spawn).
        self._contended = False
        #: Slots the claims in flight hold (see _claim_and_spawn; ``recover`` may claim beside the dispatcher).
        self._claim_holding = 0
        #: Lists ``recover()`` calls are filling with the runs any claim here takes meanwhile (its dispatcher's too).
        self._recovering: list[list[str]] = []
        self._dispatch_failures = FailureLog(log, "dispatcher iteration")
        self._opened = False
        self._closing = False
        self._next_timer: float | None = None
        self._timers_checked_at = 0.0
        self._open_lock: asyncio.Lock | None = None
        self.faults: dict[str, FaultHook] = {}
        #: Where agent steps publish what they do while they run (their answer as it streams, their tool calls),
        #: for a UI that shows it live; None (the default) leaves agent steps answering in one piece.
        self.progress: ProgressStore | None = None
        self.replica = Replica(self)
        self.replica.registered()
        crash_at = os.environ.get("THREADFLOW_CRASH_AT")
        if crash_at:
            point, _, where = crash_at.partition(":")
            self.faults[point] = _crash_hook(where)

    @classmethod
    def from_url(cls, url: str | None = None, **kwargs: Any) -> Engine:
        """``Engine.from_url("sqlite+aiosqlite:///threadflow.db")``; ``THREADFLOW_DATABASE_URL`` when no URL is given."""
        return cls(url or os.environ.get("THREADFLOW_DATABASE_URL") or DEFAULT_DATABASE_URL, **kwargs)

    # -- registry --------------------------------------------------------------------------------------

    def register(self, *workflows: CommittedWorkflow) -> Engine:
        """Register definitions; a second version of an id goes beside the first (see ``workflows/versions.py``)."""
        try:
            for wf in workflows:
                if not isinstance(wf, CommittedWorkflow):
                    raise TypeError(f"register() takes committed workflows; call .commit() on {wf!r} first.")
                self.registry.add(wf)
        finally:
            self.replica.registered()
        return self

    @property
    def workflows(self) -> dict[str, CommittedWorkflow]:
        """The newest registered version of each workflow id."""
        return self.registry.newest()

    def get_workflow(self, workflow_id: str) -> CommittedWorkflow:
        """The newest registered version of ``workflow_id`` (the one new runs take)."""
        wf = self.registry.get(workflow_id)
        if wf is None:
            raise WorkflowNotFound(workflow_id, list(self.registry.workflow_ids()))
        return wf

    def workflow_of(self, run: RunRecord) -> CommittedWorkflow | None:
        """The definition of the run's own version, if registered here (the one that executes it)."""
        return self.registry.for_run(run)

    def versions(self, workflow_id: str | None = None) -> list[VersionInfo]:
        """Every registered version (of one workflow id, or of all), newest first within an id."""
        return self.registry.infos(workflow_id)

    async def version_status(self) -> list[VersionStatus]:
        """Versions registered here or by live processes, or with unfinished runs, and how many runs each has open."""
        await self.open()
        return await self.replica.report()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def open(self) -> Engine:
        """Migrate the database and start the dispatcher. Every public method calls this for you."""
        if self._opened:
            return self
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._opened:
                return self
            if self.execute_runs:
                # See heap.py: about a fifth of a busy engine's CPU went to full collections. Before the database
                # opens, so its connections and threads are not frozen with the rest (an engine closed later
                # gives them back to the collector; only what existed before it is kept for good).
                freeze_startup_heap()
            await self.db.open()
            self._closing = False
            self._contended = False
            if self.execute_runs:
                loop = asyncio.get_running_loop()
                self.liveness.start()
                self._background = [
                    loop.create_task(self._dispatch_loop(), name="threadflow-dispatcher"),
                    loop.create_task(self._heartbeat_loop(), name="threadflow-heartbeat"),
                    loop.create_task(self.replica.run(), name="threadflow-versions"),
                ]
            self._opened = True
        return self

    async def close(self) -> None:
        """Stop executing; runs this process held are handed back so any process can continue them."""
        if not self._opened:
            # The database may have been opened without the engine (``engine.db.open()``): its commit queue's
            # task must not be left pending when the loop closes.
            await self.db.close()
            return
        self._closing = True
        for task in self._background:
            task.cancel()
        running = dict(self._tasks)
        for run_id in running:
            self._stop_run(run_id, later=False)
        await asyncio.gather(*self._background, return_exceptions=True)
        if running:
            # A step that swallows its cancel would hold close() for ever (a worker's graceful stop on SIGTERM):
            # what has not ended within the grace is abandoned, and its run handed back below with the others.
            await asyncio.wait(running.values(), timeout=RUN_STOP_GRACE)
            for run_id, task in running.items():
                self._abandon(run_id, task)
        self._background = []
        self.announcer.close()
        await self.liveness.stop()
        try:
            await self.store.release_owner(self.owner, "run.released")
            if self.execute_runs:
                await self.replica.withdraw()
        except Exception as exc:  # the database may be gone already; leases expire on their own
            log.warning("could not hand back runs at shutdown: %s", exc)
        if self._memory is not DEFAULT_MEMORY and self._memory is not None and hasattr(self._memory, "close"):
            await self._memory.close()
        await self.db.close()
        self._opened = False

    async def __aenter__(self) -> Engine:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- starting and changing runs -------------------------------------------------------------------

    async def start(
        self,
        workflow_id: str,
        input: Any = None,
        *,
        thread_id: str | None = None,
        resource_id: str | None = None,
        started_by: str | None = None,
        run_id: str | None = None,
    ) -> RunHandle:
        """Validate the input, persist the run, and start executing it here."""
        await self.open()
        wf = self.get_workflow(workflow_id)
        data = wf.parse_input(input if input is not None else {})
        for what, value in (("run id", run_id), ("started_by", started_by), ("thread_id", thread_id),
                            ("resource_id", resource_id)):
            _check_identifier(what, value)
        # The memory thread first: a start that fails there has written nothing (made after the run, it left the run
        # held here with no task until its lease ran out). A thread made for a start that then fails is only a name.
        await self._ensure_thread(thread_id, resource_id)
        chosen = run_id
        for attempt in itertools.count(1):
            run_id = chosen or new_run_id()
            with self._slot() as mine:
                row = self._new_run_row(run_id, wf, data, thread_id, resource_id, started_by, mine=mine)
                try:
                    await self.store.create_run(row, [NewEvent(type="run.started", data={
                        "workflow_id": wf.id, "input": data, "started_by": started_by, "thread_id": thread_id,
                        "version": wf.version, "fingerprint": wf.fingerprint,
                    })], alone=not self._tasks)
                except RunExists:
                    if chosen is None and attempt < 3:
                        # Another process made the same id in the same second: their counters may run close together
                        # for a while, so count on from a new random point rather than from the next count.
                        _count_run_ids_afresh()
                        continue
                    raise UsageError(f"A run with id {run_id!r} exists already; choose another run id.") from None
                emit("run.started", workflow_id=wf.id)
                await self._place_new_run(run_id, mine, fresh=True, run=RunRecord.model_validate(row) if mine else None)
            return RunHandle(self, run_id)
        raise AssertionError("unreachable")

    def _new_run_row(
        self, run_id: str, wf: CommittedWorkflow, data: Any, thread_id: str | None, resource_id: str | None,
        started_by: str | None, *, mine: bool, **extra: Any,
    ) -> dict[str, Any]:
        """A new run's row: held by this process (``mine``: a slot is held for it) or pending for any."""
        now = time.time()
        return {
            "id": run_id, "workflow_id": wf.id, "workflow_version": wf.version, "workflow_fingerprint": wf.fingerprint,
            "status": "running" if mine else "pending", "input": data,
            "thread_id": thread_id, "resource_id": resource_id, "started_by": started_by,
            "owner": self.owner if mine else None, "lease_expires_at": now + self.lease_seconds if mine else None,
            "ready_at": now, "created_at": now, "updated_at": now, **extra,
        }

    async def resume(
        self, run_id: str, step: str | None = None, data: Any = None, *, by: str | None = None
    ) -> RunHandle:
        """Resume one open suspension of a run (the only one, or the one at ``step``: a step id or path).

        ``data`` is validated against the step's ``resume`` model; invalid data raises InvalidInput and the
        run stays suspended. Of two concurrent resumes of one suspension exactly one wins; the other raises
        AlreadyResumed naming who won.
        """
        await self.open()
        _check_identifier("by", by)
        # Room to execute the run here once resumed: a slot is held from now on and the run is read with what it
        # has done, so it starts from that without a second read. In a burst the free slots fill this way; the
        # other resumes read only the run and its suspensions, and leave their runs to the dispatcher.
        with self._slot() as hold:
            return await self._resume(run_id, step, data, by, hold=hold)

    async def _place_new_run(self, run_id: str, mine: bool, *, fresh: bool, run: RunRecord | None = None) -> None:
        """A run just written (a start, a re-run): its task starts here if it was written as this process's (``mine``),
        unless the engine began closing meanwhile (then it is handed back); else the dispatcher is told it waits."""
        if mine and self._closing:
            await self._hand_back(run_id)
        elif mine:
            self._spawn(run_id, fresh=fresh, run=run)
        else:
            self._backlog = True
            self._wake.set()

    async def _hand_back(self, run_id: str) -> None:
        """A run written as this process's that it will not execute (the engine began closing, or a claim found its
        slots taken meanwhile): handed back, ``pending`` for any process, rather than left held until its lease ran
        out (or started as a task nothing will cancel)."""
        try:
            await self.store.release_run(run_id, self.owner)
        except Exception as exc:  # the database is closing too: the lease runs out instead
            log.warning("run %s: could not hand back a run this process will not execute: %s", run_id, exc)
        self._changed(run_id)

    @contextmanager
    def _slot(self) -> Iterator[bool]:
        """Hold one of this process's slots, if one is free (True), while a run is written as this process's (a start,
        a re-run, a resume's claim) and until its task takes the slot: writes in flight at once each see the slots
        the others hold, so together they never exceed ``capacity``; a run that finds none is written pending, for
        the dispatcher of any process."""
        hold = self._room_to_execute()
        if not hold and self.execute_runs and not self._closing and self._free_slots() + self._claim_holding <= 0:
            self._contended = True  # no slot free, and not only because a claim in flight holds them
        self._reserved += hold
        try:
            yield hold
        finally:
            self._reserved -= hold
            if hold and self._backlog:
                self._wake.set()  # given back unused (the write failed), a run written pending may take it now

    def _room_to_execute(self) -> bool:
        """A free slot to execute one more run here (this process executes runs and is not closing)."""
        return self.execute_runs and not self._closing and self._free_slots() > 0

    def _free_slots(self) -> int:
        """Slots neither a run's task nor a write in flight holds (below zero if more are held than ``capacity``)."""
        return self.capacity - len(self._tasks) - self._reserved

    async def _resume(self, run_id: str, step: str | None, data: Any, by: str | None, *, hold: bool) -> RunHandle:
        progress: RunProgress | None = None
        if hold:
            found, progress = await self.store.run_and_progress(run_id)
            suspensions = list(progress.suspensions.values())
        else:
            found, suspensions = await self.store.run_and_suspensions(run_id)
        if found is None:
            raise RunNotFound(run_id)
        run = found
        all_susp = [s for s in suspensions if s.kind == "suspend"]
        if run.is_terminal and (step is None or not any(step in (s.path, s.step_id) for s in all_susp)):
            raise NotSuspended(f"Run {run_id} is {run.status}; only a suspended run can be resumed.")
        target = _pick_suspension(run, all_susp, step)
        if target.status == "resolved":
            raise AlreadyResumed(run_id, target.path, target.resolved_by, target.resolved_at)
        if run.is_terminal:
            raise NotSuspended(f"Run {run_id} is {run.status}; only a suspended run can be resumed.")
        # The run's own version (never another one's reading of its paths); if this process lacks it, the
        # error names it and what is registered, and nothing is consumed: the decision can be given again.
        wf = await self.replica.definition_for(run)
        step_def = wf.find_step_at(target.path)  # by path: nested workflows may each have a step of this id
        model = step_def.resume if step_def else None
        data = data if data is not None else {}
        if by is not None and isinstance(data, dict) and model is not None:
            if "by" in model.model_fields and "by" not in data:
                data = {**data, "by": by}  # the step's resume model wants to know who decided
            elif "by" not in model.model_fields and data.get("by") == by:
                # Who decided is recorded with the resume itself; a model without the field is not asked for it.
                data = {k: v for k, v in data.items() if k != "by"}
        json_data = parse_data(model, data, f"resume data for step {target.step_id!r}")
        self.fault("before_resume_commit", run_id=run_id, path=target.path)
        # Claim the run in the same transaction when this process has room to execute it right away (held since
        # the read, or free now).
        extra = not hold and self._room_to_execute()
        self._reserved += extra
        now = time.time()
        try:
            # With its progress read, claimed only if the run is as read (``seen_at``): then that is all it has
            # done (otherwise it is left to the dispatcher, which reads it afresh).
            claimed = await self.store.resolve_suspension(
                run_id, target.path, json_data, by, [NewEvent(
                    type="run.resumed", path=target.path, data={"step_id": target.step_id, "by": by, "data": json_data},
                )],
                # (Closing since the slot was held: close() may have handed this process's runs back already.)
                claim_for=self.owner if (hold and not self._closing) or extra else None, lease=self.lease_seconds,
                seen_at=run.updated_at if progress is not None else None, now=now,
            )
        except CompareAndSetFailed as exc:
            current = exc.current
            if current is not None and current.status == "resolved":
                raise AlreadyResumed(run_id, target.path, current.resolved_by, current.resolved_at) from None
            raise NotSuspended(f"Run {run_id} can no longer be resumed (it was canceled or finished).") from None
        finally:
            self._reserved -= extra
        if claimed and self._closing:
            await self._hand_back(run_id)
        elif claimed:
            if progress is not None:
                resolved = updated(target, {
                    "status": "resolved", "resolved_by": by, "resolved_at": now, "resume_data": json_data,
                })
                progress = RunProgress.model_construct(
                    results=progress.results, suspensions={**progress.suspensions, target.path: resolved},
                    signals=progress.signals)
            self._spawn(run_id, fresh=False, run=updated(run, {
                "status": "running", "owner": self.owner, "waiting_for": None, "updated_at": now, "ready_at": now,
                "lease_expires_at": now + self.lease_seconds,
            }), progress=progress)
            self._changed(run_id, wake=False)
        else:
            self._changed(run_id)
        decision = json_data.get("approved") if isinstance(json_data, dict) else None
        emit("approval.decided", workflow_id=wf.id, step_id=target.step_id, by=by,
             decision="resumed" if decision is None else "approved" if decision else "rejected")
        return RunHandle(self, run_id)

    async def send_event(self, run_id: str, name: str, data: Any = None) -> str:
        """Deliver an event a run waits for (``.wait_for_event(name)``); buffered if it is not waiting yet."""
        await self.open()
        found, suspensions = await self.store.run_and_suspensions(run_id)
        if found is None:
            raise RunNotFound(run_id)
        run = found
        if run.is_terminal:
            raise NotWaitingForEvent(f"Run {run_id} is {run.status}; it cannot receive event {name!r}.")
        wf = await self.replica.definition_for(run)
        nodes = [n for n in _all_nodes(wf) if isinstance(n, WaitForEventNode) and n.event == name]
        if not nodes:
            raise UsageError(f"Workflow {wf.id!r} never waits for event {name!r}; nothing would receive it.")
        # A wait whose deadline passed while nothing walked the run (its worker down, a parallel branch at work)
        # is open still; it times out when the run is walked, and an event sent after its deadline does not count.
        now = time.time()
        waits = [s for s in suspensions if s.kind == "event" and s.status == "open" and s.event_name == name]
        if waits and all(s.expires_at is not None and s.expires_at <= now for s in waits):
            ago = now - max(s.expires_at or now for s in waits)
            raise NotWaitingForEvent(
                f"Run {run_id} no longer waits for event {name!r}: the wait timed out {ago:.1f} s ago, so the run "
                "fails with EventTimeout and this event was not delivered.")
        json_data = _event_data(wf, nodes, suspensions, name, data if data is not None else {})
        try:
            outcome = await self.store.send_signal(run_id, name, json_data, [])
        except CompareAndSetFailed:
            raise NotWaitingForEvent(f"Run {run_id} finished; it cannot receive event {name!r}.") from None
        self._changed(run_id)
        return outcome

    async def cancel(self, run_id: str, *, by: str | None = None) -> RunResult:
        """Cancel a running, waiting or suspended run. Cancel is final: nothing overwrites it."""
        await self.open()
        try:
            await self.store.cancel(run_id, by, [NewEvent(type="run.canceled", data={"by": by})])
        except CompareAndSetFailed as exc:
            if exc.current is None:
                raise RunNotFound(run_id) from None
            raise RunFinished(f"Run {run_id} is already {exc.current}; it cannot be canceled.") from None
        self._stop_run(run_id)
        self._changed(run_id)
        run = await self.get_run(run_id)
        emit("run.finished", workflow_id=run.workflow_id, status="canceled")
        return await self.result_of(run)

    async def rerun(self, run_id: str, from_step: str, input: Any = None, *, started_by: str | None = None) -> RunHandle:
        """Start a new run of the workflow's newest version that reuses the results recorded before ``from_step``.

        A stranded run (unfinished, its version registered nowhere) is *moved*: it is canceled in the same
        transaction, so what waited on the old version now waits, or goes on, on the new one.
        """
        await self.open()
        original = await self.get_run(run_id)
        wf = self.get_workflow(original.workflow_id)
        progress = await self.store.load_progress(run_id)
        new_id = new_run_id()
        copied, override_path, step_def = plan_rerun(wf, original, progress, from_step)
        data = original.input if original.workflow_fingerprint == wf.fingerprint else wf.parse_input(
            original.input, known_keys_only=False)
        override = None
        if input is not None:
            model = step_def.input if step_def else None
            override = parse_data(model, input, f"input of step {from_step!r}")
        moved = await self.replica.is_stranded(original)
        # A moved run is still the requester's (who may decide its approvals by default); the mover is named on the
        # old run's cancel. A rerun proper is started by whoever asked for it.
        starter = (original.started_by or started_by) if moved else (started_by or original.started_by)
        with self._slot() as mine:
            row = self._new_run_row(new_id, wf, data, original.thread_id, original.resource_id,
                                    starter, mine=mine, rerun_of=run_id, rerun_from=override_path)
            supersede = (run_id, NewEvent(type="run.canceled", data={
                "by": started_by or original.started_by, "moved_to": new_id})) if moved else None
            try:
                await self.store.create_rerun(row, copied, override_path if override is not None else None, override, [
                    NewEvent(type="run.started", data={
                        "workflow_id": wf.id, "input": data, "rerun_of": run_id, "rerun_from": override_path,
                        "started_by": row["started_by"], "version": wf.version, "fingerprint": wf.fingerprint,
                    })
                ], supersede=supersede)
            except CompareAndSetFailed as exc:
                raise RunFinished(f"Run {run_id} finished ({exc.current}) while it was being moved; nothing was created.") from None
            if moved:
                self._changed(run_id)
            await self._place_new_run(new_id, mine, fresh=False)
        return RunHandle(self, new_id)

    async def recover(self) -> list[str]:
        """Continue runs whose holder died (a crashed process on this host, or an expired lease elsewhere).

        An engine that executes runs claims them and executes them here. One that does not (``execute=False``:
        processes that do are running) only hands back the runs of dead processes and returns the runs now
        ready for those processes: nothing is executed twice by a command racing a live dispatcher.
        """
        # Opening starts the dispatcher, whose first claim may take the runs before this call's own claim does:
        # they are recovered all the same (and reported), not lost to a race.
        claimed: list[str] = []
        self._recovering.append(claimed)
        try:
            await self.open()
            released = await self._reap_dead_owners()
            if not self.execute_runs:
                ready = await self.store.ready_ids()
                return list(dict.fromkeys([*released, *ready]))
            await self._claim_and_spawn()
            return list(dict.fromkeys(claimed))
        finally:
            self._recovering = [other for other in self._recovering if other is not claimed]  # (by identity)

    async def live_executors(self, *, fingerprint: str | None = None, workflow_id: str | None = None) -> list[str]:
        """Other running processes (``serve``, ``worker``) that execute runs of a version (by ``fingerprint``), of
        a workflow id, or of anything: their owner names, from ``served_versions``. Does not start executing here.

        A process on this host that no longer exists is left out: killed, it could not withdraw its versions, and
        its rows look live until they expire (a command would queue a run for it and wait in vain).
        """
        await self.db.open()
        live = await self.replica.store.live(workflow_id)
        owners = {v.owner for v in live if fingerprint is None or v.fingerprint == fingerprint} - {self.owner}
        return sorted(owner for owner in owners if not dead_here(owner))

    # -- reading -------------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        await self.open()
        run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def list_runs(self, status: str | None = None, workflow_id: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Recent runs, newest first. ``status="stranded"``: unfinished runs whose version neither a live
        process nor this one has (oldest first), the ones nothing will continue."""
        await self.open()
        if status == "stranded":
            return await self.replica.store.stranded(self.replica.mine(), limit, workflow_id)
        return await self.store.list_runs(status=status, workflow_id=workflow_id, limit=limit)

    async def suspensions(self, run_id: str) -> list[SuspensionRecord]:
        """The run's suspensions, open and resolved (who resumed them, with what)."""
        await self.get_run(run_id)
        return list(await self.store.suspensions_of(run_id))

    async def details(self, run_id: str) -> RunDetails:
        run = await self.get_run(run_id)
        progress = await self.store.load_progress(run_id)
        steps = sorted((StepInfo.from_record(r) for r in progress.results.values() if r.kind not in _NOT_STEPS),
                       key=lambda s: s.finished_at)
        events = [WorkflowEvent.from_record(e) for e in await self.store.read_events(run_id, 0, 100_000)]
        return RunDetails(run=run, steps=steps, suspensions=list(progress.suspensions.values()), events=events)

    async def result_of(self, run: RunRecord) -> RunResult:
        error = run.error or {}
        suspended: list[SuspendedStep] = []
        if run.status in ("suspended", "waiting"):
            suspended = [SuspendedStep.from_record(s) for s in await self.store.open_suspensions(run.id)]
        return RunResult(
            run_id=run.id, workflow_id=run.workflow_id, status=run.status, output=run.output,
            error=error.get("message"), error_type=error.get("type"), error_path=error.get("path"), suspended=suspended,
        )

    @property
    def executing(self) -> int:
        """How many runs this process is executing right now."""
        return len(self._tasks)

    def handle(self, run_id: str) -> RunHandle:
        return RunHandle(self, run_id)

    async def wait_for(self, run_id: str, timeout: float | None = None) -> RunResult:
        """Wait until the run is finished or suspended (or waits for an event), then return its result."""
        await self.open()
        deadline = None if timeout is None else time.monotonic() + timeout
        final: RunRecord | None = None
        while True:
            # Fetched each time: the executor drops a run's event when its task ends.
            event = self._run_changed.setdefault(run_id, RunChanged())
            event.clear()
            local = run_id in self._tasks
            # A run executing here is still running (its task ends after it settles, and hands the settled
            # record to this waiter): no need to read it. Any other run is read from the database.
            run = final if final is not None else None if local else await self.get_run(run_id)
            final = None
            if run is not None and (
                run.status in SETTLED_STATUSES or (run.status == "waiting" and run.waiting_for)
            ):
                if run_id not in self._tasks:
                    self._run_changed.pop(run_id, None)
                return await self.result_of(run)
            # A run executing here wakes this waiter itself; only runs elsewhere need polling (cheaply:
            # hundreds of waiters polling fast would starve the event loop and the leases with it).
            wait = max(2.0, 10 * self.poll_interval) if local else self.poll_interval / 2
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status = run.status if run is not None else "running"
                    raise TimeoutError(f"Run {run_id} is still {status} after {timeout} seconds.")
                wait = min(wait, remaining)
            await wait_set(event, wait)
            final = event.final

    async def watch(self, run_id: str, after: int = 0, *, follow: bool = False) -> AsyncIterator[WorkflowEvent]:
        """Yield the run's events from offset ``after``, live, until the run finishes (forever with ``follow``)."""
        # A run that has finished has written all its events (its final one with its end): what is after ``after``
        # is read, and nothing is waited for (a watcher reconnecting from the final event's id gets nothing more).
        ended = (await self.get_run(run_id)).is_terminal and not follow
        last = after
        while True:
            version = self.db.changes.version
            records = await self.store.read_events(run_id, last)
            for record in records:
                last = record.id
                ev = WorkflowEvent.from_record(record)
                yield ev
                if ev.is_final and not follow:
                    return
            if not records:
                if ended:
                    return
                await self.db.changes.wait(version, self.poll_interval / 2)

    # -- memory and faults -----------------------------------------------------------------------------

    @property
    def memory(self) -> Any:
        """The shared memory threads (``workflows.memory.Memory``) agent steps read and write, if any: unless the
        engine was given one (or ``memory=None``: none), its own on the engine's database, made when first needed,
        so the agent steps of a run share its thread and record what they were given with the library alone."""
        if self._memory is DEFAULT_MEMORY:
            from .memory import Memory

            self._memory = Memory(self.db)
        return self._memory

    @memory.setter
    def memory(self, value: Any) -> None:
        self._memory = value

    def thread_memory(self, thread_id: str | None, resource_id: str | None, **bind: Any) -> Any:
        if thread_id is None or self.memory is None:
            return None
        return self.memory.thread(thread_id, resource_id, **bind)

    async def forget_step_writes(self, run: RunRecord, path: str) -> None:
        """What an unfinished attempt of the step at ``path`` wrote to the run's memory thread (an agent's turn), gone
        before the step runs again: the thread holds each step's turn once, as its last attempt wrote it."""
        store = getattr(self.memory, "store", None)
        if store is not None and hasattr(store, "forget_step_messages"):
            await store.forget_step_messages(run_thread_id(run.thread_id, run.id), run.id, path)

    async def _ensure_thread(self, thread_id: str | None, resource_id: str | None) -> None:
        if thread_id is not None and self.memory is not None and hasattr(self.memory, "ensure_thread"):
            await self.memory.ensure_thread(thread_id, resource_id)

    def fault(self, point: str, **info: Any) -> None:
        """A named fault-injection point (tests make a process crash exactly here)."""
        hook = self.faults.get(point)
        if hook is not None:
            hook(point=point, **info)

    # -- the dispatcher ---------------------------------------------------------------------------------

    def note_timer(self, at: float | None) -> None:
        """A run here started waiting until ``at``: make sure the dispatcher wakes then."""
        if at is not None and (self._next_timer is None or at < self._next_timer):
            self._next_timer = at
            self._wake.set()

    def _changed(self, run_id: str, *, wake: bool = True) -> None:
        """Tell waiters the run changed; ``wake``: the dispatcher may have something to claim."""
        event = self._run_changed.get(run_id)
        if event is not None:
            event.set()
        if wake:
            self._wake.set()

    def _spawn(
        self, run_id: str, *, fresh: bool, run: RunRecord | None = None, progress: RunProgress | None = None,
    ) -> None:
        if run_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._execute(run_id, fresh, run, progress),
                                                      name=f"threadflow-run-{run_id}")
        self._tasks[run_id] = task

    async def _execute(
        self, run_id: str, fresh: bool, run: RunRecord | None = None, progress: RunProgress | None = None,
    ) -> None:
        """Execute a run this process holds: ``run`` is its record when the caller just wrote it (a fresh start,
        a resume's or a claim's transaction), ``progress`` what it has done when the claim read it too."""
        execution: RunExecution | None = None
        try:
            if run is None:
                run = await self.store.get_run(run_id)
            if run is None or run.owner != self.owner or run.status != "running":
                return
            wf = self.registry.for_run(run)
            if wf is None:  # claims take only runs of registered versions; a racing change of the registry
                log.warning("run %s: its version of workflow %r is not registered here; handing it back", run_id,
                            run.workflow_id)
                await self.store.release_run(run_id, self.owner)
                return
            if progress is None:
                progress = RunProgress(results={}, suspensions={}, signals=[]) if fresh else await self.store.load_progress(run_id)
            limit = self._limit(wf.id)
            if run.recoveries:
                emit("run.recovered", workflow_id=run.workflow_id, recoveries=run.recoveries)
                log.warning("run %s: recovered after its process died (%d time(s) without progress; the limit is %d)",
                            run_id, run.recoveries, limit)
            execution = RunExecution(self, wf, run, progress, crashed=run.recoveries if run.recoveries >= limit else None)
            self._executions[run_id] = execution
            with scope("run", run_id=run_id, workflow_id=run.workflow_id):  # (the run's fields on its log lines)
                if run.recoveries > limit:
                    # It died again after reaching its limit, before it got to a step: fail it without walking.
                    await execution.fail(StepCrashed(None, run.recoveries))
                else:
                    await execution.execute()
        except asyncio.CancelledError:
            pass
        except DatabaseUnavailable as exc:
            # An outage past the retries of a read (the run's record, its progress): not the run's fault. It is handed
            # back for the next claim (here or anywhere) once the database answers; failing that, its lease runs out.
            log.warning("run %s: the database stayed unavailable while it was being executed (%s); handing it back",
                        run_id, exc)
            if self._tasks.get(run_id) is asyncio.current_task():
                with contextlib.suppress(Exception):
                    await self.store.release_run(run_id, self.owner)
        except Exception as exc:
            log.exception("run %s: unexpected error in the executor", run_id)
            if self._tasks.get(run_id) is asyncio.current_task():  # (not if abandoned: the run is not its own)
                await self._fail_unexpectedly(run_id, exc, execution)
        finally:
            if self._executions.get(run_id) is execution and (  # (else abandoned: _abandon did what follows)
                    execution is not None or self._tasks.get(run_id) is asyncio.current_task()):
                self._tasks.pop(run_id, None)
                self._executions.pop(run_id, None)
                self.made_progress(run_id)
                final = execution.final if execution is not None else None
                # Wake the dispatcher if capacity just freed up for runs waiting for it, or if input arrived
                # while this run executed (it settled as pending and must be picked up again).
                if self._backlog or (final is not None and final.status == "pending"):
                    self._wake.set()
                event = self._run_changed.pop(run_id, None)
                if event is not None:
                    event.final = final
                    event.set()

    async def _fail_unexpectedly(self, run_id: str, exc: Exception, execution: RunExecution | None) -> None:
        """An error of the engine's own (a step's errors fail their step) stopped the run's execution: the run fails,
        naming it, if it is still this process's (the settle is fenced). Left ``running`` under a lease nobody
        renews, it would be taken over every lease as if its process had died, fail the same way, and end as
        StepCrashed ("the process running it died N times") minutes later."""
        kind = type(exc).__name__
        error = {"type": kind, "path": None, "message": (
            f"threadflow failed while executing this run ({kind}: {failure_message(exc)}); the log of process "
            f"{self.owner} has the traceback. Once that is fixed, re-run it with `threadflow rerun {run_id} --from "
            "STEP`.")}
        events = [*(execution.failure_events if execution is not None else []),
                  NewEvent(type="run.finished", data={"status": "failed", "error": error})]
        try:
            values = await self.store.settle(run_id, self.owner, "failed", events, error=error)
        except LeaseLost:
            return  # no longer this process's (canceled, taken over, or it settled before the error)
        except Exception as again:  # the database refuses even that: the lease runs out, as before
            log.warning("run %s: could not record its failure either: %s", run_id, describe(again))
            return
        if execution is not None:
            execution.final = updated(execution.run, values)
            emit("run.finished", workflow_id=execution.run.workflow_id, status="failed")

    async def _claim_and_spawn(self) -> list[str]:
        free = self._free_slots()
        if free <= 0:
            self._backlog = True
            return []
        if self._backlog and self._tasks and free < max(1, self.capacity // 4):
            # Runs are waiting for capacity and slots free up every moment: claim them a few at a time
            # rather than one commit per finished run (a burst of 1,800 resumes is 1,800 claims otherwise).
            await asyncio.sleep(BACKLOG_GATHER_SECONDS)
            free = self._free_slots()
            if free <= 0:
                return []
        if not self._backlog and not await self.store.has_ready():
            return []
        free = self._free_slots()  # (starts may have taken slots meanwhile)
        if free <= 0:
            self._backlog = True
            return []
        recovered: dict[str, bool] = {}
        # While runs wait here for capacity (this process turned runs away for want of a slot, a burst of starts or
        # resumes, and its claims since found at least as many ready runs as free slots), the claim holds the slots
        # it may fill while it is in flight, as a start or a resume holds its own: those made meanwhile queue behind
        # the runs waiting longest, rather than take slots the claim then finds gone and hands back what it took,
        # one write each (starting 2,000 runs 200 at a time: 56 such hand-backs). Otherwise a start or a resume
        # takes a free slot at once, its run not kept waiting for a claim that may find nothing.
        holding = free if self._contended else 0
        self._contended = False  # (set again by a start or a resume that finds no slot meanwhile)
        self._reserved += holding
        self._claim_holding += holding
        try:
            # The claim returns each run as claimed and what it has done (read in its transaction): the runs start
            # at once, without reading their rows again.
            claimed = await self.store.claim_runs(self.owner, free, self.lease_seconds, pick=lambda candidates: (
                self.recoveries.pick(self._not_executing(candidates), recovered)))
        except BaseException:
            self._contended = self._contended or holding > 0  # (as it was: nothing was claimed)
            raise
        finally:
            self._reserved -= holding
            self._claim_holding -= holding
        # Starts and resumes may have taken slots while the claim was in flight (unless it held them; or capacity was
        # lowered): runs claimed beyond the slots still free are handed back, for the next claim here or in any
        # process, so capacity is never exceeded.
        room = max(0, self._free_slots())
        kept, extra = claimed[:room], claimed[room:]
        self._backlog = len(claimed) >= free or bool(extra)
        self._contended = self._contended or (holding > 0 and self._backlog)
        for run, progress in kept:
            self.recoveries.claimed(run.id, recovered)
            self._spawn(run.id, fresh=False, run=run, progress=progress)
        for run, _ in extra:
            await self._hand_back(run.id)
        taken = [run.id for run, _ in kept]
        for recovering in self._recovering:
            recovering.extend(taken)
        return taken

    def _not_executing(self, candidates: list[ClaimCandidate]) -> list[ClaimCandidate]:
        """The candidates of a claim but those executing here: a run this process executes is a candidate only when
        its lease ran out because the database stalled past it (the lease keeper could not renew it); its holder is
        alive, and renews it once the database answers. Not taken over from itself, counted as a recovery.
        (Read inside the claim's transaction, possibly in the database's writer thread: only a read of ``_tasks``.)"""
        tasks = self._tasks
        return [c for c in candidates if c.id not in tasks] if tasks else candidates

    def _limit(self, workflow_id: str) -> int:
        """How many deaths of its process a run of ``workflow_id`` survives (1 or more: checked where it is set)."""
        wf = self.registry.get(workflow_id)  # (the newest version's setting)
        return wf.options.max_recoveries if wf is not None and wf.options.max_recoveries is not None else self.max_recoveries

    def made_progress(self, run_id: str) -> None:
        """A recovered run committed a step (or its execution here ended): it is an ordinary run again."""
        if self.recoveries.progressed(run_id):
            self._wake.set()  # recovered runs kept apart may be claimed now

    async def _dispatch_loop(self) -> None:
        await self._reap_dead_owners()
        while not self._closing:
            self._wake.clear()
            try:
                await self._claim_and_spawn()
                now = time.time()
                # Timers (sleeps, leases, approval expiries) are re-read at most once per poll interval, or
                # when one is due: a wake-up for a finished or resumed run needs only the claim above. Not when
                # one is due but every slot is taken: its run cannot be taken here before a slot frees up, and
                # the re-read would find the same past time again, a loop with a zero timeout.
                if now >= self._timers_checked_at + self.poll_interval or (
                    self._next_timer is not None and self._next_timer <= now and self._free_slots() > 0
                ):
                    await self._expire_suspensions()
                    times = [t for t in (await self.store.next_wakeup(), await self.store.next_expiry()) if t is not None]
                    self._next_timer = min(times) if times else None
                    self._timers_checked_at = time.time()
                timeout = self.poll_interval
                if self._next_timer is not None:
                    timeout = min(timeout, max(0.0, self._next_timer - time.time()))
                if timeout <= 0 and self._free_slots() <= 0:
                    # A timer is due, every slot taken: the run that gives one back wakes this loop (a backlog).
                    self._backlog = True
                    timeout = self.poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._dispatch_failures.failed(exc)
                timeout = self.poll_interval
            else:
                self._dispatch_failures.worked()
            await wait_set(self._wake, timeout)  # not wait_for: it can swallow close's cancel (see waits.py)

    def step_threads(self) -> StepThreads:
        return self.liveness.step_threads()

    @property
    def abandoned_step_threads(self) -> int:
        """Threads of plain ``def`` steps that timed out and still run in this process (they cannot be stopped;
        they do not keep the process from exiting)."""
        return self.liveness.abandoned_step_threads

    def _lost(self, run_ids: set[str]) -> None:
        """Runs this process no longer holds (canceled, or taken over): stop executing them."""
        for run_id in run_ids:
            if run_id in self._tasks:
                log.info("run %s is no longer held here (canceled or taken over); stopping it", run_id)
                self._stop_run(run_id)

    def _stop_run(self, run_id: str, *, later: bool = True) -> None:
        """The run is no longer this process's (canceled, taken over, handed back at close): its execution commits
        nothing more, and its task is canceled. ``later``: a task that has not ended RUN_STOP_GRACE from now (a
        step that swallows CancelledError) is abandoned then (see _abandon)."""
        task = self._tasks.get(run_id)
        if task is None:
            return
        execution = self._executions.get(run_id)
        if execution is not None:
            execution.lose(LeaseLost(run_id))
        task.cancel()
        if later:
            asyncio.get_running_loop().call_later(RUN_STOP_GRACE, self._abandon, run_id, task)

    def _abandon(self, run_id: str, task: asyncio.Task[None]) -> None:
        """A run's task that did not end after it was stopped: no longer counted here. Its slot is free, its lease
        no longer renewed, waiters read the run from the database; whatever its step does later is not recorded
        (its execution was told it lost the run, and the run is no longer this process's in the database)."""
        if task.done() or self._tasks.get(run_id) is not task:
            return
        del self._tasks[run_id]
        self._executions.pop(run_id, None)
        log.warning("run %s: its task did not end within %g s of being stopped (a step that swallows "
                    "CancelledError, e.g. with a bare `except:`); it is abandoned: its slot is free again and nothing "
                    "it does from now on is recorded", run_id, RUN_STOP_GRACE)
        self._backlog = True
        self._wake.set()
        event = self._run_changed.pop(run_id, None)
        if event is not None:
            event.final = None
            event.set()

    async def _heartbeat_loop(self) -> None:
        """Renews leases when no lease keeper thread does (in-memory SQLite), and hands back dead processes' runs."""
        interval = max(0.05, self.lease_seconds / 3)
        reaped_at = time.monotonic()
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                if not self.liveness.keeps_leases:
                    self._lost(await self.store.heartbeat(self.owner, list(self._tasks), self.lease_seconds))
                if time.monotonic() - reaped_at > self.lease_seconds:
                    reaped_at = time.monotonic()
                    await self._reap_dead_owners()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed; retrying")

    async def _reap_dead_owners(self) -> list[str]:
        """Hand back runs held by processes on this host that no longer exist (no need to wait for the lease)."""
        host = socket.gethostname()
        handed_back: list[str] = []
        for owner in await self.store.running_owners():
            if owner != self.owner and dead_here(owner, host):
                released = await self.store.release_owner(owner)
                if released:
                    log.info("recovered %d run(s) from dead process %s", len(released), owner)
                    self._wake.set()
                    handed_back.extend(released)
        return handed_back

    async def _expire_suspensions(self) -> None:
        """Suspensions past their TTL are resolved by ``system`` and take the reject path."""
        for susp in await self.store.expired_suspensions(time.time()):
            run = await self.store.get_run(susp.run_id)
            wf = self.registry.for_run(run) if run else None
            if run is None or wf is None or run.is_terminal:
                continue
            step_def = wf.find_step_at(susp.path)
            data = expiry_data(step_def)
            try:
                await self.store.resolve_suspension(susp.run_id, susp.path, data, "system", [NewEvent(
                    type="run.resumed", path=susp.path,
                    data={"step_id": susp.step_id, "by": "system", "data": data, "expired": True},
                )])
                self._changed(susp.run_id)
            except CompareAndSetFailed:
                continue  # someone decided first


#: How long the dispatcher lets slots free up before claiming runs that wait for capacity.
BACKLOG_GATHER_SECONDS = 0.005
#: How long a run's task may take to end once stopped (canceled, taken over, the engine closing) before it is
#: abandoned; longer than a timed step's own grace, so that one ends its run's task first (see step_call.py).
RUN_STOP_GRACE = STOP_GRACE + 1.0
class RunChanged(asyncio.Event):
    """Set when a run changed here; ``final`` is the run as settled by a local execution that just ended."""

    def __init__(self) -> None:
        super().__init__()
        self.final: RunRecord | None = None


def expiry_data(step_def: Step[Any, Any] | None) -> Any:
    """The resume data an expired approval is resolved with: a rejection by ``system``."""
    candidate = {"approved": False, "by": "system", "reason": "expired", "expired": True}
    model = step_def.resume if step_def else None
    if model is None:
        return candidate
    fields = model.model_fields
    data = {k: v for k, v in candidate.items() if k in fields} if fields else candidate
    try:
        return model.model_validate(data).model_dump(mode="json")
    except Exception:
        return data


def _pick_suspension(run: RunRecord, suspensions: list[Any], step: str | None) -> Any:
    open_ = [s for s in suspensions if s.status == "open"]
    if step is None:
        if len(open_) == 1:
            return open_[0]
        resolved = [s for s in suspensions if s.status == "resolved"]
        if not open_ and resolved:
            # A concurrent resume won the only suspension: the caller gets AlreadyResumed naming the winner.
            return max(resolved, key=lambda s: s.resolved_at or 0.0)
        if not open_:
            raise NotSuspended(f"Run {run.id} is {run.status} and waits for no input; there is nothing to resume.")
        paths = ", ".join(s.path for s in open_)
        raise NotSuspended(f"Run {run.id} waits at several steps ({paths}); say which one to resume with step=...")
    exact = [s for s in suspensions if s.path == step]
    if exact:
        return exact[0]
    by_id = [s for s in suspensions if s.step_id == step]
    open_by_id = [s for s in by_id if s.status == "open"]
    if len(open_by_id) == 1:
        return open_by_id[0]
    if len(open_by_id) > 1:
        paths = ", ".join(s.path for s in open_by_id)
        raise NotSuspended(f"Step {step!r} of run {run.id} waits at several paths ({paths}); name one of them.")
    if by_id:
        return by_id[-1]
    waiting = ", ".join(s.path for s in open_) or "nothing"
    raise NotSuspended(f"Run {run.id} has no suspended step {step!r}; it waits for: {waiting}.")


#: Results that record no step's output: a failed attempt's (its events tell it), a branch's choice, a foreach's list.
_NOT_STEPS = ("retry", "branch", "items")


def _event_data(
    wf: CommittedWorkflow, nodes: list[WaitForEventNode], suspensions: list[SuspensionRecord], name: str, data: Any,
) -> Any:
    """``data`` validated for the wait that will take it: the wait the run is at (its open wait for ``name``),
    else, the run not there yet, any wait for ``name`` (two waits for one name may expect different data)."""
    at = [wf.node_at(s.path) for s in suspensions if s.kind == "event" and s.status == "open" and s.event_name == name]
    waits = [n for n in at if isinstance(n, WaitForEventNode)] or nodes
    where = f"data of event {name!r}"
    try:
        return parse_data(waits[0].schema, data, where)
    except InvalidInput:
        for node in waits[1:]:
            try:
                return parse_data(node.schema, data, where)
            except InvalidInput:
                continue
        raise  # what the first wait wants


def _all_nodes(wf: CommittedWorkflow) -> list[Node]:
    nodes: list[Node] = []
    for node in _walk(wf.root):
        nodes.append(node)
        if isinstance(node, WorkflowNode):
            nodes.extend(_all_nodes(node.workflow))
    return nodes


def _crash_hook(where: str) -> FaultHook:
    def crash(*, point: str, path: str | None = None, **_: Any) -> None:
        if not where or where == path:
            log.warning("fault injection: crashing at %s %s", point, path)
            os._exit(137)

    return crash


__all__ = ["Engine", "TERMINAL_STATUSES"]
