"""What a run should look like in Slack, from its events alone (pure: no I/O, replayable from offset 0).

:class:`RunView` folds a run's events into what a person should see: the root checklist, one approval card
per suspension (open, decided, withdrawn, expired) and the thread posts (readable agent outputs, the final
reply). :func:`plan` turns the view into the messages the outbox should hold. Root and approval cards are
wanted with their latest content every time (the outbox keeps the newest version and sends it when Slack's
pace allows, so edits coalesce and none is lost); posts are wanted once, for events past the render offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from storage.slack_store import SlackRun, WantedMessage, approval_key, root_key
from workflows import WorkflowEvent
from workflows.events import (
    RunCanceled,
    RunFinished,
    RunResumed,
    RunStranded,
    StepFailed,
    StepRetrying,
    StepStarted,
    StepSucceeded,
    StepSuspended,
)

from .. import blocks
from ..blocks import Checklist
from ..slack.streams import markdown_block


@dataclass(frozen=True)
class StepPresentation:
    """How the bot shows a step's output: posted in the thread (agent steps), and under which name.

    ``streams_text``: the agent answers in text, shown as it is written (a structured answer is shown when it
    is complete); ``tools``: the tools the agent may call (several make its task cards a plan)."""

    post_output: bool
    name: str
    #: The step's resume model takes a ``reason``: its card offers "Reject with reason…".
    accepts_reason: bool = False
    streams_text: bool = True
    tools: tuple[str, ...] = ()


#: ``describe(workflow_id, step_id, path)``: how to show the step at ``path`` (its id where the path names none), or
#: None for a step it does not know. By path: two nested workflows may each have a step of one id.
DescribeStep = Callable[[str, str, str], StepPresentation | None]


class DescribeVersionStep(Protocol):
    """A :data:`DescribeStep` that also takes the run's version (``fingerprint``): a run is shown as its own
    version says (a newer version registered beside it may have renamed the step or changed its approval)."""

    def __call__(self, workflow_id: str, step_id: str, path: str = "", *,
                 fingerprint: str | None = None) -> StepPresentation | None: ...


#: Checklist states of a step that has not ended (see ``RunView._stop_unfinished``).
UNFINISHED = frozenset({"running", "retrying", "waiting", "suspended"})


@dataclass
class ApprovalCard:
    """One suspension waiting for a person, and what became of it."""

    path: str
    seq: int
    payload: Any
    expires_at: float | None
    step_id: str | None = None
    decision: RunResumed | None = None
    withdrawn_because: str | None = None

    @property
    def is_open(self) -> bool:
        return self.decision is None and self.withdrawn_because is None


@dataclass
class Post:
    """A thread reply planned for one event (posted once)."""

    key: str
    seq: int
    text: str
    blocks: list[dict[str, Any]] | None = None


@dataclass
class RunView:
    """Everything Slack should show for one run, folded from its events."""

    run: SlackRun
    workflow_id: str = ""
    #: The run's workflow version (None: unknown yet, or a run from before versions were recorded).
    workflow_fingerprint: str | None = None
    checklist: Checklist = field(init=False)
    approvals: dict[str, ApprovalCard] = field(default_factory=dict)
    last_event_id: int = 0
    #: Runs this one was moved to (``RunCanceled.moved_to``), with their version as people read it, once known.
    moved_versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.checklist = Checklist(run_id=self.run.run_id, workflow_id=self.workflow_id, started_by=self.run.started_by)

    @property
    def open_approvals(self) -> list[ApprovalCard]:
        return [card for card in self.approvals.values() if card.is_open]

    def apply(self, ev: WorkflowEvent) -> None:
        """Fold one event into the view."""
        self.last_event_id = max(self.last_event_id, ev.id)
        cl, path, data = self.checklist, ev.path or "", ev.payload
        if isinstance(data, StepStarted):
            line = cl.step(path, ev.step_id)
            line.state, line.attempts, line.note = "running", data.attempt, ""
            self._woke()
        elif isinstance(data, StepRetrying):
            line = cl.step(path, ev.step_id)
            line.state, line.note = "retrying", clip_note(data.error)
        elif isinstance(data, StepSucceeded):
            line = cl.step(path, ev.step_id)
            line.state, line.note = "done", ""
        elif isinstance(data, StepFailed):
            line = cl.step(path, ev.step_id)
            line.state, line.note = "failed", clip_note(data.error)
        elif isinstance(data, StepSuspended):
            line = cl.step(path, ev.step_id)
            if data.is_approval:
                line.state, line.note = "suspended", "waiting for approval"
                self.approvals.setdefault(path, ApprovalCard(path, ev.id, data.payload, data.expires_at, ev.step_id))
            else:
                line.state, line.note = "waiting", f"waiting for event {data.event}"
        elif isinstance(data, RunResumed):
            line = cl.step(path, ev.step_id)
            line.state, line.note = "running", describe_decision(data)
            card = self.approvals.get(path)
            if card is not None and card.decision is None:
                card.decision = data
            cl.status = "running"
        elif ev.type == "event.received":
            cl.step(path, ev.step_id).state = "done"
            self._woke()
        elif ev.type == "run.suspended":
            cl.status = "suspended"
        elif ev.type == "run.waiting":
            cl.status = "waiting"
        elif ev.type in ("run.started", "run.recovered", "run.released"):
            if ev.type == "run.started" and ev.data.get("workflow_id"):
                self.workflow_id = cl.workflow_id = str(ev.data["workflow_id"])
                self.workflow_fingerprint = ev.data.get("fingerprint") or self.workflow_fingerprint
            cl.status = "running"
        elif isinstance(data, RunFinished):
            cl.status, cl.error = data.status, data.error_message
            self._withdraw_open(f"the run {data.status}.")
            self._stop_unfinished("stopped", "not finished: the run ended")
        elif isinstance(data, RunCanceled):
            cl.status, cl.canceled_by = "canceled", data.by
            if data.moved_to:
                self._withdraw_open(f"the run was moved to run `{blocks.escape(data.moved_to)}` by "
                                    f"{blocks.mention(data.by)}; decide on that run's card in this thread.")
            else:
                self._withdraw_open(f"the run was canceled by {blocks.mention(data.by)}.")
            self._stop_unfinished("canceled", "canceled")

    def _woke(self) -> None:
        """A step starts, or an awaited event is taken: the run is at work again (its status is ``running``).

        Claiming a run whose sleep ended or whose event arrived writes no event of its own, so the first thing
        the woken run does marks it. A run with one branch awaiting approval shows ``running`` while another
        branch works, as the run's record does, and ``suspended`` again when that branch halts (``run.suspended``).
        """
        if self.checklist.status in ("waiting", "suspended"):
            self.checklist.status = "running"

    def _stop_unfinished(self, state: str, note: str) -> None:
        """Lines still running or waiting when the run ended: left as they were, the checklist of a canceled
        run would go on saying a step waits for approval while its card says no decision is needed."""
        for line in self.checklist.steps.values():
            if line.state in UNFINISHED:
                line.state, line.note = state, note

    def _withdraw_open(self, why: str) -> None:
        for card in self.open_approvals:
            card.withdrawn_because = why


@dataclass
class Plan:
    """What the outbox should hold after some events, and what the thread's memory should note."""

    wanted: list[WantedMessage]
    notes: list[str]


