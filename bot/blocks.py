"""Block Kit builders for every message the bot posts (built with slack_sdk's block models)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextActionsBlock,
    ContextBlock,
    DividerBlock,
    FeedbackButtonObject,
    FeedbackButtonsElement,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.blocks.blocks import InputBlock
from slack_sdk.models.views import View

#: Slack caps a section's text at 3,000 characters and a message at 50 blocks.
SECTION_LIMIT = 2900
MAX_BLOCKS = 50

#: A Slack user id: ``U`` or ``W`` then upper-case letters and digits, at least one a digit (``U0ALICE``,
#: ``U012AB3CD``). Words such as ``URGENT``, ``USD`` or a name typed on the CLI (``Walter``) are not ids: shown
#: as ``<@URGENT>`` Slack would render a mention of a user that does not exist.
_USER_ID = re.compile(r"[UW](?=[A-Z0-9]*[0-9])[A-Z0-9]{4,12}")
#: What a notification's ``text`` may hold (Slack takes 40,000; a notification needs far less).
TEXT_LIMIT = 3000

APPROVE, REJECT, REJECT_WITH_REASON = "approve", "reject", "reject_with_reason"
#: The feedback buttons under every agent answer (Slack's ``feedback_buttons`` in a ``context_actions`` block).
AGENT_FEEDBACK = "agent_feedback"
REJECT_REASON_VIEW = "reject_reason"

STATUS_ICON = {
    "pending": ":hourglass_flowing_sand:",
    "running": ":arrows_counterclockwise:",
    "waiting": ":zzz:",
    "suspended": ":double_vertical_bar:",
    "success": ":white_check_mark:",
    "failed": ":x:",
    "canceled": ":no_entry_sign:",
}
STEP_ICON = {
    "running": ":arrows_counterclockwise:",
    "retrying": ":repeat:",
    "done": ":white_check_mark:",
    "failed": ":x:",
    "suspended": ":double_vertical_bar:",
    "waiting": ":zzz:",
    "canceled": ":no_entry_sign:",
    "stopped": ":black_square_for_stop:",
}


def escape(text: str) -> str:
    """Text that did not come from the bot's own markup, made safe for mrkdwn: Slack reads ``&``, ``<`` and
    ``>`` as control characters (``<!channel>`` would ping everyone, ``<https://x|y>`` disguise a link)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int = SECTION_LIMIT) -> str:
    """``text`` cut to ``limit`` characters with a visible "…". The cut never splits an entity of ``escape``
    (``&lt;`` would show as ``&l…``): a trailing ``&`` without its ``;`` is dropped with the rest."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 4))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def pretty(value: Any, limit: int = 1500) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return clip(escape(text), limit)


@dataclass
class StepLine:
    path: str
    step_id: str
    state: str = "running"
    attempts: int = 1
    note: str = ""


@dataclass
class Checklist:
    """What the root message shows: a run's status and one line per step instance, in order seen."""

    run_id: str
    workflow_id: str
    started_by: str | None
    status: str = "running"
    steps: dict[str, StepLine] = field(default_factory=dict)
    error: str | None = None
    canceled_by: str | None = None

    def step(self, path: str, step_id: str | None) -> StepLine:
        line = self.steps.get(path)
        if line is None:
            line = self.steps[path] = StepLine(path=path, step_id=step_id or path)
        return line


def status_text(status: str) -> str:
    label = {"suspended": "waiting for approval", "waiting": "waiting"}.get(status, status)
    return f"{STATUS_ICON.get(status, '')} {label}"


def root_message(cl: Checklist) -> tuple[str, list[dict[str, Any]]]:
    """The run's root message: header, status, who started it, and the live checklist."""
    lines = []
    for line in cl.steps.values():
        note = f" _{escape(line.note)}_" if line.note else ""
        retry = f" (attempt {line.attempts})" if line.attempts > 1 else ""
        lines.append(f"{STEP_ICON.get(line.state, '')} `{escape(line.path)}`{retry}{note}")
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=clip(f"Workflow {cl.workflow_id}", 150))),
        SectionBlock(text=MarkdownTextObject(text=f"*Status:* {status_text(cl.status)}   ·   Run `{cl.run_id}`")),
        ContextBlock(elements=[MarkdownTextObject(
            text=f"Started by {mention(cl.started_by)} · reply in this thread to talk to the agents"
        )]),
    ]
    if lines:
        blocks.append(DividerBlock())
        blocks.append(SectionBlock(text=MarkdownTextObject(text=clip("\n".join(lines)))))
    if cl.error:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=clip(f":x: {escape(cl.error)}"))))
    if cl.status == "canceled":
        blocks.append(SectionBlock(text=MarkdownTextObject(text=f":no_entry_sign: Canceled by {mention(cl.canceled_by)}.")))
    fallback = f"Workflow {cl.workflow_id} ({cl.run_id}): {cl.status}"
    return fallback, [b.to_dict() for b in blocks[:MAX_BLOCKS]]


