"""The Slack bot: bolt listeners that turn Slack payloads into engine calls, and the Slack client it posts with.

Listeners ack first (Slack's 3-second deadline), then do their work in tasks this object keeps references
to (bolt does not keep them). The bot never executes workflows itself: the engine's dispatcher does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from storage.slack_store import SlackRun, SlackStore
from workflows import Engine
from workflows.engine import new_run_id
from workflows.errors import ThreadflowError, UsageError
from workflows.tracing import log_context

from . import blocks
from .blocks import APPROVE, REJECT, REJECT_REASON_VIEW, REJECT_WITH_REASON
from .chat import ThreadChat
from .commands import parse_command, parse_run_input, split_run_args, usage
from .metrics import Metrics
from .policy import approvers_for
from .progress import ProgressRenderer
from .schedule_commands import handle_schedule_command, make_scheduler
from .settings import Settings

log = logging.getLogger("threadflow.bot")


def make_client(settings: Settings, metrics: Metrics | None = None) -> AsyncWebClient:
    """The Web API client: Slack's base URL is a setting; 429s, 5xx and dropped connections are retried."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    return AsyncWebClient(
        token=token,
        base_url=settings.slack_api_url,
        retry_handlers=[
            metrics.rate_limit_handler(3) if metrics is not None else AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            AsyncServerErrorRetryHandler(max_retry_count=2),
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
        ],
    )


def thread_id_for(team: str, channel: str, ts: str) -> str:
    return f"slack:{team}:{channel}:{ts}"


def resource_id_for(team: str, channel: str) -> str:
    return f"slack:{team}:{channel}"


def _first(value: Any) -> str:
    """Header values arrive as a string or a list of strings, depending on the adapter."""
    if isinstance(value, list | tuple):
        return str(value[0]) if value else ""
    return str(value or "")


def clicked_in_thread(body: dict[str, Any]) -> str | None:
    """The thread a clicked message lives in (approval messages are thread replies), if any."""
    thread_ts = (body.get("container") or {}).get("thread_ts") or (body.get("message") or {}).get("thread_ts")
    return str(thread_ts) if thread_ts else None


