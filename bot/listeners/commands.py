"""``/flow ...``: parse and validate before the ack (a bad command gets its error in the ack itself), then
start runs and answer queries in background tasks."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from storage.errors import DatabaseUnavailable
from workflows.errors import RunNotFound, UsageError

from .. import blocks
from ..commands import parse_command, parse_run_input, split_run_args, usage
from ..deps import BotDeps
from ..policy import may_cancel
from ..run_access import Requester, no_such_run
from ..run_start import StartOutcome, StartRequest, outage_problem, start_run_in_channel
from ..schedule_commands import handle_schedule_command

log = logging.getLogger("threadflow.bot.commands")


def register(app: AsyncApp, deps: BotDeps) -> None:
    name = deps.settings.command

    async def on_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        try:
            cmd = parse_command(command.get("text", ""), name)
            if cmd.verb == "help":
                await ack(response_type="ephemeral", text=usage(name))
                return
            if cmd.verb == "workflows":
                await ack(response_type="ephemeral", text=workflows_text(deps))
                return
            if cmd.verb == "run":
                workflow_id, raw = split_run_args(cmd.args)
                wf = deps.engine.get_workflow(workflow_id)
                request = StartRequest(team_id=command.get("team_id", ""), channel_id=command["channel_id"],
                                       enterprise_id=command.get("enterprise_id") or None,
                                       user_id=command["user_id"], workflow_id=wf.id, data=parse_run_input(wf, raw))
                await ack()
                deps.background.spawn(start_and_report(deps, request, respond))
                return
            if cmd.verb in ("schedule", "schedules", "unschedule"):
                await ack()
                deps.background.spawn(answer_schedule(deps, cmd.verb, cmd.args, command, respond))
                return
        except UsageError as exc:
            text = f":warning: {exc}" if "Usage" in str(exc) else f":warning: {exc}\n{usage(name)}"
            await ack(response_type="ephemeral", text=text)
            return
        await ack()
        deps.background.spawn(answer_run_query(deps, cmd.verb, cmd.args, command, respond))

    app.command(name)(on_command)


async def start_and_report(deps: BotDeps, request: StartRequest, respond: AsyncRespond) -> None:
    try:
        outcome = await start_run_in_channel(deps, request)
    except DatabaseUnavailable:  # nothing was started (a root message already posted says so too)
        outcome = StartOutcome(problem=outage_problem(request.workflow_id))
    if outcome.problem is not None:
        await respond(response_type="ephemeral", replace_original=False, text=f":warning: {outcome.problem}")


async def answer_schedule(deps: BotDeps, verb: str, args: str, command: dict[str, Any], respond: AsyncRespond) -> None:
    text = await handle_schedule_command(deps.settings, deps.engine, verb, args, command, access=deps.runs)
    await respond(response_type="ephemeral", replace_original=False, text=text)


def workflows_text(deps: BotDeps) -> str:
    lines = ["*Workflows you can run*"]
    for wf in sorted(deps.engine.workflows.values(), key=lambda w: w.id):
        schema = wf.input_schema() or {}
        fields = ", ".join(schema.get("properties", {})) or "no input"
        desc = f": {wf.description}" if wf.description else ""
        lines.append(f"• `{wf.id}`{desc} (input: {fields})")
    return "\n".join(lines)


def requester_of(command: dict[str, Any]) -> Requester:
    """Who typed the command, and where (the enterprise id is there on Enterprise Grid)."""
    return Requester(team_id=str(command.get("team_id") or ""), channel_id=str(command.get("channel_id") or ""),
                     user_id=str(command.get("user_id") or ""),
                     enterprise_id=str(command.get("enterprise_id") or "") or None)


async def answer_run_query(deps: BotDeps, verb: str, args: str, command: dict[str, Any], respond: AsyncRespond) -> None:
    """``runs``, ``status`` and ``cancel``: answered ephemerally through the response_url, and only about runs
    the person can see (:mod:`bot.run_access`)."""
    who = requester_of(command)
    try:
        if verb == "runs":
            text = await runs_text(deps, who)
        elif verb == "status":
            text = await status_text(deps, who, args.split()[0])
        else:
            text = await cancel_text(deps, who, args.split()[0])
    except UsageError as exc:
        text = f":warning: {exc}\n{usage(deps.settings.command)}"
    await respond(response_type="ephemeral", replace_original=False, text=text)


def unknown_run(deps: BotDeps, run_id: str) -> str:
    """The answer for a run that does not exist or that the person may not see: the same words for both."""
    return f"{no_such_run(run_id, deps.settings.command)}\n{usage(deps.settings.command)}"


async def runs_text(deps: BotDeps, who: Requester) -> str:
    shown = await deps.runs.visible_runs(who, limit=15)
    runs = []
    for slack_run in shown:
        try:
            runs.append(await deps.engine.get_run(slack_run.run_id))
        except RunNotFound:
            continue  # removed by retention since
    if not runs:
        return "No runs yet. Start one with `" + deps.settings.command + " run WORKFLOW`."
    lines = ["*Recent runs*"]
    for r in runs:
        lines.append(f"• `{r.id}` {r.workflow_id}: {blocks.status_text(r.status)} (by {blocks.mention(r.started_by)})")
    return "\n".join(lines)


async def status_text(deps: BotDeps, who: Requester, run_id: str) -> str:
    if await deps.runs.visible_run(who, run_id) is None:
        return unknown_run(deps, run_id)
    try:
        details = await deps.engine.details(run_id)
    except RunNotFound:
        return unknown_run(deps, run_id)
    run = details.run
    lines = [f"*Run `{run.id}`* ({run.workflow_id}): {blocks.status_text(run.status)}"]
    for s in details.steps:
        if s.kind == "step":
            lines.append(f"• `{s.path}` done" + (f" after {s.attempts} attempts" if s.attempts > 1 else ""))
    for sp in details.suspensions:
        if sp.status == "open":
            lines.append(f"• `{sp.path}` waiting" + (" for approval" if sp.kind == "suspend" else f" for event {sp.event_name}"))
        else:
            lines.append(f"• `{sp.path}` resumed by {blocks.mention(sp.resolved_by)}")
    if run.error:
        lines.append(f":x: {blocks.escape(str(run.error.get('message')))}")
    return "\n".join(lines)


async def cancel_text(deps: BotDeps, who: Requester, run_id: str) -> str:
    if await deps.runs.visible_run(who, run_id) is None:
        return unknown_run(deps, run_id)
    try:
        run = await deps.engine.get_run(run_id)
    except RunNotFound:
        return unknown_run(deps, run_id)
    user = who.user_id
    if not may_cancel(user, run.started_by, deps.settings.approvers):
        allowed = set(deps.settings.approvers) | ({run.started_by} if run.started_by else set())
        return f":no_entry: Only {', '.join(blocks.mention(u) for u in sorted(allowed))} may cancel run `{run_id}`."
    result = await deps.engine.cancel(run_id, by=user)
    return f"Run `{run_id}` is {result.status}."
