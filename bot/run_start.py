"""Starting a run in a Slack channel: its root message first, then the run in that message's thread (or, from an
assistant thread, all of it in that thread)."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel

from storage.errors import DatabaseUnavailable
from storage.slack_store import SlackRun
from workflows import new_run_id
from workflows.errors import ThreadflowError

from . import blocks
from .delivery.service import resource_id_for, thread_id_for
from .deps import BotDeps
from .slack import (
    Posted,
    SlackCallError,
    Transient,
    delivery_metadata,
    describe_for_people,
    ts_of_delivery,
    with_retries,
)
from .slack.workspace import in_workspace

log = logging.getLogger("threadflow.bot.commands")

#: Posts of a run's root message: one more after an answer that was lost and a look-up that found nothing (the look-up
#: is paced at one a minute per workspace: a person waits at most one).
ROOT_POST_ATTEMPTS = 2
#: Seconds before a post that a look-up for it reads back from (this machine's clock and Slack's may differ).
LOOKUP_MARGIN = 60.0


class StartRequest(BaseModel):
    """A run to start in a channel, as ``/flow run`` or a schedule asks for it."""

    team_id: str
    channel_id: str
    user_id: str
    workflow_id: str
    data: Any = None
    #: Start the run in this existing thread (an assistant thread): its root message, progress and approval
    #: cards are replies there, and the thread is its memory. None: a new thread under the root message.
    thread_ts: str | None = None
    #: The Enterprise Grid org of the workspace (None outside Grid).
    enterprise_id: str | None = None


class StartOutcome(BaseModel):
    """The run started (``run_id``), or what to tell the person who asked (``problem``)."""

    run_id: str | None = None
    problem: str | None = None


async def start_run_in_channel(deps: BotDeps, request: StartRequest) -> StartOutcome:
    """Post the run's root message in the channel, then start the run in its thread and render it there.

    The root message goes out first and directly (its ``ts`` names the run's memory thread); when Slack
    cannot take it, nothing is started and the outcome says why in words that are true for the case. Every
    call is made for (and with the token of) the request's workspace, whoever asks (a command, a schedule).

    Raises :class:`~storage.errors.DatabaseUnavailable` when the database stays out of reach past its retries: the
    root message says by then that the run was not started (:func:`outage_problem`); the caller tells the person
    who asked, and a schedule fires again once the database is back.
    """
    with in_workspace(request.team_id, request.enterprise_id):
        return await _start(deps, request)


async def _start(deps: BotDeps, request: StartRequest) -> StartOutcome:
    run_id = new_run_id()
    text, root_blocks = blocks.root_message(blocks.Checklist(
        run_id=run_id, workflow_id=request.workflow_id, started_by=request.user_id, status="pending"))
    key = f"root:{run_id}"
    posted: Posted | None = None
    for attempt in range(1, ROOT_POST_ATTEMPTS + 1):
        asked_at = time.time()
        try:
            posted = await with_retries(lambda: deps.slack.post_message(
                request.channel_id, text, blocks=root_blocks, thread_ts=request.thread_ts,
                metadata=delivery_metadata(key)), retry_errors_after_delivery=False)
            break
        except SlackCallError as exc:
            # An answer lost (no answer, a 5xx): Slack may have posted it. Looked for by its delivery id: found, the
            # run starts in its thread; surely not there, it is posted again; else the person is told.
            lost_answer = isinstance(exc, Transient) and exc.maybe_delivered
            known, posted = await _posted_anyway(deps, request, key, asked_at) if lost_answer else (False, None)
            if posted is not None:
                log.info("the root message of run %s reached Slack though its answer was lost (%s)", run_id, exc)
                break
            if not known or attempt == ROOT_POST_ATTEMPTS:
                log.warning("could not post the root message of a %s run: %s", request.workflow_id, exc)
                return StartOutcome(problem=describe_for_people(exc, deps.settings.command))
    assert posted is not None
    team, channel = request.team_id, posted.channel
    slack_run = SlackRun(run_id=run_id, team_id=team, channel_id=channel, root_ts=posted.ts,
                         thread_id=thread_id_for(team, channel, request.thread_ts or posted.ts),
                         started_by=request.user_id, created_at=time.time(), thread_ts=request.thread_ts,
                         enterprise_id=request.enterprise_id)
    try:
        await deps.store.add_run(slack_run, {"text": text, "blocks": root_blocks})
        await deps.engine.start(request.workflow_id, request.data, thread_id=slack_run.thread_id,
                                resource_id=resource_id_for(team, channel), started_by=request.user_id, run_id=run_id)
    except ThreadflowError as exc:
        await _mark_not_started(deps, run_id, posted, f"Could not start: {exc}",
                                f":x: Could not start `{request.workflow_id}`: {blocks.escape(str(exc))}")
        return StartOutcome(problem=str(exc))
    except DatabaseUnavailable as exc:
        log.warning("could not start a %s run (%s): %s", request.workflow_id, run_id, exc)
        # Slack is told without waiting for a pacing slot: those are reserved in the database that is out of reach.
        await _mark_not_started(deps, run_id, posted, outage_problem(request.workflow_id),
                                f":x: {outage_problem(request.workflow_id)}", paced=False)
        raise
    await deps.delivery.ensure_rendering(slack_run)
    return StartOutcome(run_id=run_id)


def outage_problem(workflow_id: str) -> str:
    """What a person hears when a start met a database outage longer than the database's retries."""
    return (f"Could not start `{workflow_id}`: the database is unavailable right now, so the run was most likely not "
            "started. Check `/flow status` in a minute before you try again.")


async def _mark_not_started(deps: BotDeps, run_id: str, posted: Posted, text: str, shown: str, *,
                            paced: bool = True) -> None:
    """Edit the root message so the channel does not show, for good, a pending run that does not exist."""
    try:
        if paced:
            await deps.slack.update_message(posted.channel, posted.ts, text, blocks=blocks.text_reply(shown))
        else:
            await deps.slack.call("chat.update", channel=posted.channel, pace=False, ts=posted.ts, text=text,
                                  blocks=blocks.text_reply(shown))
    except (SlackCallError, DatabaseUnavailable) as exc:  # DatabaseUnavailable: a 429's hold is kept there too
        log.warning("could not mark the root message of run %s as not started: %s", run_id, exc)


async def _posted_anyway(deps: BotDeps, request: StartRequest, key: str, since: float) -> tuple[bool, Posted | None]:
    """Whether Slack could be asked, and the root message it took although its answer was lost (no answer, a 5xx),
    found by its delivery id (None: not there)."""
    try:
        if request.thread_ts is None:
            messages = await deps.slack.channel_history(request.channel_id, oldest=since - LOOKUP_MARGIN)
        else:
            messages = await deps.slack.thread_replies(request.channel_id, request.thread_ts, oldest=since - LOOKUP_MARGIN)
    except SlackCallError as exc:
        log.warning("could not look for a root message whose answer was lost (%s): %s", key, exc)
        return False, None
    ts = ts_of_delivery(messages, key)
    return True, None if ts is None else Posted(request.channel_id, ts)