def is_user_id(text: str) -> bool:
    """Whether ``text`` is shaped like a Slack user id (see ``_USER_ID``)."""
    return _USER_ID.fullmatch(text) is not None


def mention(user: str | None) -> str:
    """A mention of ``user`` when it is a Slack user id; any other name (``--by Walter`` on the CLI) as text."""
    if not user:
        return "someone"
    return f"<@{user}>" if is_user_id(user) else escape(user)


def approval_message(run_id: str, path: str, payload: Any, expires_at: float | None, *,
                     with_reason: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """A suspension: its payload and Approve / Reject buttons whose value carries the run and step
    (and "Reject with reason…" when the step's resume model takes a reason)."""
    title, body = describe_payload(payload)
    value = json.dumps({"run_id": run_id, "step": path})
    context = step_context(run_id, path)
    if expires_at:
        context += f" · expires {datetime.fromtimestamp(expires_at, tz=UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    blocks: list[Block] = [
        SectionBlock(text=MarkdownTextObject(text=clip(f"*{title}*\n{body}" if body else f"*{title}*"))),
        ContextBlock(elements=[MarkdownTextObject(text=context)]),
        ActionsBlock(block_id=f"decision:{path}"[:255], elements=[
            ButtonElement(text="Approve", action_id=APPROVE, value=value, style="primary"),
            ButtonElement(text="Reject", action_id=REJECT, value=value, style="danger"),
            *([ButtonElement(text="Reject with reason…", action_id=REJECT_WITH_REASON, value=value)]
              if with_reason else []),
        ]),
    ]
    fallback = title if "approv" in title.lower() else f"{title}: approval needed"
    return clip(fallback, TEXT_LIMIT), [b.to_dict() for b in blocks]


