"""Approve / Reject buttons and the reject-with-reason form.

A click is acked at once; then the clicker is authorized against the message and the step, and the engine's
compare-and-set resume decides who wins. The card itself is updated by the run's renderer from the
``run.resumed`` event (one ``chat.update`` per decision, whoever decided: button, CLI or API).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel
from slack_bolt.async_app import AsyncAck, AsyncApp

from storage.errors import DatabaseUnavailable
from storage.records import SuspensionRecord
from storage.slack_store import OutboxMessage
from workflows.errors import AlreadyResumed, RunNotFound, ThreadflowError, UsageError

from .. import blocks
from ..blocks import APPROVE, REJECT, REJECT_REASON_VIEW, REJECT_WITH_REASON
from ..deps import BotDeps
from ..policy import approvers_for
from ..run_access import Requester, no_such_run, same_workspace
from ..slack import SlackCallError, with_retries

log = logging.getLogger("threadflow.bot.approvals")


class Click(BaseModel):
    """Who clicked which decision button, on which message."""

    user: str
    channel: str
    message_ts: str
    thread_ts: str | None
    value: str
    message_blocks: list[dict[str, Any]] | None = None
    #: this app's id (``api_app_id``) and the app that posted the clicked message, as Slack gives them
    app_id: str | None = None
    message_app_id: str | None = None
    team: str = ""
    enterprise: str | None = None

    @property
    def requester(self) -> Requester:
        return Requester(team_id=self.team, channel_id=self.channel, user_id=self.user, enterprise_id=self.enterprise)


class DecisionTarget(BaseModel):
    """The suspension a click may decide, once the clicker is authorized."""

    run_id: str
    path: str
    suspension: SuspensionRecord


def _obj(value: Any) -> dict[str, Any]:
    """A payload part that should be an object; anything else (a forged or broken payload) reads as empty."""
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def click_of(body: dict[str, Any], action: dict[str, Any]) -> Click:
    message, container = _obj(body.get("message")), _obj(body.get("container"))
    blocks_ = message.get("blocks")
    return Click(
        user=_text(_obj(body.get("user")).get("id")),
        channel=_text(_obj(body.get("channel")).get("id")) or _text(container.get("channel_id")),
        message_ts=_text(message.get("ts")) or _text(container.get("message_ts")),
        thread_ts=thread_ts_of_click(body),
        value=_text(action.get("value")),
        message_blocks=[b for b in blocks_ if isinstance(b, dict)] if isinstance(blocks_, list) else None,
        app_id=_text(body.get("api_app_id")) or None,
        message_app_id=_text(message.get("app_id")) or None,
        **workspace_of(body),
    )


def posted_by_this_app(click: Click, run_id: str, path: str, card: OutboxMessage) -> bool:
    """The clicked message could be ``card``'s post whose place was not recorded: a post of it was attempted and no
    place is recorded, and this app posted the message (Slack says so in the signed payload), in the card's thread,
    no earlier than the attempt began, showing this run's step.
    """
    if card.ts is not None or card.attempt_started_at is None:
        return False
    try:
        late_enough = float(click.message_ts) >= card.attempt_started_at - 1.0  # as the look-up by id
    except ValueError:
        return False
    return (late_enough and click.app_id is not None and click.message_app_id == click.app_id
            and click.thread_ts == card.thread_ts and bool(click.message_blocks)
            and blocks.shows_step({"blocks": click.message_blocks}, run_id, path))


def workspace_of(body: dict[str, Any]) -> dict[str, Any]:
    """The workspace (and Enterprise Grid org) an interaction comes from."""
    team = _text(_obj(body.get("team")).get("id")) or _text(_obj(body.get("user")).get("team_id"))
    enterprise = _text(_obj(body.get("enterprise")).get("id")) or None
    return {"team": team, "enterprise": enterprise}


def thread_ts_of_click(body: dict[str, Any]) -> str | None:
    """The thread a clicked message lives in (approval messages are thread replies), if any."""
    thread_ts = _text(_obj(body.get("container")).get("thread_ts")) or _text(_obj(body.get("message")).get("thread_ts"))
    return thread_ts or None


def register(app: AsyncApp, deps: BotDeps) -> None:
    async def on_decision(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        deps.background.spawn(decide(deps, click_of(body, action), approved=action.get("action_id") == APPROVE))

    async def on_reject_with_reason(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        deps.background.spawn(open_reject_form(deps, click_of(body, action), str(body.get("trigger_id") or "")))

    async def on_reject_reason(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        await ack()
        try:
            meta = _obj(json.loads(_text(view.get("private_metadata")) or "{}"))
        except ValueError:
            meta = {}
        values = _obj(_obj(view.get("state")).get("values"))
        reason = _text(_obj(_obj(values.get("reason")).get("reason")).get("value")) or None
        click = Click(user=_text(_obj(body.get("user")).get("id")), channel=_text(meta.get("channel")),
                      message_ts=_text(meta.get("ts")), thread_ts=_text(meta.get("thread_ts")) or None,
                      value=json.dumps({"run_id": meta.get("run_id"), "step": meta.get("step")}), **workspace_of(body))
        deps.background.spawn(decide(deps, click, approved=False, reason=reason))

    app.action(APPROVE)(on_decision)
    app.action(REJECT)(on_decision)
    app.action(REJECT_WITH_REASON)(on_reject_with_reason)
    app.view(REJECT_REASON_VIEW)(on_reject_reason)


#: What a clicker hears when the database stayed out of reach past its retries while their click was handled.
NOT_RECORDED = (":warning: Your decision was most likely not recorded: the database is unavailable right now. If "
                "the card still shows its buttons in a minute, click again (a second click of a decision that was "
                "taken changes nothing).")


async def tell(deps: BotDeps, click: Click, text: str, *, paced: bool = True) -> None:
    """An ephemeral note to the clicker, in the thread it concerns (best effort: logged when Slack refuses).

    ``paced=False`` sends it without waiting for a pacing slot, which is reserved in the database: for a note about
    that database being unavailable."""
    async def post() -> None:
        if paced:
            await deps.slack.post_ephemeral(click.channel, click.user, text, thread_ts=click.thread_ts)
        else:
            thread = {"thread_ts": click.thread_ts} if click.thread_ts else {}
            await deps.slack.call("chat.postEphemeral", channel=click.channel, pace=False, user=click.user, text=text,
                                  **thread)

    try:
        await with_retries(post, attempts=3, max_wait=5.0)
    except (SlackCallError, DatabaseUnavailable) as exc:  # DatabaseUnavailable: a 429's hold is kept there too
        log.warning("could not tell %s about their click: %s", click.user, exc)


async def authorize_decision(deps: BotDeps, click: Click, *, require_open: bool = False) -> DecisionTarget | None:
    """Check that the button belongs to this message and the clicker may decide; tell them ephemerally if not.

    A click decides only on the run's own approval card: from the run's workspace and channel, on the
    message that card is. A click with no message or channel, or from anywhere else, is answered like a click
    on a run that does not exist (:func:`bot.run_access.no_such_run`). ``require_open`` also refuses a step
    that no longer waits (before opening a form for it).
    """
    try:
        value = json.loads(click.value or "{}")
        run_id, path = str(value["run_id"]), str(value["step"])
    except (ValueError, KeyError, TypeError):
        await tell(deps, click, ":warning: This button is malformed; nothing was changed.")
        return None
    slack_run = await deps.store.get_run(run_id)
    if (slack_run is None or not click.channel or not click.message_ts or slack_run.channel_id != click.channel
            or not same_workspace(slack_run, click.requester)):
        await tell(deps, click, no_such_run(run_id, deps.settings.command))
        return None
    try:
        run = await deps.engine.get_run(run_id)
        suspension = next((s for s in await deps.engine.suspensions(run_id) if s.path == path), None)
    except RunNotFound:
        await tell(deps, click, no_such_run(run_id, deps.settings.command))
        return None
    except UsageError as exc:
        await tell(deps, click, f":warning: {exc}")
        return None
    if suspension is None:
        await tell(deps, click, f":warning: Run `{run_id}` has no step `{blocks.escape(path)}` waiting for a decision; "
                                "nothing was changed.")
        return None
    card = await deps.store.approval_message(run_id, path)
    if card is not None and posted_by_this_app(click, run_id, path, card):
        # Slack took the card, but the process that posted it died before it recorded where (a crash, a restart, then
        # this click, before the renderer looked the card up by its delivery id): the click shows where it is, a
        # message this app posted in the card's thread, since the attempt began, showing this step's card. Only the
        # place is recorded (the renderer then edits the card to its newest content); a place a sender recorded
        # first wins, and the click is judged against that.
        card = card.model_copy(update={"ts": await deps.store.record_posted_ts(card.key, click.message_ts)})
        deps.delivery.nudge(run_id)
    if card is None or not card.ts or card.ts != click.message_ts or (
        click.message_blocks and not blocks.shows_step({"blocks": click.message_blocks}, run_id, path)
    ):
        # The button does not belong to this message: never let one run's message decide another's step.
        await tell(deps, click, ":warning: This button does not match this message; nothing was changed.")
        return None
    if suspension.status == "open" and not run.is_terminal and deps.engine.workflow_of(run) is None:
        # Who decides is the step's to say, and this process lacks the run's version (a stranded run, or one a
        # replica still on the old version runs): the click is answered with that, as the resume would be, not
        # judged against the fallback approvers (which would tell the step's approver it is someone else's call).
        try:
            await deps.engine.replica.definition_for(run)
        except ThreadflowError as exc:
            # The whole text (the versions, the processes that have them, what to run) for those who may decide
            # when the step's own approvers are unknown here; to anyone else only what happened.
            fallback = approvers_for(deps.engine, run, suspension.path, deps.settings.approvers)
            await tell(deps, click, f":warning: {blocks.escape(str(exc))}" if click.user in fallback else (
                ":warning: This run waits for a version of its workflow that is not deployed here, so it cannot be "
                "decided now. Nothing was changed."))
            return None
    allowed = approvers_for(deps.engine, run, suspension.path, deps.settings.approvers)
    if click.user not in allowed:
        who = ", ".join(blocks.mention(u) for u in sorted(allowed)) or "nobody"
        await tell(deps, click, f":no_entry: You can't decide this one; it is up to {who}. Nothing was changed.")
        return None
    if require_open and (suspension.status != "open" or run.is_terminal):
        text = (f":information_source: Already decided by {blocks.mention(suspension.resolved_by)}; nothing was changed."
                if suspension.status == "resolved" else f":information_source: Run `{run_id}` is {run.status}; nothing to decide.")
        await tell(deps, click, text)
        return None
    return DecisionTarget(run_id=run_id, path=path, suspension=suspension)


async def open_reject_form(deps: BotDeps, click: Click, trigger_id: str) -> None:
    try:
        target = await authorize_decision(deps, click, require_open=True)
    except DatabaseUnavailable as exc:
        log.warning("could not open the reject form for %s: %s", click.user, exc)
        await tell(deps, click, ":warning: The database is unavailable right now, so the form could not be opened; "
                                "nothing was changed. Click *Reject with reason…* again in a minute.", paced=False)
        return
    if target is None:
        return
    view = blocks.reject_reason_view(target.run_id, target.path, click.channel, click.message_ts, click.thread_ts)
    try:
        await deps.slack.open_view(trigger_id, view)
    except SlackCallError as exc:
        log.warning("could not open the reject form: %s", exc)
        await tell(deps, click, ":warning: Slack did not open the form in time; click *Reject with reason…* again.")


async def decide(deps: BotDeps, click: Click, *, approved: bool, reason: str | None = None) -> None:
    """Authorize the click, then resume the step with the decision; the clicker hears why when it was not taken."""
    try:
        await _decide(deps, click, approved=approved, reason=reason)
    except DatabaseUnavailable as exc:  # an outage longer than the database's retries (README: "a clear error")
        log.warning("the decision of %s on %s was not recorded: %s", click.user, click.value, exc)
        await tell(deps, click, NOT_RECORDED, paced=False)


async def _decide(deps: BotDeps, click: Click, *, approved: bool, reason: str | None) -> None:
    target = await authorize_decision(deps, click)
    if target is None:
        return
    data: dict[str, Any] = {"approved": approved, "by": click.user}
    if reason:
        data["reason"] = reason
    try:
        await deps.engine.resume(target.run_id, step=target.path, data=data, by=click.user)
    except AlreadyResumed as exc:
        await tell(deps, click, f":information_source: Already decided by {blocks.mention(exc.by)}; nothing was changed.")
    except ThreadflowError as exc:
        await tell(deps, click, f":warning: {blocks.escape(str(exc))}")
