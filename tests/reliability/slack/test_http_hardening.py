"""The HTTP side under clients that misbehave: slow requests, too many connections, no file descriptors, and
slash-command text built to make a parser spin."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from bot.emulator import SlackEmulator
from tests.bot.conftest import ALICE, SIGNING_SECRET, TOKEN, StartBot, free_port
from tests.helpers import eventually


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sends first (b"" when it closes without answering)."""
    return await asyncio.wait_for(reader.read(65536), timeout)


async def test_a_client_that_never_finishes_its_request_head_is_dropped(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_HTTP_TIMEOUT=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", bot.port)
    writer.write(b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nX-Slack-Signature: v0=")  # ... and nothing more
    await writer.drain()
    started = time.monotonic()
    assert await read_all(reader, timeout=5) == b""  # the server closed the connection
    assert time.monotonic() - started < 4
    writer.close()


async def test_a_client_that_never_finishes_its_body_is_dropped(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_HTTP_TIMEOUT=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", bot.port)
    writer.write(b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"type\": ")
    await writer.drain()
    answer = await read_all(reader, timeout=5)
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    writer.close()
    async with __import__("aiohttp").ClientSession() as http:  # and the server still answers others
        async with http.get(f"http://127.0.0.1:{bot.port}/healthz") as resp:
            assert resp.status == 200


async def test_connections_past_the_limit_get_a_503_and_the_rest_are_served(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_MAX_CONNECTIONS=3)
    held = [await asyncio.open_connection("127.0.0.1", bot.port) for _ in range(3)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", bot.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: bot\r\n\r\n")
    await writer.drain()
    assert (await read_all(reader, timeout=5)).startswith(b"HTTP/1.1 503")
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in held), return_exceptions=True)

    async def healthy() -> bool:
        r, w = await asyncio.open_connection("127.0.0.1", bot.port)
        w.write(b"GET /healthz HTTP/1.1\r\nHost: bot\r\nConnection: close\r\n\r\n")
        await w.drain()
        ok = (await read_all(r, timeout=5)).startswith(b"HTTP/1.1 200")
        w.close()
        return ok

    await eventually(healthy, timeout=5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses the shell's ulimit")
async def test_running_out_of_file_descriptors_is_logged_once_and_the_server_recovers(
    emu: SlackEmulator, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "SLACK_API_URL": emu.api_url, "THREADFLOW_HOST": "127.0.0.1", "THREADFLOW_PORT": str(port),
           "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}", "THREADFLOW_MODEL": "offline"}
    threadflow = Path(sys.executable).parent / "threadflow"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 (a local file, opened once)
        proc = await asyncio.create_subprocess_exec("bash", "-c", f"ulimit -n 120 && exec {threadflow} serve",
                                                    env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        async def healthy() -> bool:
            assert proc.returncode is None, log_path.read_text()
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            w.write(b"GET /healthz HTTP/1.1\r\nHost: bot\r\nConnection: close\r\n\r\n")
            await w.drain()
            ok = (await read_all(r, timeout=5)).startswith(b"HTTP/1.1 200")
            w.close()
            return ok

        await eventually(healthy, timeout=30, every=0.1)
        # Hold more connections than the server has descriptors for, for a few seconds.
        held = []
        for _ in range(200):
            try:
                held.append(await asyncio.open_connection("127.0.0.1", port))
            except OSError:
                break
        await asyncio.sleep(3.5)  # asyncio retries accept() every second: three or four failures
        for _, w in held:
            w.close()
        await eventually(healthy, timeout=15, every=0.2)
        text = log_path.read_text()
        assert text.count("cannot accept connections") == 1, text[-3000:]
        assert "socket.accept() out of system resource" not in text
    finally:
        proc.terminate()
        await proc.wait()


async def test_an_integer_of_5000_digits_gets_an_ephemeral_error_not_a_500(start_bot: StartBot) -> None:
    bot = await start_bot()
    for text in ("run greet-user n=" + "9" * 5000, 'run greet-user {"name": "Ada", "n": ' + "9" * 5000 + "}"):
        ack = await bot.command(text)
        assert ack.status == 200 and ack.json["text"].startswith(":warning:") and "digits" in ack.json["text"]
    assert await bot.engine.list_runs() == []


async def test_json_nested_160k_deep_is_refused_within_slacks_deadline(start_bot: StartBot) -> None:
    bot = await start_bot()
    started = time.monotonic()
    ack = await bot.command("run greet-user " + "[" * 160_000)
    assert time.monotonic() - started < 1.0
    assert ack.status == 200 and ack.json["text"].startswith(":warning:")
    assert await bot.engine.list_runs() == []
    ack = await bot.command("run greet-user " + '{"a":' * 200 + "1" + "}" * 200, user=ALICE)
    assert ack.status == 200 and "nested" in ack.json["text"]
