"""Socket Mode: the bot connects out with an app-level token and needs no signing secret."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bot.emulator import SlackEmulator
from bot.runtime import build_engine
from bot.server import connect_socket_mode, start_server
from tests.bot.conftest import ALICE, CHANNEL, make_settings, replies
from tests.helpers import eventually

APP_TOKEN = "xapp-1-A0APP-socket-mode-test"


async def test_socket_mode_starts_without_a_signing_secret_and_runs_a_command(emu: SlackEmulator, tmp_path: Path) -> None:
    emu.add_app_token(APP_TOKEN)
    settings = make_settings(emu, tmp_path / "threadflow.db", SLACK_SIGNING_SECRET=None, SLACK_APP_TOKEN=APP_TOKEN)
    assert settings.slack_signing_secret is None
    engine = build_engine(settings, poll_interval=0.05, lease_seconds=2.0)
    runner, bot, port = await start_server(settings, engine, host="127.0.0.1", port=0)
    handler = await connect_socket_mode(bot, settings)
    try:
        await eventually(emu.socket_mode.connected.is_set, timeout=10)
        ack = await emu.slash_command("/flow", "run greet-user name=Ada", user=ALICE)
        assert ack.status == 200 and emu.state.deliveries[-1].content_type == "socket_mode"
        root = await emu.wait_for(lambda: next(iter(emu.messages(CHANNEL)), None), timeout=10)
        await emu.wait_for(lambda: any("Run finished" in m.text for m in replies(emu, root)), timeout=10)
        [run] = await engine.list_runs()
        assert run.status == "success" and run.output == {"greeting": "Hello, Ada!"}
        async with aiohttp.ClientSession() as http:
            # No signing secret, so no HTTP endpoint for Slack's requests; health and metrics stay.
            async with http.post(f"http://127.0.0.1:{port}/slack/events", data=b"{}") as resp:
                assert resp.status in (404, 405)
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
    finally:
        await handler.close_async()
        await runner.cleanup()


async def test_without_socket_mode_the_signing_secret_is_still_required(emu: SlackEmulator, tmp_path: Path) -> None:
    import pytest

    from bot.settings import SettingsError

    settings = make_settings(emu, tmp_path / "threadflow.db", SLACK_SIGNING_SECRET=None)
    with pytest.raises(SettingsError, match="SLACK_SIGNING_SECRET is not set"):
        settings.require_slack()
