"""One run as people inspect it: every step instance with its attempts, timings, waits and agent calls.

:func:`fold_run` is pure: it folds the run's persisted events (plus its step results and suspensions) into
a :class:`RunView`, so the same view comes out whether it is built once or rebuilt as events arrive.
:func:`load_run_view` reads what it needs through the engine. Nothing here writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from storage.memory_store import AgentContextRow, MemoryStore, MessageRow
from storage.records import RunRecord, StepResultRecord, SuspensionRecord

from .events import WorkflowEvent
from .graph_export import path_key

if TYPE_CHECKING:
    from .engine import Engine

StepStatus = Literal["pending", "running", "retrying", "suspended", "waiting", "success", "failed", "canceled"]
SpanKind = Literal["attempt", "backoff", "suspended", "waiting", "sleep"]

#: When several instances share a graph node (loop iterations, foreach items), the node shows the first
#: status in this order that any of them has.
STATUS_PRECEDENCE: tuple[StepStatus, ...] = (
    "running", "retrying", "suspended", "waiting", "failed", "canceled", "success", "pending",
)


class Attempt(BaseModel):
    number: int
    started_at: float | None = None
    finished_at: float | None = None
    outcome: Literal["running", "succeeded", "failed", "retried", "suspended", "canceled"] = "running"
    error: str | None = None
    traceback: str | None = None
    retry_delay: float | None = None


class Span(BaseModel):
    """A bar on the timeline: an attempt, a retry's backoff, a suspension, a wait for an event, a sleep."""

    kind: SpanKind
    start: float
    end: float | None = None
    ok: bool = True
    label: str = ""


class RecalledView(BaseModel):
    message: MessageRow
    why: str


class AgentCall(BaseModel):
    """What one agent call was given and what it answered (from its agent context record)."""

    id: int
    agent: str
    model: str | None = None
    at: float
    instructions: str | None = None
    prompt: str | None = None
    messages: list[MessageRow] = []
    recalled: list[RecalledView] = []
    working_memory: str | None = None
    summary: str | None = None
    token_estimate: int | None = None
    trimmed: int = 0
    tools: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    answer: str | None = None
    output: Any = None
    error: str | None = None
    usage: dict[str, Any] = {}
    latency_ms: float | None = None
    #: Feedback people gave on this answer (Slack's feedback buttons): ``{"user", "rating", "at", ...}`` per
    #: person, their latest rating (the record's ``answer["feedback"]`` list).
    feedback: list[Any] = []


class StepView(BaseModel):
    path: str
    key: str
    step_id: str
    kind: str = "step"
    status: StepStatus = "pending"
    input: Any = None
    has_input: bool = False
    output: Any = None
    has_output: bool = False
    error: str | None = None
    traceback: str | None = None
    attempts: list[Attempt] = []
    spans: list[Span] = []
    started_at: float | None = None
    finished_at: float | None = None
    suspension: SuspensionRecord | None = None
    agent_calls: list[AgentCall] = []

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at


class NodeStatus(BaseModel):
    status: StepStatus
    instances: int


class RunView(BaseModel):
    run: RunRecord
    steps: list[StepView]
    events: list[WorkflowEvent]
    open_suspensions: list[SuspensionRecord]
    #: Status per graph key (see ``graph_export.path_key``); nested workflows aggregate their steps.
    node_status: dict[str, NodeStatus]
    last_event_id: int = 0
    memory_thread: str | None = None
    memory_messages: list[MessageRow] = []

    @property
    def started_at(self) -> float:
        return self.run.created_at

    @property
    def ended_at(self) -> float | None:
        return self.run.finished_at

    def step(self, path: str) -> StepView | None:
        return next((s for s in self.steps if s.path == path), None)


