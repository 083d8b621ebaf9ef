"""The feedback buttons under agent answers: a click is recorded with the agent call it rates.

Each answer carries Slack's ``feedback_buttons`` (action ``agent_feedback``); a button's value says the rating
(``good`` or ``bad``) and the call: ``{"context_id": N}`` for a chat answer, ``{"run_id", "path"}`` for an
agent step's output (the newest call at that path, the one whose answer the step returned). The rating is
stored in that call's agent context record (``answer["feedback"]``: one entry per person, their latest
rating), next to what the agent was given, so ``threadflow show RUN --context`` and the run inspector show
it; it is counted in ``/metrics`` (``threadflow_agent_feedback_total``) and acknowledged to the person alone.
A rating never resumes, reruns or otherwise changes a run.

A click counts only on the call's own place: a chat answer in the workspace and channel of its thread, an
agent step's output in the workspace and channel of its run. A copy of the button clicked anywhere else
(another channel, another workspace) is answered word for word like a button whose call does not exist.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp

from storage.memory_store import AgentContextRow, MemoryStore

from ..blocks import AGENT_FEEDBACK
from ..delivery.service import thread_id_for
from ..deps import BotDeps
from ..run_access import same_workspace
from .approvals import Click, click_of, tell

log = logging.getLogger("threadflow.bot.feedback")

RATINGS = ("good", "bad")
THANKS = {
    "good": ":thumbsup: Thanks! Noted that this answer helped.",
    "bad": ":memo: Thanks, noted that this answer did not help. Say in the thread what was wrong and I'll try again.",
}


def register(app: AsyncApp, deps: BotDeps) -> None:
    async def on_feedback(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        deps.background.spawn(record_feedback(deps, click_of(body, action)))

    app.action(AGENT_FEEDBACK)(on_feedback)


async def record_feedback(deps: BotDeps, click: Click) -> AgentContextRow | None:
    """Store the click's rating with the agent call it rates; tell the person (ephemerally) either way."""
    try:
        value = json.loads(click.value or "{}")
        rating = str(value["rating"])
        if rating not in RATINGS or not click.user:
            raise ValueError(rating)
    except (ValueError, KeyError, TypeError):
        await tell(deps, click, ":warning: This feedback button is malformed; nothing was recorded.")
        return None
    store = MemoryStore(deps.engine.db)
    context_id = await _rated_call(store, value)
    if context_id is not None and not await _rated_here(deps, store, context_id, click):
        context_id = None  # another channel's or workspace's answer: as if it did not exist
    entry = {"user": click.user, "rating": rating, "at": time.time(), "channel": click.channel,
             "message_ts": click.message_ts}
    row = await store.record_feedback(context_id, entry) if context_id is not None else None
    if row is None:
        await tell(deps, click, ":warning: I no longer have the answer this button rates (it may have been "
                                "deleted by retention); nothing was recorded.")
        return None
    deps.metrics.agent_feedback.labels(rating).inc()
    log.info("feedback %s on agent call %s (run %s, %s) from %s", rating, row.id, row.run_id or "-",
             row.path or "chat", click.user)
    await tell(deps, click, THANKS[rating])
    return row


async def _rated_call(store: MemoryStore, value: dict[str, Any]) -> int | None:
    if isinstance(value.get("context_id"), int):
        return int(value["context_id"])
    if isinstance(value.get("run_id"), str) and isinstance(value.get("path"), str):
        latest = await store.latest_agent_context(value["run_id"], value["path"])
        return latest.id if latest is not None else None
    return None


async def _rated_here(deps: BotDeps, store: MemoryStore, context_id: int, click: Click) -> bool:
    """The rated call was made in the click's workspace and channel (its chat thread's, or its run's)."""
    row = await store.get_agent_context(context_id)
    if row is None or not click.channel:
        return False
    if row.thread_id and row.thread_id.startswith(thread_id_for(click.team, click.channel, "")):
        return True
    if row.run_id:
        slack_run = await deps.store.get_run(row.run_id)
        return (slack_run is not None and slack_run.channel_id == click.channel
                and same_workspace(slack_run, click.requester))
    return False


__all__ = ["RATINGS", "record_feedback", "register"]
