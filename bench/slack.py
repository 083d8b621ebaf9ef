"""3. The Slack path: signed slash commands and button clicks through the real bolt app over HTTP.

The bot (``bot.server.start_server``) and the Slack emulator (``bot.emulator.SlackEmulator``) run in this
process on 127.0.0.1, with an SQLite database; every request is signed and verified. Ack latency is the
HTTP round trip of a burst sent by another process (``bench.slack_load``, Slack's side; Slack's deadline
is 3 s). For ``approval`` runs, a click on Approve is timed to the moment the suspended step starts again
(its ``step.started`` event; wall clock of this process), clicking one at a time as a person would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .common import Report, Row, latency_fields, scratch_dir, until

NAME = "slack"
BENCH = "3. Slack path"
USER = "U0ALICE"
ROOT = str(Path(__file__).resolve().parents[1])
CHANNEL = "C0GENERAL"


def sizes(quick: bool) -> dict[str, int]:
    return {"commands": 50, "approvals": 5} if quick else {"commands": 50, "approvals": 30}


def _approval_buttons(emu: Any) -> dict[str, Any]:
    """run_id -> the message carrying its Approve button."""
    found: dict[str, Any] = {}
    for root in emu.messages(CHANNEL):
        for msg in [root, *emu.thread(CHANNEL, root.ts)]:
            for block in msg.blocks or []:
                if block.get("type") != "actions":
                    continue
                for el in block.get("elements", []):
                    if el.get("action_id") == "approve":
                        try:
                            found[json.loads(el["value"])["run_id"]] = msg
                        except (KeyError, ValueError):
                            pass
    return found


async def run(report: Report, quick: bool) -> None:
    from bot.emulator import SlackEmulator
    from bot.runtime import build_engine
    from bot.server import start_server
    from bot.settings import Settings

    size = sizes(quick)
    logging.getLogger("threadflow").setLevel(logging.ERROR)
    with scratch_dir("slack") as directory:
        async with SlackEmulator(signing_secret="bench-secret", bot_token="xoxb-bench") as emu:
            settings = Settings(
                SLACK_BOT_TOKEN="xoxb-bench", SLACK_SIGNING_SECRET="bench-secret", SLACK_API_URL=emu.api_url,
                THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{directory / 'bot.db'}",
                THREADFLOW_PROGRESS_INTERVAL=0.2, THREADFLOW_WORKFLOWS="",
                # The emulator here enforces no rate limits and this measures the bot, not Slack's pace.
                THREADFLOW_SLACK_PACING=False,
            )
            engine = build_engine(settings, poll_interval=1.0)
            runner, _bot, port = await start_server(settings, engine, host="127.0.0.1", port=0)
            emu.bot_url = f"http://127.0.0.1:{port}/slack/events"
            try:
                # warm up: the database and bolt's first dispatch
                n = size["commands"]
                for _ in range(3):
                    await emu.slash_command("/flow", "run greet-user name=Warm", user=USER, channel=CHANNEL)
                await until(lambda: _count(engine, "success", 3), 20)

                # -- 50 concurrent slash commands, sent by another process (Slack's side) -----------------------
                before = await engine.store.count_runs("success")
                job = {"url": emu.bot_url, "secret": "bench-secret",
                       "warmup": [_form(emu, "help") for _ in range(n)],  # n keep-alive connections, as Slack keeps
                       "forms": [_form(emu, f"run greet-user name=Ada{i}") for i in range(n)]}
                sent = await _load_process(job)
                done = await until(lambda: _count(engine, "success", before + n), 60)
                seconds = time.time() - sent["started_at"]  # from the first request sent to the last run done
                acks, statuses, acked = sent["latencies"], sent["statuses"], sent["all_acked"]
                bad = sum(1 for s in statuses if s != 200)
                row = report.add(Row(
                    bench=BENCH, system="threadflow bot", setup=f"{n} concurrent /flow run greet-user", n=n,
                    throughput=n / seconds, unit="runs/s", total_s=seconds, **latency_fields(acks),
                    note=(f"ack latency (signed HTTP from another process -> bolt -> 200); all acked in "
                          f"{acked * 1000:.0f} ms, all {n} runs finished after {seconds:.2f} s"
                          + ("" if done else " (TIMED OUT)") + (f"; {bad} non-200 acks" if bad else ""))))
                report.target(BENCH, f"slash command ack p99 < 100 ms ({n} concurrent)", row.p99, 100,
                              higher_is_better=False, unit="ms")

                # -- approvals: click -> the suspended step runs again ---------------------------------------
                k = size["approvals"]
                await asyncio.gather(*(emu.slash_command("/flow", f"run approval please ship build {i}", user=USER,
                                                         channel=CHANNEL) for i in range(k)))
                async def shown() -> bool:
                    return len(_approval_buttons(emu)) >= k

                await until(shown, 60, 0.05)
                buttons = _approval_buttons(emu)
                click_acks: list[float] = []
                to_step: list[float] = []
                missed = 0
                for run_id, message in list(buttons.items())[:k]:
                    wall = time.time()
                    t0 = time.perf_counter()
                    r = await emu.click(message, "approve", user=USER)
                    click_acks.append(time.perf_counter() - t0)
                    started_at = None
                    deadline = time.monotonic() + 10
                    while started_at is None and time.monotonic() < deadline:
                        for ev in await engine.store.read_events(run_id):
                            if ev.type == "step.started" and ev.at >= wall:
                                started_at = ev.at
                                break
                        if started_at is None:
                            await asyncio.sleep(0.002)
                    if started_at is None or r.status != 200:
                        missed += 1
                    else:
                        to_step.append(started_at - wall)
                row = report.add(Row(
                    bench=BENCH, system="threadflow bot", setup="approval: click Approve -> step runs again", n=len(to_step),
                    **latency_fields(to_step),
                    note=(f"one click at a time; click ack p50 {_ms(click_acks, 50)} / p99 {_ms(click_acks, 99)} ms"
                          + (f"; {missed} clicks never reached the step" if missed else ""))))
            finally:
                await runner.cleanup()


def _form(emu: Any, text: str) -> dict[str, str]:
    """A slash command form as the emulator (Slack) would send it, with its own response URL and trigger."""
    ru = emu.state.issue_response_url("command", USER, CHANNEL)
    form: dict[str, str] = emu.delivery.slash_command_form(
        "/flow", text, USER, CHANNEL, emu.delivery.response_url_base + ru.id, emu.state.issue_trigger(USER))
    return form


async def _load_process(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``bench.slack_load`` in a process of its own; this process's loop keeps serving the bot."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.slack_load", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    out, err = await proc.communicate(json.dumps(job).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"bench.slack_load failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def _ms(values: list[float], q: float) -> str:
    from .common import percentile

    v = percentile([x * 1000 for x in values], q)
    return "-" if v is None else f"{v:.1f}"


async def _count(engine: Any, status: str, n: int) -> bool:
    return await engine.store.count_runs(status) >= n