def fold_run(
    run: RunRecord,
    events: Sequence[WorkflowEvent],
    results: Iterable[StepResultRecord] = (),
    suspensions: Iterable[SuspensionRecord] = (),
    contexts: Iterable[AgentContextRow] = (),
    *,
    now: float | None = None,
) -> RunView:
    """Fold a run's records into its view. Pure: the same records give the same view."""
    now = time.time() if now is None else now
    steps: dict[str, StepView] = {}

    def at(path: str, step_id: str | None = None) -> StepView:
        view = steps.get(path)
        if view is None:
            view = steps[path] = StepView(path=path, key=path_key(path), step_id=step_id or path.rsplit("/", 1)[-1])
        return view

    for ev in events:
        if ev.path is None or ev.path.startswith("__input__/"):
            continue
        _apply(at(ev.path, ev.step_id), ev)

    for rec in results:
        if rec.kind in ("override", "retry", "branch", "items"):  # a re-run's new input, a failed attempt, decisions
            continue
        view = at(rec.path, rec.step_id)
        view.kind = rec.kind
        view.output, view.has_output = rec.output, True
        view.finished_at = rec.finished_at
        view.started_at = view.started_at or rec.started_at
        if rec.kind == "sleep":
            until = float((rec.output or {}).get("until") or rec.finished_at)
            view.spans.append(Span(kind="sleep", start=rec.started_at or rec.finished_at, end=until, label="sleep"))
            view.status = "waiting" if until > now and run.status == "waiting" else "success"
            view.finished_at = until if view.status == "success" else None
        else:
            view.status = "success"

    open_: list[SuspensionRecord] = []
    for susp in suspensions:
        view = at(susp.path, susp.step_id)
        view.suspension = susp
        if susp.status == "open":
            open_.append(susp)

    by_path: dict[str, list[AgentCall]] = {}
    for row in contexts:
        by_path.setdefault(row.path or "", []).append(agent_call(row))
    for path, calls in by_path.items():
        if path in steps:
            steps[path].agent_calls = calls

    if run.status == "canceled":
        for view in steps.values():
            if view.status in ("running", "retrying", "suspended", "waiting"):
                view.status = "canceled"
                for span in view.spans:
                    if span.end is None:
                        span.end = run.finished_at
    ordered = sorted(steps.values(), key=lambda s: (s.started_at or s.finished_at or now, s.path))
    return RunView(
        run=run, steps=ordered, events=list(events), open_suspensions=open_, node_status=_node_status(ordered),
        last_event_id=events[-1].id if events else 0,
    )


def _apply(view: StepView, ev: WorkflowEvent) -> None:
    data = ev.data
    if ev.type == "step.started":
        if "input" in data and not view.has_input:
            view.input, view.has_input = data["input"], True
        view.attempts.append(Attempt(number=int(data.get("attempt") or len(view.attempts) + 1), started_at=ev.at))
        view.spans.append(Span(kind="attempt", start=ev.at, label=f"attempt {data.get('attempt') or 1}"))
        view.status = "running"
        view.started_at = view.started_at or ev.at
    elif ev.type == "step.retrying":
        attempt = _current_attempt(view, ev.at)
        attempt.finished_at, attempt.outcome = ev.at, "retried"
        attempt.error, attempt.traceback = data.get("error"), data.get("traceback")
        attempt.retry_delay = float(data.get("delay") or 0)
        _close_span(view, ev.at, ok=False)
        view.spans.append(Span(kind="backoff", start=ev.at, end=ev.at + attempt.retry_delay, label="retry backoff"))
        view.status = "retrying"
    elif ev.type == "step.succeeded":
        attempt = _current_attempt(view, ev.at - float(data.get("duration") or 0))
        attempt.finished_at, attempt.outcome = ev.at, "succeeded"
        _close_span(view, ev.at, ok=True)
        view.status = "success"
        view.finished_at = ev.at
        if "output" in data:
            view.output, view.has_output = data["output"], True
    elif ev.type == "step.failed":
        attempt = _current_attempt(view, ev.at)
        if attempt.outcome == "running":
            attempt.finished_at, attempt.outcome = ev.at, "failed"
        attempt.error, attempt.traceback = data.get("error"), data.get("traceback")
        _close_span(view, attempt.finished_at or ev.at, ok=False)
        view.status, view.error, view.traceback = "failed", data.get("error"), data.get("traceback")
        view.finished_at = ev.at
    elif ev.type == "step.suspended":
        if view.attempts and view.attempts[-1].outcome == "running":
            view.attempts[-1].finished_at, view.attempts[-1].outcome = ev.at, "suspended"
        _close_span(view, ev.at, ok=True)
        is_event = data.get("event") is not None
        view.kind = "event" if is_event else view.kind
        label = f"waiting for event {data.get('event')!r}" if is_event else "waiting for a person"
        view.spans.append(Span(kind="waiting" if is_event else "suspended", start=ev.at, label=label))
        view.status = "waiting" if is_event else "suspended"
        view.started_at = view.started_at or ev.at
    elif ev.type == "run.resumed":
        by = data.get("by") or "someone"
        _close_span(view, ev.at, ok=True, label_suffix=f" (resumed by {by})")
        view.status = "running"
    elif ev.type == "event.received":
        _close_span(view, ev.at, ok=True)
        view.status, view.finished_at, view.kind = "success", ev.at, "event"