class SlackBot:
    def __init__(self, settings: Settings, engine: Engine, *, client: AsyncWebClient | None = None) -> None:
        settings.require_slack()
        assert settings.slack_signing_secret is not None
        self.settings = settings
        self.engine = engine
        self.metrics = Metrics(engine)
        self.client = client or make_client(settings, self.metrics)
        self.store = SlackStore(engine.db)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.renderers: dict[str, asyncio.Task[None]] = {}
        self.chat = ThreadChat(self)
        self.scheduler = make_scheduler(self)
        #: How long this process may render a run before another one takes over (renewed while it renders).
        self.render_lease = max(5.0, 3 * settings.poll_interval)
        self._sweeper: asyncio.Task[None] | None = None
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self._claiming_render: set[str] = set()
        self._channel_last_post: dict[str, float] = {}
        self._verifier = SignatureVerifier(settings.slack_signing_secret.get_secret_value())
        self.app = AsyncApp(
            client=self.client,
            signing_secret=settings.slack_signing_secret.get_secret_value(),
            # Every listener acks first and leaves slow work to a background task (``spawn``), so the HTTP
            # response can go out as soon as the listener returns. With False, bolt would run the listener
            # in a task and poll every 10 ms for its ack: up to 10 ms more per request, and 50 pollers
            # spinning under a burst of slash commands.
            process_before_response=True,
        )
        self._register()

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the engine, start the scheduler, and render every run shown in Slack that needs it.

        Rendering is leased per run in the database: after a restart, or when the replica rendering a run
        died, the sweep here picks it up, so one process renders each run at a time.
        """
        await self.engine.open()
        await self.sweep_renders()
        self._sweeper = asyncio.get_running_loop().create_task(self._render_sweeper(), name="threadflow-render-sweep")
        self.scheduler.start(self.settings.schedule_interval)

    async def close(self) -> None:
        await self.scheduler.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run_id in list(self.renderers):
            await self.store.release_render(run_id, self.engine.owner)
        await self.chat.close()
        self.metrics.close()

    async def sweep_renders(self) -> None:
        live = [run_id for run_id, task in self.renderers.items() if not task.done()]
        await self.store.renew_renders(self.engine.owner, live, self.render_lease)
        for slack_run in await self.store.runs_needing_render():
            if slack_run.run_id not in live:
                await self.render(slack_run)

    async def _render_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.render_lease / 3)
            try:
                await self.sweep_renders()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("render sweep failed; retrying")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def render(self, slack_run: SlackRun) -> None:
        """Render this run's progress here, if no other live process does."""
        run_id = slack_run.run_id
        current = self.renderers.get(run_id)
        if (current is not None and not current.done()) or run_id in self._claiming_render:
            return
        # Marked before the claim's await: the sweeper and the command that started the run may both get
        # here at once, and the lease (held by this same process) would let both render, posting twice.
        self._claiming_render.add(run_id)
        try:
            if not await self.store.claim_render(run_id, self.engine.owner, self.render_lease):
                return
            self.renderers[run_id] = self.spawn(self._render(slack_run))
        finally:
            self._claiming_render.discard(run_id)

    async def _render(self, slack_run: SlackRun) -> None:
        try:
            with log_context(run_id=slack_run.run_id, slack_thread=slack_run.thread_id):
                await ProgressRenderer(self, slack_run).render()
        finally:
            self.renderers.pop(slack_run.run_id, None)
            await self.store.release_render(slack_run.run_id, self.engine.owner)

    async def is_replay(self, body: str, headers: dict[str, Any]) -> bool:
        """A validly signed request whose exact signature was seen before is a replay, never a Slack retry.

        A byte-identical request is someone replaying a captured one within the 5-minute timestamp window:
        Slack never retries slash commands or clicks. Event retries (``X-Slack-Retry-Num``) may repeat a
        signature; those pass, and the per-message dedupe answers each message once. Unsigned or badly
        signed requests are left to bolt, which refuses them without touching the database.
        """
        flat = {str(k).lower(): _first(v) for k, v in headers.items()}
        if not self._verifier.is_valid_request(body, flat):
            return False
        if flat.get("x-slack-retry-num") and body.lstrip().startswith("{"):
            # Slack's own retry of an Events API delivery: answered once by the per-message dedupe instead.
            return False
        signature = flat.get("x-slack-signature", "")
        return not await self.store.first_time(f"signature:{signature}")

    # -- Slack calls -------------------------------------------------------------------------------------

    async def slack_call(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        """Call the Web API; failures are logged (never raised): Slack trouble must not fail a run."""
        try:
            response = await getattr(self.client, method)(**kwargs)
        except SlackApiError as exc:
            limited = exc.response is not None and exc.response.status_code == 429
            self.metrics.slack_call(method, ok=False, ratelimited=limited)
            log.warning("Slack %s failed: %s", method, exc.response.get("error") if exc.response else exc)
            return None
        except Exception as exc:
            self.metrics.slack_call(method, ok=False)
            log.warning("Slack %s failed: %s", method, type(exc).__name__)
            return None
        self.metrics.slack_call(method, ok=True)
        return dict(response.data) if isinstance(response.data, dict) else None

    async def post_in_thread(self, run: SlackRun, text: str, blocks_: list[dict[str, Any]] | None = None) -> str | None:
        async with self._channel_pace(run.channel_id):
            data = await self.slack_call("chat_postMessage", channel=run.channel_id, thread_ts=run.root_ts, text=text,
                                         blocks=blocks_)
        return str(data["ts"]) if data and data.get("ts") else None

    @contextlib.asynccontextmanager
    async def _channel_pace(self, channel: str) -> AsyncIterator[None]:
        """Slack allows about one message per second per channel: posts to one channel go one at a time,
        at least THREADFLOW_PROGRESS_INTERVAL apart (429s that still happen are retried by slack_sdk)."""
        lock = self._channel_locks.setdefault(channel, asyncio.Lock())
        async with lock:
            wait = self._channel_last_post.get(channel, 0.0) + self.settings.progress_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._channel_last_post[channel] = time.monotonic()

    async def ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        """Show ``text`` to ``user`` only; in the thread it concerns, else it lands in the channel unseen."""
        await self.slack_call("chat_postEphemeral", channel=channel, user=user, text=text, thread_ts=thread_ts)

    async def remember(self, run: SlackRun, text: str) -> None:
        """Note what happened in the thread's memory, so the agents answering there know it."""
        memory = self.engine.memory
        if memory is None:
            return
        try:
            thread = memory.thread(run.thread_id, resource_id_for(run.team_id, run.channel_id), run_id=run.run_id)
            await thread.add("assistant", text, author="threadflow")
        except Exception:
            log.exception("could not write to memory thread %s", run.thread_id)

    def readable_output(self, workflow_id: str, step_id: str | None, output: Any) -> str | None:
        """An agent step's output worth posting in the thread (plain steps stay in the checklist)."""
        wf = self.engine.workflows.get(workflow_id)
        step = wf.find_step(step_id) if wf and step_id else None
        if step is None or not step.metadata.get("post_output"):
            return None
        name = step.metadata.get("agent") or step.id
        if isinstance(output, dict):
            for key in ("text", "answer", "summary", "message"):
                if isinstance(output.get(key), str):
                    return f"*{name}* (`{step.id}`):\n{blocks.clip(output[key], 2800)}"
        return f"*{name}* (`{step.id}`):\n```{blocks.pretty(output, 2600)}```"

    # -- listeners ---------------------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.command(self.settings.command)(self.on_command)
        app.action(APPROVE)(self.on_decision)
        app.action(REJECT)(self.on_decision)
        app.action(REJECT_WITH_REASON)(self.on_reject_with_reason)
        app.view(REJECT_REASON_VIEW)(self.on_reject_reason)
        app.event("app_mention")(self.chat.on_mention)
        app.event("message")(self.chat.on_message)
        app.error(self.on_error)

    async def on_error(self, error: Exception, body: dict[str, Any]) -> None:
        log.error("unhandled error in a Slack listener: %s", type(error).__name__, exc_info=error)

    async def on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        name = self.settings.command
        try:
            cmd = parse_command(command.get("text", ""), name)
            if cmd.verb == "help":
                await ack(response_type="ephemeral", text=usage(name))
                return
            if cmd.verb == "workflows":
                await ack(response_type="ephemeral", text=self.workflows_text())
                return
            if cmd.verb == "run":
                workflow_id, raw = split_run_args(cmd.args)
                wf = self.engine.get_workflow(workflow_id)
                data = parse_run_input(wf, raw)
                await ack()
                self.spawn(self.start_run(command, wf.id, data, respond))
                return
            if cmd.verb in ("schedule", "schedules", "unschedule"):
                await ack()
                self.spawn(self.answer_schedule(cmd.verb, cmd.args, command, respond))
                return
        except UsageError as exc:
            await ack(response_type="ephemeral", text=f":warning: {exc}\n{usage(name)}" if "Usage" not in str(exc) else f":warning: {exc}")
            return
        await ack()
        self.spawn(self.answer(cmd.verb, cmd.args, command, respond))

    def workflows_text(self) -> str:
        lines = ["*Workflows you can run*"]
        for wf in sorted(self.engine.workflows.values(), key=lambda w: w.id):
            schema = wf.input_schema() or {}
            fields = ", ".join(schema.get("properties", {})) or "no input"
            desc = f": {wf.description}" if wf.description else ""
            lines.append(f"• `{wf.id}`{desc} (input: {fields})")
        return "\n".join(lines)

    async def start_run(self, command: dict[str, Any], workflow_id: str, data: Any, respond: Any) -> None:
        team, channel, user = command.get("team_id", ""), command["channel_id"], command["user_id"]
        run_id = new_run_id()
        fallback, root_blocks = blocks.root_message(blocks.Checklist(
            run_id=run_id, workflow_id=workflow_id, started_by=user, status="pending"))
        posted = await self.slack_call("chat_postMessage", channel=channel, text=fallback, blocks=root_blocks)
        if not posted or not posted.get("ts"):
            await respond(response_type="ephemeral", replace_original=False,
                          text=":warning: I could not post in this channel. Invite me with `/invite @threadflow` and try again.")
            return
        root_ts = str(posted["ts"])
        channel = str(posted.get("channel") or channel)
        slack_run = SlackRun(run_id=run_id, team_id=team, channel_id=channel, root_ts=root_ts,
                             thread_id=thread_id_for(team, channel, root_ts), started_by=user, created_at=time.time())
        await self.store.add_run(slack_run)
        try:
            await self.engine.start(workflow_id, data, thread_id=slack_run.thread_id,
                                    resource_id=resource_id_for(team, channel), started_by=user, run_id=run_id)
        except ThreadflowError as exc:
            await respond(response_type="ephemeral", replace_original=False, text=f":warning: {exc}")
            await self.slack_call("chat_update", channel=channel, ts=root_ts, text=f"Could not start: {exc}",
                                  blocks=blocks.text_reply(f":x: Could not start `{workflow_id}`: {exc}"))
            return
        await self.render(slack_run)

    async def answer_schedule(self, verb: str, args: str, command: dict[str, Any], respond: Any) -> None:
        text = await handle_schedule_command(self, verb, args, command)
        await respond(response_type="ephemeral", replace_original=False, text=text)

    async def answer(self, verb: str, args: str, command: dict[str, Any], respond: Any) -> None:
        """``runs``, ``status`` and ``cancel``: answered ephemerally through the response_url."""
        name = self.settings.command
        user = command["user_id"]
        try:
            if verb == "runs":
                text = await self.runs_text()
            elif verb == "status":
                text = await self.status_text(args.split()[0])
            else:
                text = await self.cancel_text(args.split()[0], user)
        except UsageError as exc:
            text = f":warning: {exc}\n{usage(name)}"
        await respond(response_type="ephemeral", replace_original=False, text=text)

    async def runs_text(self) -> str:
        runs = await self.engine.list_runs(limit=15)
        if not runs:
            return "No runs yet. Start one with `" + self.settings.command + " run WORKFLOW`."
        lines = ["*Recent runs*"]
        for r in runs:
            lines.append(f"• `{r.id}` {r.workflow_id}: {blocks.status_text(r.status)} (by {blocks.mention(r.started_by)})")
        return "\n".join(lines)

    async def status_text(self, run_id: str) -> str:
        details = await self.engine.details(run_id)
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
            lines.append(f":x: {run.error.get('message')}")
        return "\n".join(lines)

    async def cancel_text(self, run_id: str, user: str) -> str:
        run = await self.engine.get_run(run_id)
        allowed = set(self.settings.approvers) | ({run.started_by} if run.started_by else set())
        if user not in allowed:
            return f":no_entry: Only {', '.join(blocks.mention(u) for u in sorted(allowed))} may cancel run `{run_id}`."
        result = await self.engine.cancel(run_id, by=user)
        return f"Run `{run_id}` is {result.status}."

    # -- approvals ---------------------------------------------------------------------------------------

    def approvers_for(self, workflow_id: str, step_id: str, started_by: str | None) -> set[str]:
        return approvers_for(self.engine, workflow_id, step_id, started_by, self.settings.approvers)

    async def on_decision(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self.spawn(self.decide(body, action, approved=action.get("action_id") == APPROVE, reason=None))

    async def on_reject_with_reason(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self.spawn(self.open_reject_form(body, action))

    async def open_reject_form(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        target = await self.check_decider(body, action, require_open=True)
        if target is None:
            return
        run_id, path, channel, message_ts = target
        view = blocks.reject_reason_view(run_id, path, channel, message_ts, clicked_in_thread(body))
        await self.slack_call("views_open", trigger_id=body.get("trigger_id"), view=view)

    async def on_reject_reason(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        await ack()
        meta = json.loads(view.get("private_metadata") or "{}")
        values = view.get("state", {}).get("values", {})
        reason = (values.get("reason", {}).get("reason", {}) or {}).get("value")
        fake_body = {"user": body.get("user", {}), "channel": {"id": meta.get("channel")},
                     "message": {"ts": meta.get("ts"), "thread_ts": meta.get("thread_ts")}}
        action = {"action_id": REJECT, "value": json.dumps({"run_id": meta.get("run_id"), "step": meta.get("step")})}
        self.spawn(self.decide(fake_body, action, approved=False, reason=reason))

    async def check_decider(
        self, body: dict[str, Any], action: dict[str, Any], *, require_open: bool = False
    ) -> tuple[str, str, str, str] | None:
        """Parse the button and check the clicker may decide, on this message; tell them ephemerally if not.

        ``require_open`` also refuses a step that no longer waits (before opening a form for it).
        """
        user = (body.get("user") or {}).get("id", "")
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id", "")
        message_ts = (body.get("message") or {}).get("ts") or (body.get("container") or {}).get("message_ts", "")
        thread_ts = clicked_in_thread(body)
        try:
            value = json.loads(action.get("value") or "{}")
            run_id, path = str(value["run_id"]), str(value["step"])
        except (ValueError, KeyError, TypeError):
            await self.ephemeral(channel, user, ":warning: This button is malformed; nothing was changed.", thread_ts)
            return None
        try:
            run = await self.engine.get_run(run_id)
        except UsageError as exc:
            await self.ephemeral(channel, user, f":warning: {exc}", thread_ts)
            return None
        suspension = next((s for s in await self.engine.store.suspensions_of(run_id) if s.path == path), None)
        shown = await self.store.get_approval(run_id, path)
        if suspension is None:
            await self.ephemeral(channel, user, f":warning: Run `{run_id}` has no step `{path}` waiting for a decision; "
                                 "nothing was changed.", thread_ts)
            return None
        clicked = body.get("message") or {}
        if (shown is not None and message_ts and shown.message_ts != message_ts) or (
            clicked.get("blocks") and not blocks.shows_step(clicked, run_id, path)
        ):
            # The button does not belong to this message: never let one run's message decide another's step.
            await self.ephemeral(channel, user, ":warning: This button does not match this message; nothing was changed.",
                                 thread_ts)
            return None
        allowed = self.approvers_for(run.workflow_id, suspension.step_id, run.started_by)
        if user not in allowed:
            who = ", ".join(blocks.mention(u) for u in sorted(allowed)) or "nobody"
            await self.ephemeral(channel, user, f":no_entry: You can't decide this one; it is up to {who}. Nothing was changed.",
                                 thread_ts)
            return None
        if require_open and (suspension.status != "open" or run.is_terminal):
            text = (f":information_source: Already decided by {blocks.mention(suspension.resolved_by)}; nothing was changed."
                    if suspension.status == "resolved" else f":information_source: Run `{run_id}` is {run.status}; nothing to decide.")
            await self.ephemeral(channel, user, text, thread_ts)
            return None
        return run_id, path, channel, message_ts

    async def decide(self, body: dict[str, Any], action: dict[str, Any], *, approved: bool, reason: str | None) -> None:
        target = await self.check_decider(body, action)
        if target is None:
            return
        run_id, path, channel, message_ts = target
        user = body["user"]["id"]
        data: dict[str, Any] = {"approved": approved, "by": user}
        if reason:
            data["reason"] = reason
        try:
            await self.engine.resume(run_id, step=path, data=data, by=user)
        except ThreadflowError as exc:
            already = getattr(exc, "by", None)
            text = (f":information_source: Already decided by {blocks.mention(already)}; nothing was changed."
                    if type(exc).__name__ == "AlreadyResumed" else f":warning: {exc}")
            await self.ephemeral(channel, user, text, clicked_in_thread(body))
            return
        suspension = next((s for s in await self.engine.store.suspensions_of(run_id) if s.path == path), None)
        text, decided = blocks.decided_message(run_id, path, suspension.payload if suspension else None, approved, user, reason)
        if channel and message_ts:
            await self.slack_call("chat_update", channel=channel, ts=message_ts, text=text, blocks=decided)