def decided_message(run_id: str, path: str, payload: Any, approved: bool, by: str | None,
                    reason: str | None = None, expired: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """The same message after the decision: who decided what, and no buttons."""
    title, body = describe_payload(payload)
    if expired:
        verdict = ":hourglass: Expired: no decision in time, so it was rejected."
    elif approved:
        verdict = f":white_check_mark: Approved by {mention(by)}"
    else:
        verdict = f":x: Rejected by {mention(by)}" + (f": {escape(reason)}" if reason else "")
    return clip(verdict, TEXT_LIMIT), _closed_approval(run_id, path, title, body, verdict)


def withdrawn_message(run_id: str, path: str, payload: Any, why: str) -> tuple[str, list[dict[str, Any]]]:
    """The approval message of a run that ended while it waited (canceled, or failed elsewhere): no buttons."""
    title, body = describe_payload(payload)
    verdict = f":no_entry_sign: No decision needed any more: {why}"
    return verdict, _closed_approval(run_id, path, title, body, verdict)


def _closed_approval(run_id: str, path: str, title: str, body: str, verdict: str) -> list[dict[str, Any]]:
    blocks: list[Block] = [
        SectionBlock(text=MarkdownTextObject(text=clip(f"*{title}*\n{body}" if body else f"*{title}*"))),
        SectionBlock(text=MarkdownTextObject(text=clip(verdict))),
        ContextBlock(elements=[MarkdownTextObject(text=step_context(run_id, path))]),
    ]
    return [b.to_dict() for b in blocks]


def step_context(run_id: str, path: str) -> str:
    """The context line of approval messages; it also lets a restarted bot recognise one it posted."""
    return f"Run `{run_id}` · step `{path}`"


def shows_step(message: dict[str, Any], run_id: str, path: str) -> bool:
    """Whether ``message`` (Slack's wire shape) is the approval message of this run's step."""
    marker = step_context(run_id, path)
    for block in message.get("blocks") or []:
        if block.get("type") == "context":
            for element in block.get("elements") or []:
                text = str(element.get("text") or "")
                if text == marker or text.startswith(marker + " ·"):
                    return True
    return False


def describe_payload(payload: Any) -> tuple[str, str]:
    if not isinstance(payload, dict):
        return "Approval needed", pretty(payload) if payload is not None else ""
    title = escape(str(payload.get("title") or payload.get("summary") or "Approval needed"))
    lines = []
    for key, value in payload.items():
        if key in ("title",):
            continue
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            shown = ", ".join(str(v) for v in value)
        shown = mention(value) if isinstance(value, str) and is_user_id(value) else escape(shown)
        lines.append(f"*{escape(key.replace('_', ' '))}:* {shown}")
    return title, clip("\n".join(lines), 2500)


def reject_reason_view(run_id: str, path: str, channel: str, message_ts: str,
                       thread_ts: str | None = None) -> dict[str, Any]:
    meta = json.dumps({"run_id": run_id, "step": path, "channel": channel, "ts": message_ts, "thread_ts": thread_ts})
    view = View(
        type="modal",
        callback_id=REJECT_REASON_VIEW,
        title=PlainTextObject(text="Reject"),
        submit=PlainTextObject(text="Reject"),
        close=PlainTextObject(text="Cancel"),
        private_metadata=meta,
        blocks=[InputBlock(
            block_id="reason",
            label=PlainTextObject(text="Why is this rejected?"),
            element=PlainTextInputElement(action_id="reason", multiline=True),
        )],
    )
    return view.to_dict()


def text_reply(text: str) -> list[dict[str, Any]]:
    return [SectionBlock(text=MarkdownTextObject(text=clip(text))).to_dict()]


def result_reply(status: str, output: Any, error: str | None, error_path: str | None) -> tuple[str, list[dict[str, Any]]]:
    if status == "success":
        text = ":white_check_mark: *Run finished.*"
        if output not in (None, {}):
            text += f"\n```{pretty(output)}```"
    elif status == "canceled":
        text = ":no_entry_sign: *Run canceled.*" + (f" {error}" if error else "")
    else:
        where = f" at step `{escape(error_path)}`" if error_path else ""
        text = f":x: *Run failed{where}.*\n{escape(error or 'unknown error')}"
    return text.split("\n")[0], text_reply(text)


def feedback_block(rates: dict[str, Any]) -> dict[str, Any]:
    """Thumbs up and down under an agent's answer. Each button's value says the rating and which agent call it
    rates: ``{"context_id": N}`` (a chat answer) or ``{"run_id": R, "path": P}`` (an agent step's output, whose
    newest call at that path is the one that counts)."""

    def value(rating: str) -> str:
        return json.dumps({"rating": rating, **rates}, separators=(",", ":"))

    return ContextActionsBlock(elements=[FeedbackButtonsElement(
        action_id=AGENT_FEEDBACK,
        positive_button=FeedbackButtonObject(text="Good answer", value=value("good"),
                                             accessibility_label="This answer was helpful"),
        negative_button=FeedbackButtonObject(text="Bad answer", value=value("bad"),
                                             accessibility_label="This answer was not helpful"),
    )]).to_dict()