def wanted_cards(view: RunView, describe: DescribeStep) -> list[WantedMessage]:
    """The root message and every approval card, with what they should show now."""
    run = view.run
    text, root_blocks = blocks.root_message(view.checklist)
    wanted = []
    if run.reply_ts is not None:
        # Posted by whoever started the run (``root_ts``), or, for a run moved here from another version, the first
        # message the renderer posts in the thread of the run it replaced (``thread_ts``).
        wanted.append(WantedMessage(key=root_key(run.run_id), kind="root", channel_id=run.channel_id, seq=0,
                                    thread_ts=None if run.root_ts is not None else run.thread_ts,
                                    content={"text": text, "blocks": root_blocks}))
    for card in view.approvals.values():
        wanted.append(WantedMessage(key=approval_key(run.run_id, card.path), kind="approval",
                                    channel_id=run.channel_id, thread_ts=run.reply_ts, seq=card.seq,
                                    content=card_content(run.run_id, card,
                                                         describe(view.workflow_id, card.step_id or "", card.path))))
    return wanted


def card_content(run_id: str, card: ApprovalCard, step: StepPresentation | None = None) -> dict[str, Any]:
    if card.decision is not None:
        d = card.decision
        text, card_blocks = blocks.decided_message(run_id, card.path, card.payload, d.approved is not False, d.by,
                                                   d.reason, expired=d.expired)
    elif card.withdrawn_because is not None:
        text, card_blocks = blocks.withdrawn_message(run_id, card.path, card.payload, card.withdrawn_because)
    else:
        text, card_blocks = blocks.approval_message(run_id, card.path, card.payload, card.expires_at,
                                                    with_reason=step is not None and step.accepts_reason)
    return {"text": text, "blocks": card_blocks}


