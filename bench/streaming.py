"""8. Streamed answers: from the model's first token to the first text a person sees in Slack.

A local OpenAI-compatible server streams every answer at a fixed token rate and notes when it wrote each
answer's first token; the bot (``bot.server.start_server``, the real bolt app, pacing on) answers through the
Slack emulator, which enforces Slack's rate limits and notes when each ``chat.startStream`` /
``chat.appendStream`` reached it. The latency is from the first token leaving the model server to the first
call that made text visible (one clock, one machine). Two paths:

- a thread reply (a mention): the listener streams the agent's answer itself;
- an agent step (``chat-flow``): the step runs in the engine and publishes its progress in the database; the
  run's renderer reads it and streams it (what another replica rendering the run would do).

Questions are a few seconds apart: ``chat.startStream`` and ``chat.stopStream`` are Tier 2 (about 20 calls a
minute per workspace) and the bot paces them, so a faster sustained rate would measure Slack's limit, not
the bot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from aiohttp import web

from .common import Report, Row, env, latency_fields, scratch_dir, until

NAME = "streaming"
BENCH = "8. Streamed answers"
USER = "U0ALICE"
CHANNEL = "C0GENERAL"
TOKENS_PER_SECOND = 50.0
TOKENS = 30
SPACING = 3.5  # seconds between questions: within Tier 2 for chat.startStream / chat.stopStream
_MARK = re.compile(r"\[q(\d+)\]")


def sizes(quick: bool) -> int:
    return 5 if quick else 15


class TokenServer:
    """``POST /v1/chat/completions`` streaming ``TOKENS`` tokens at ``TOKENS_PER_SECOND``; notes first tokens."""

    def __init__(self) -> None:
        self.first_token: dict[str, float] = {}  # question mark -> wall time its first token was written
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> TokenServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        prompt = str(users[-1].get("content") or "") if users else ""
        found = _MARK.search(prompt)
        mark = found.group(0) if found else "[summary]"
        words = [f"{mark} "] + [f"word{i} " for i in range(TOKENS - 1)]
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response({
                "id": "cmpl-bench", "object": "chat.completion", "created": created, "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": TOKENS, "total_tokens": 10 + TOKENS}})
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
                    "model": body.get("model", ""), "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        for i, word in enumerate(words):
            if i:
                await asyncio.sleep(1.0 / TOKENS_PER_SECOND)
            await response.write(chunk({"role": "assistant", "content": word} if i == 0 else {"content": word}))
            if i == 0 and found:
                self.first_token.setdefault(mark, time.time())
        await response.write(chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def first_visible(emu: Any) -> dict[str, float]:
    """Question mark -> when the emulator first received a call that made text of its answer visible."""
    seen: dict[str, float] = {}
    for call in emu.calls():
        if call.method not in ("chat.startStream", "chat.appendStream") or not (call.response or {}).get("ok"):
            continue
        text = "".join(c.get("text", "") for c in call.params.get("chunks") or [] if c.get("type") == "markdown_text")
        for mark in _MARK.findall(text):
            seen.setdefault(f"[q{mark}]", call.time)
    return seen


async def run(report: Report, quick: bool) -> None:
    from bot.emulator import SlackEmulator
    from bot.runtime import build_engine
    from bot.server import start_server
    from bot.settings import Settings

    n = sizes(quick)
    logging.getLogger("threadflow").setLevel(logging.ERROR)
    server = await TokenServer().start()
    try:
        with scratch_dir("streaming") as directory, env(
            THREADFLOW_MODEL="openai:gpt-4o-mini", OPENAI_API_KEY="sk-bench-not-a-key", OPENAI_BASE_URL=server.url,
            THREADFLOW_MODEL_PROFILE="openai",
        ):
            async with SlackEmulator(signing_secret="bench-secret", bot_token="xoxb-bench") as emu:
                emu.enforce_rate_limits()  # Slack's tiers; latency off: this measures the bot, not the network
                settings = Settings(
                    SLACK_BOT_TOKEN="xoxb-bench", SLACK_SIGNING_SECRET="bench-secret", SLACK_API_URL=emu.api_url,
                    THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{directory / 'bot.db'}",
                    THREADFLOW_WORKFLOWS="", THREADFLOW_SLACK_PACING=True,
                )
                engine = build_engine(settings, poll_interval=1.0)
                runner, _bot, port = await start_server(settings, engine, host="127.0.0.1", port=0)
                emu.bot_url = f"http://127.0.0.1:{port}/slack/events"
                try:
                    await _thread_replies(report, emu, server, n)
                    await _agent_steps(report, emu, server, engine, n)
                finally:
                    await runner.cleanup()
    finally:
        await server.stop()


async def _thread_replies(report: Report, emu: Any, server: TokenServer, n: int) -> None:
    marks = [f"[q{i}]" for i in range(n)]
    for mark in marks:
        await emu.post_as_user(f"<@U0BOT> {mark} what changed in the last deploy?", user=USER, channel=CHANNEL)
        await asyncio.sleep(SPACING)

    async def all_seen() -> bool:
        return all(m in first_visible(emu) for m in marks)

    done = await until(all_seen, 30)
    _row(report, emu, server, marks, "thread reply (mention): listener streams the agent's answer", done)


async def _agent_steps(report: Report, emu: Any, server: TokenServer, engine: Any, n: int) -> None:
    marks = [f"[q{100 + i}]" for i in range(n)]
    for mark in marks:
        result = await emu.slash_command("/flow", f'run chat-flow prompt="{mark} summarize the plan"', user=USER,
                                         channel=CHANNEL)
        if result.status != 200:
            raise RuntimeError(f"/flow run chat-flow answered {result.status}")
        await asyncio.sleep(SPACING)

    async def all_seen() -> bool:
        return all(m in first_visible(emu) for m in marks)

    done = await until(all_seen, 30)
    _row(report, emu, server, marks, "agent step (chat-flow): engine -> progress rows -> renderer streams", done)


def _row(report: Report, emu: Any, server: TokenServer, marks: list[str], setup: str, done: bool) -> None:
    visible = first_visible(emu)
    waits = [visible[m] - server.first_token[m] for m in marks if m in visible and m in server.first_token]
    appends = sum(1 for c in emu.calls("chat.appendStream"))
    row = report.add(Row(
        bench=BENCH, system="threadflow bot", setup=setup, n=len(waits), **latency_fields(waits),
        note=(f"model's first token -> first visible text in the emulator; {TOKENS} tokens at "
              f"{TOKENS_PER_SECOND:g} tokens/s, a question every {SPACING:g} s, pacing on, Slack's rate limits "
              f"enforced ({emu.rate_limited} 429s); {appends} appends so far"
              + ("" if done else "; SOME ANSWERS NEVER SHOWED"))))
    report.target(BENCH, f"{setup.split(':')[0]}: first token -> first visible append p99 < 300 ms", row.p99, 300,
                  higher_is_better=False, unit="ms")