def _current_attempt(view: StepView, started: float) -> Attempt:
    if view.attempts and view.attempts[-1].outcome == "running":
        return view.attempts[-1]
    attempt = Attempt(number=len(view.attempts) + 1, started_at=started)
    view.attempts.append(attempt)
    view.spans.append(Span(kind="attempt", start=started, label=f"attempt {attempt.number}"))
    view.started_at = view.started_at or started
    return attempt


def _close_span(view: StepView, end: float, *, ok: bool, label_suffix: str = "") -> None:
    for span in reversed(view.spans):
        if span.end is None:
            span.end, span.ok = end, ok
            span.label += label_suffix
            return


def _node_status(steps: Iterable[StepView]) -> dict[str, NodeStatus]:
    seen: dict[str, list[StepStatus]] = {}
    for view in steps:
        parts = view.key.split("/")
        for i in range(1, len(parts) + 1):
            seen.setdefault("/".join(parts[:i]), []).append(view.status)
    out: dict[str, NodeStatus] = {}
    for key, statuses in seen.items():
        status = next(s for s in STATUS_PRECEDENCE if s in statuses)
        out[key] = NodeStatus(status=status, instances=len(statuses))
    return out


def agent_call(row: AgentContextRow) -> AgentCall:
    """The parts of an agent context record a person reads, named."""
    ctx, answer = row.context or {}, row.answer or {}
    messages = ctx.get("messages") or []
    memory = ctx.get("memory") or {}
    system = [m for m in messages if m.get("role") == "system"]
    users = [m for m in messages if m.get("role") == "user"]
    recalled = [
        RecalledView(
            message=MessageRow.model_validate(item["message"]),
            why=(f"matched the search (score {item['score']:.2f})" if item.get("score") is not None
                 else "matched the search") if item.get("matched") else "next to a match (context around it)",
        )
        for item in memory.get("recalled") or []
    ]
    usage = row.usage or {}
    return AgentCall(
        id=row.id, agent=row.agent, model=ctx.get("model"), at=row.created_at,
        instructions=system[0].get("content") if system else None,
        prompt=users[-1].get("content") if users else None,
        messages=[MessageRow.model_validate(m) for m in memory.get("messages") or []],
        recalled=recalled, working_memory=memory.get("working_memory"), summary=memory.get("summary"),
        token_estimate=memory.get("token_estimate"), trimmed=int(memory.get("trimmed") or 0),
        tools=list(ctx.get("tools") or []), tool_calls=list(answer.get("tool_calls") or []),
        answer=answer.get("text"), output=answer.get("output"), error=answer.get("error"), usage=dict(usage),
        latency_ms=answer.get("latency_ms"), feedback=list(answer.get("feedback") or []),
    )


async def load_run_view(engine: Engine, run_id: str, *, memory_messages: int = 200) -> RunView:
    """Everything recorded about a run, folded; raises RunNotFound for an unknown id."""
    run = await engine.get_run(run_id)
    progress = await engine.store.load_progress(run_id)
    events = [WorkflowEvent.from_record(e) for e in await engine.store.read_events(run_id, 0, 100_000)]
    memory = MemoryStore(engine.db)
    contexts = await memory.agent_contexts(run_id)
    view = fold_run(run, events, progress.results.values(), progress.suspensions.values(), contexts)
    thread = run.thread_id or f"run:{run_id}"
    if await memory.get_thread(thread) is not None:
        view.memory_thread = thread
        view.memory_messages = await memory.last_messages(thread, memory_messages)
    return view
