"""11. Two workspaces, one rate-limited: the other's ack and delivery latency must not change.

One bot (OAuth installs, real bolt over HTTP, pacing on, SQLite) is installed in two workspaces of the Slack
emulator through its OAuth flow. Workspace A starts ``greet-user`` runs one at a time, as a person would;
for each we time the slash command's ack (HTTP round trip) and the delivery (command sent -> the run's
"Run finished" reply is in its thread). That is measured twice: with B idle, and while B gets a burst of
runs and the emulator rate-limits B (Slack's limits enforced there, plus a run of 429s with Retry-After on
its posts). Pacing and 429 back-off are per workspace, so A's numbers should be the same in both.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from .common import Report, Row, latency_fields, scratch_dir

NAME = "workspaces"
BENCH = "11. Two workspaces"
USER = "U0ALICE"
CHANNEL = "C0GENERAL"
SECRET = "bench-secret"
CLIENT_ID, CLIENT_SECRET = "111.222", "bench-client-secret"


def sizes(quick: bool) -> dict[str, int]:
    return {"a_runs": 5, "b_burst": 20} if quick else {"a_runs": 20, "b_burst": 80}


async def _one_run(ws: Any, name: str) -> tuple[float, float]:
    """Start one greet-user run in ``ws``; (ack seconds, delivery seconds)."""
    since = time.time() - 0.001
    started = time.perf_counter()
    ack = await ws.slash_command("/flow", f"run greet-user name={name}", user=USER, channel=CHANNEL)
    acked = time.perf_counter() - started
    if ack.status != 200:
        raise RuntimeError(f"slash command answered HTTP {ack.status}")
    await ws.wait_for(lambda: _count_finished(ws, since) >= 1, timeout=60)
    return acked, time.perf_counter() - started


def _count_finished(ws: Any, since: float) -> int:
    return sum(1 for root in ws.messages(CHANNEL) if float(root.ts) >= since
               and any("Run finished" in m.text for m in ws.thread(CHANNEL, root.ts)))


async def _series(ws: Any, n: int, label: str) -> tuple[list[float], list[float]]:
    acks: list[float] = []
    deliveries: list[float] = []
    for i in range(n):
        ack, delivered = await _one_run(ws, f"{label}{i}")
        acks.append(ack)
        deliveries.append(delivered)
    return acks, deliveries


async def run(report: Report, quick: bool) -> None:
    from cryptography.fernet import Fernet

    from bot.emulator import SlackEmulator, install_app
    from bot.runtime import build_engine
    from bot.server import start_server
    from bot.settings import Settings

    size = sizes(quick)
    logging.getLogger("threadflow").setLevel(logging.ERROR)
    with scratch_dir("workspaces") as directory:
        async with SlackEmulator(signing_secret=SECRET, bot_token="xoxb-unused") as emu:
            emu.state.tokens.clear()
            emu.oauth.register_app(CLIENT_ID, CLIENT_SECRET)
            b = emu.add_workspace("T0OTHER")
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            settings = Settings(
                SLACK_SIGNING_SECRET=SECRET, SLACK_CLIENT_ID=CLIENT_ID, SLACK_CLIENT_SECRET=CLIENT_SECRET,
                SLACK_STATE_SECRET="bench-state", THREADFLOW_ENCRYPTION_KEY=Fernet.generate_key().decode(),
                SLACK_API_URL=emu.api_url, THREADFLOW_PUBLIC_URL=f"http://127.0.0.1:{port}",
                THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{directory / 'bot.db'}",
                THREADFLOW_PROGRESS_INTERVAL=0.2, THREADFLOW_WORKFLOWS="", THREADFLOW_SLACK_PACING=True,
            )
            engine = build_engine(settings, poll_interval=0.2)
            runner, _bot, port = await start_server(settings, engine, host="127.0.0.1", port=port)
            emu.bot_url = f"http://127.0.0.1:{port}/slack/events"
            base = f"http://127.0.0.1:{port}"
            try:
                await install_app(base, "T0TEAM")
                await install_app(base, "T0OTHER")
                await _one_run(emu, "warm")

                n = size["a_runs"]
                acks, deliveries = await _series(emu, n, "alone")
                _row(report, "A, B idle", n, acks, deliveries)

                # B: Slack's limits enforced, and a run of 429s on its posts; a burst of runs there meanwhile.
                b.enforce_rate_limits(True)
                b.fail_next("chat.postMessage", status=429, retry_after=2, times=size["b_burst"])
                b_started = time.perf_counter()
                burst = [asyncio.create_task(b.slash_command("/flow", f"run greet-user name=B{i}", user=USER,
                                                             channel=CHANNEL)) for i in range(size["b_burst"])]
                acks_b = await asyncio.gather(*burst)
                acks2, deliveries2 = await _series(emu, n, "busy")
                _row(report, "A, B rate-limited", n, acks2, deliveries2)
                limited = sum(1 for c in b.calls() if c.status == 429)
                b_done = _count_finished(b, 0)
                report.add(Row(bench=BENCH, system="threadflow", setup="B under load (rate-limited)",
                               n=size["b_burst"], total_s=time.perf_counter() - b_started,
                               note=f"{limited} calls answered 429 in B; {b_done}/{size['b_burst']} runs delivered "
                                    f"in B by the end of A's series; B's acks all 200: "
                                    f"{all(a.status == 200 for a in acks_b)}",
                               extra={"b_429": limited, "b_delivered": b_done}))
                p50a, p50b = _p50(deliveries), _p50(deliveries2)
                report.note(f"{BENCH}: A's delivery p50 {p50a:.0f} ms with B idle, {p50b:.0f} ms with B rate-limited "
                            f"(ratio {p50b / p50a:.2f}); ack p50 {_p50(acks):.1f} vs {_p50(acks2):.1f} ms.")
            finally:
                await runner.cleanup()


def _p50(values: list[float]) -> float:
    return float(latency_fields(values)["p50"] or 0.0)


def _row(report: Report, setup: str, n: int, acks: list[float], deliveries: list[float]) -> None:
    ack = latency_fields(acks)
    report.add(Row(bench=BENCH, system="threadflow", setup=f"{setup}: delivery", n=n, unit="ms",
                   **latency_fields(deliveries), note="command -> 'Run finished' in the thread"))
    report.add(Row(bench=BENCH, system="threadflow", setup=f"{setup}: ack", n=n, unit="ms", **ack,
                   note="slash command HTTP round trip"))