def plan(view: RunView, new_events: list[WorkflowEvent], describe: DescribeStep) -> Plan:
    """Fold ``new_events`` (past the render offset) into ``view``; return the messages wanted and the notes
    for the thread's memory that these events call for."""
    run = view.run
    posts: list[WantedMessage] = []
    notes: list[str] = []

    def post(ev: WorkflowEvent, suffix: str, text: str, post_blocks: list[dict[str, Any]] | None = None) -> None:
        content: dict[str, Any] = {"text": text}
        if post_blocks is not None:
            content["blocks"] = post_blocks
        posts.append(WantedMessage(key=f"post:{run.run_id}:{ev.id}:{suffix}", kind="post", channel_id=run.channel_id,
                                   thread_ts=run.reply_ts, seq=ev.id, content=content))

    for ev in new_events:
        view.apply(ev)
        data = ev.payload
        if ev.type == "run.started" and not ev.data.get("rerun_of"):
            notes.append(f"Run {run.run_id} of workflow {ev.data.get('workflow_id')} was started by "
                         f"{ev.data.get('started_by') or 'someone'} with input {summary(ev.data.get('input'))}.")
        elif isinstance(data, StepSucceeded) and ev.step_id:
            content = output_post(describe(view.workflow_id, ev.step_id, ev.path or ""), run.run_id, ev.path or ev.step_id,
                                  ev.step_id, data.output)
            if content is not None:
                posts.append(WantedMessage(key=f"post:{run.run_id}:{ev.id}:output", kind="post",
                                           channel_id=run.channel_id, thread_ts=run.reply_ts, seq=ev.id,
                                           content=content))
        elif isinstance(data, StepSuspended) and data.is_approval:
            notes.append(f"Step {ev.path} is waiting for approval: {summary(data.payload)}.")
        elif isinstance(data, RunResumed) and view.approvals.get(ev.path or "") is not None:
            verdict = "approved" if data.approved is not False else "rejected"
            if data.expired:
                verdict = "rejected (the approval expired)"
            notes.append(f"Step {ev.path} was {verdict} by {data.by or 'someone'}.")
        elif isinstance(data, RunFinished):
            text, reply = blocks.result_reply(data.status, data.output, data.error_message, data.error_path)
            post(ev, "result", text, reply)
            notes.append(f"The run finished with status {data.status}: {text}")
        elif isinstance(data, RunCanceled):
            by = blocks.mention(data.by)
            why = f"Canceled by {by}."
            if data.moved_to:
                version = view.moved_versions.get(data.moved_to)
                why = (f"Moved by {by} to run `{blocks.escape(data.moved_to)}`"
                       f"{f' on version {blocks.escape(version)}' if version else ''}, which goes on in this thread.")
                notes.append(f"Run {run.run_id} was moved by {data.by or 'someone'} to run {data.moved_to}"
                             f"{f' on version {version}' if version else ''}, which goes on in this thread.")
            text, reply = blocks.result_reply("canceled", None, why, None)
            post(ev, "result", text, reply)
        elif isinstance(data, RunStranded):
            # Said once per stranding (the engine commits one event each time no process has the version).
            text = f":warning: {blocks.escape(data.message or 'No running process has this run’s workflow version.')}"
            post(ev, "stranded", text.split("\n")[0], blocks.text_reply(text))
    return Plan(wanted=wanted_cards(view, describe) + posts if run.reply_ts is not None else [], notes=notes)


def output_post(step: StepPresentation | None, run_id: str, path: str, step_id: str, output: Any) -> dict[str, Any] | None:
    """An agent step's output as a thread post: its text, the feedback buttons, and what the live stream of
    the step needs to end with this answer (``stream``: the step's path, and the answer in markdown).

    The post shows the answer in one ``markdown`` block, as a stream posted whole does (12,000 characters,
    where a section would cut it at 3,000); ``text``, the notification, is the short readable form."""
    text = readable_output(step, step_id, output)
    if text is None or step is None:
        return None
    shown = markdown_block(stream_header(step.name, step_id) + stream_answer(output))
    return {
        "text": text,
        "blocks": [shown, blocks.feedback_block({"run_id": run_id, "path": path})],
        "stream": {"path": path, "answer": stream_answer(output)},
    }


def stream_header(name: str, step_id: str) -> str:
    """The first line of an agent step's answer in the thread, in markdown (streams use markdown)."""
    return f"**{blocks.escape(name)}** (`{step_id}`):\n"


def stream_answer(output: Any) -> str:
    """The body of an agent step's answer in markdown: its text, or its structured output as JSON."""
    if isinstance(output, dict):
        for key in ("text", "answer", "summary", "message"):
            if isinstance(output.get(key), str):
                return blocks.escape(output[key])  # as streamed (a stream Slack cannot take whole is replaced)
    return f"```\n{blocks.pretty(output, 10_000)}\n```"


def readable_output(step: StepPresentation | None, step_id: str, output: Any) -> str | None:
    """An agent step's output worth posting in the thread (plain steps stay in the checklist)."""
    if step is None or not step.post_output:
        return None
    name = blocks.escape(step.name)
    if isinstance(output, dict):
        for key in ("text", "answer", "summary", "message"):
            if isinstance(output.get(key), str):
                return f"*{name}* (`{step_id}`):\n{blocks.clip(blocks.escape(output[key]), 2800)}"
    return f"*{name}* (`{step_id}`):\n```{blocks.pretty(output, 2600)}```"


def summary(value: Any) -> str:
    """A one-line plain-text rendering of an input or payload, for the thread's memory."""
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in value.items() if v not in (None, "")) or "(none)"
    return clip_note(value if value is not None else "(none)")


def clip_note(value: Any) -> str:
    text = str(value or "")
    return text if len(text) <= 120 else text[:119] + "…"


def describe_decision(data: RunResumed) -> str:
    if data.expired:
        return "approval expired"
    if data.approved is not None:
        return f"{'approved' if data.approved else 'rejected'} by {data.by or 'someone'}"
    return f"resumed by {data.by or 'someone'}"
