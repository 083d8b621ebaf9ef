"""A workspace's install over time, through OAuth: uninstall and reinstall, token rotation when Slack does not answer
the refresh, and Slack's late retries of ``app_uninstalled``.

Network faults on the refresh (``oauth.v2.access``) are played at the wire by :class:`tests.helpers.flaky_slack.
FlakyProxy` in front of the emulator, which the bot reaches as its SLACK_API_URL.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.emulator import SlackEmulator
from tests.bot import test_workspaces as oauth
from tests.bot.conftest import ALICE, CHANNEL, RunningBot
from tests.bot.test_workspaces import (
    CLIENT_ID,
    CLIENT_SECRET,
    TEAM_A,
    TEAM_B,
    Installed,
    install,
    start_oauth_bot,
    suspended_in,
)
from tests.helpers.flaky_slack import FlakyProxy

#: The OAuth fixtures: an emulator with no token until the app is installed (instead of conftest's single-token
#: one), and the bot installed in two workspaces through OAuth.
emu = oauth.emu
installed = oauth.installed

# -- uninstall, reinstall --------------------------------------------------------------------------------


async def test_a_workspace_reinstalled_right_after_an_uninstall_can_use_the_app_at_once(installed: Installed) -> None:
    """An admin removes the app from B by mistake while a run of B is going on, and adds it back at once.

    Between the two, B's run changed (it was decided from the CLI), so the bot tried to update its card in B and
    learnt that B has no token. After the reinstall B's new token is in the database: the next command from B
    must work, not be answered "Please install this app" for half a minute."""
    emu, b, bot = installed.emu, installed.b, installed.bot
    run_b = await suspended_in(b, bot, "run approval B")
    assert (await emu.uninstall(TEAM_B)).status == 200
    await bot.idle()
    # B's run goes on meanwhile: its renderer wants to edit the card in B (no token there now).
    await bot.engine.resume(run_b.run_id, step="approve", data={"approved": True, "by": ALICE}, by=ALICE)
    assert await bot.settled(run_b.run_id) == "success"
    await asyncio.sleep(0.3)
    # The admin installs the app in B again.
    assert "Thank you!" in await install(installed.base, TEAM_B)
    before = len(b.messages(CHANNEL))
    ack = await b.slash_command("/flow", "run greet-user name=Ada", user=ALICE)
    assert ack.status == 200, ack.body
    await bot.idle()
    shown = [e.text for e in b.ephemerals(ALICE)]
    assert not any("install" in str(t).lower() for t in shown), shown
    root = await b.wait_for(lambda: len(b.messages(CHANNEL)) > before and b.messages(CHANNEL)[-1], timeout=5)
    assert "greet-user" in root.text


async def test_a_run_decided_right_after_a_reinstall_gets_its_final_reply(installed: Installed) -> None:
    """Same slip (B uninstalls and reinstalls the app while two of its runs wait). Right after the reinstall one of
    B's runs is approved (from the CLI): its card and its final reply belong in B's thread, now that the app has a
    token there again, and must not be marked failed for good as if the app were still gone."""
    emu, b, bot = installed.emu, installed.b, installed.bot
    first = await suspended_in(b, bot, "run approval first")
    second = await suspended_in(b, bot, "run approval second")
    assert (await emu.uninstall(TEAM_B)).status == 200
    await bot.idle()
    # While the app is gone, the first run is decided: nothing may go to B then.
    await bot.engine.resume(first.run_id, step="approve", data={"approved": True, "by": ALICE}, by=ALICE)
    assert await bot.settled(first.run_id) == "success"
    await asyncio.sleep(0.3)
    assert "Thank you!" in await install(installed.base, TEAM_B)
    await bot.engine.resume(second.run_id, step="approve", data={"approved": True, "by": ALICE}, by=ALICE)
    assert await bot.settled(second.run_id) == "success"
    await b.wait_for(lambda: any("Run finished" in m.text for m in b.thread(CHANNEL, second.root.ts)), timeout=5)


async def test_a_late_retry_of_an_uninstall_event_does_not_delete_the_new_install(installed: Installed) -> None:
    """B removes the app; the bot's answer to ``app_uninstalled`` does not reach Slack in time, so Slack retries the
    event (a minute, then five minutes later). Meanwhile B's admin installed the app again. The retry is about the
    old install (its ``event_time`` is before the new one was made): B's new install must stay."""
    emu, b, bot = installed.emu, installed.b, installed.bot
    rows = bot.bot.installs.rows  # type: ignore[union-attr]
    first = await emu.uninstall(TEAM_B)
    assert first.status == 200
    await bot.idle()
    assert await rows.find_bot(None, TEAM_B) is None
    await asyncio.sleep(1.1)  # event_time has a one-second resolution
    assert "Thank you!" in await install(installed.base, TEAM_B)
    assert await rows.find_bot(None, TEAM_B) is not None
    retry = await b.redeliver(first.event_id or "", retry_num=1, retry_reason="http_timeout")
    assert retry.status == 200
    await bot.idle()
    assert await rows.find_bot(None, TEAM_B) is not None, \
        "a retried app_uninstalled from before the reinstall deleted the new install"
    await command_starts_a_run(b)


# -- token rotation when the refresh gets no answer ------------------------------------------------------


@asynccontextmanager
async def rotating_bot_behind_a_proxy(emu: SlackEmulator, tmp_path: Path, *, expires_in: float,
                                      **overrides: Any) -> AsyncIterator[tuple[RunningBot, FlakyProxy]]:
    """A bot installed in A with token rotation, calling Slack through a proxy; A's token expires in ``expires_in``
    seconds (so it is refreshed before the next call), and the proxy passes everything through until told not to."""
    emu.oauth.register_app(CLIENT_ID, CLIENT_SECRET, token_rotation=True, expires_in=3 * 3600)
    proxy = await FlakyProxy(emu.url).start()
    bot, base = await start_oauth_bot(emu, tmp_path / "threadflow.db", SLACK_TOKEN_ROTATION=True,
                                      SLACK_API_URL=proxy.url + "api/", **overrides)
    try:
        await install(base, TEAM_A)
        first = emu.oauth.grants[0].access_token
        row = await bot.bot.installs.rows.find_bot(None, TEAM_A)  # type: ignore[union-attr]
        assert row is not None
        row["bot_token_expires_at"] = time.time() + expires_in  # within the two hours: refreshed before use
        await bot.bot.installs.rows.save_bot(row)
        emu.oauth.expiry[first] = time.time() + expires_in
        bot.bot.tokens._bots.clear()  # type: ignore[union-attr]  # the cached copy is older than the change
        yield bot, proxy
    finally:
        proxy.release.set()
        await bot.stop()
        await proxy.stop()


def a_refresh(path: str, params: dict[str, str]) -> bool:
    return path.endswith("oauth.v2.access") and params.get("grant_type") == "refresh_token"


async def command_starts_a_run(ws: SlackEmulator) -> None:
    before = len(ws.messages(CHANNEL))
    ack = await ws.slash_command("/flow", "run greet-user name=Ada", user=ALICE)
    assert ack.status == 200, (ack.status, ack.body)
    root = await ws.wait_for(lambda: len(ws.messages(CHANNEL)) > before and ws.messages(CHANNEL)[-1], timeout=5)
    assert "greet-user" in root.text


async def test_a_refresh_that_gets_no_answer_keeps_using_the_token_that_still_works(emu: SlackEmulator,
                                                                                    tmp_path: Path) -> None:
    """Token rotation on: the token expires in a minute, so it is refreshed before the next call. Slack's
    oauth.v2.access drops the connection this once (a network blip). The current token still works for a minute:
    a person's command must still start its run (as when Slack answers the refresh with an error), not crash the
    request and leave the person with Slack's "dispatch failed"."""
    async with rotating_bot_behind_a_proxy(emu, tmp_path, expires_in=60) as (_bot, proxy):
        proxy.drop = a_refresh
        await command_starts_a_run(emu)
        assert proxy.unanswered, "the refresh was not attempted"


async def test_a_refresh_slack_does_not_answer_is_given_up_after_the_slack_timeout(emu: SlackEmulator,
                                                                                  tmp_path: Path) -> None:
    """THREADFLOW_SLACK_TIMEOUT is "seconds a Slack Web API call may take before it counts as a timeout". A token
    refresh (oauth.v2.access) that Slack does not answer must be given up after it too, and the token that still
    works for a minute used: the person's command is acked in time (Slack waits 3 s), instead of waiting for
    slack_sdk's own 30 s default."""
    async with rotating_bot_behind_a_proxy(emu, tmp_path, expires_in=60, THREADFLOW_SLACK_TIMEOUT=1) as (_bot, proxy):
        proxy.hang = a_refresh
        started = time.monotonic()
        try:
            ack = await asyncio.wait_for(emu.slash_command("/flow", "run greet-user name=Ada", user=ALICE), 4.0)
        except TimeoutError:
            raise AssertionError(f"no ack after {time.monotonic() - started:.1f} s: the refresh is still waited for") \
                from None
        assert proxy.unanswered, "the refresh was not attempted"
        assert ack.status == 200, (ack.status, ack.body)


async def test_a_delivery_waits_while_an_expired_token_cannot_be_refreshed(emu: SlackEmulator, tmp_path: Path,
                                                                          logs: pytest.LogCaptureFixture) -> None:
    """The token has expired and Slack does not answer its refresh: the run's messages are not sent with a dead
    token (Slack would refuse them for good), they wait in the outbox and go out once the refresh gets through."""
    async with rotating_bot_behind_a_proxy(emu, tmp_path, expires_in=3 * 3600) as (bot, proxy):
        run = await suspended_in(emu, bot)
        row = await bot.bot.installs.rows.find_bot(None, TEAM_A)  # type: ignore[union-attr]
        assert row is not None
        row["bot_token_expires_at"] = time.time() - 1
        await bot.bot.installs.rows.save_bot(row)
        emu.oauth.expiry[emu.oauth.grants[0].access_token] = time.time() - 1
        bot.bot.tokens._bots.clear()  # type: ignore[union-attr]
        proxy.drop = a_refresh
        await bot.engine.resume(run.run_id, step="approve", data={"approved": True, "by": ALICE}, by=ALICE)
        assert await bot.settled(run.run_id) == "success"
        await asyncio.sleep(0.5)
        assert proxy.unanswered, "the refresh was not attempted"
        assert not [c for c in emu.calls() if (c.response or {}).get("error") == "token_expired"]
        crashes = [r.getMessage() for r in logs.records if r.exc_info]
        assert not crashes, f"the failed refresh crashed the delivery instead of waiting: {crashes}"
        proxy.drop = lambda path, params: False  # Slack answers again
        await emu.wait_for(lambda: any("Run finished" in m.text for m in emu.thread(CHANNEL, run.root.ts)),
                           timeout=15)


async def test_a_refreshed_token_the_database_refuses_is_kept_and_saved_once_it_can(emu: SlackEmulator,
                                                                                  tmp_path: Path) -> None:
    """Slack trades a refresh token once. When the refreshed pair cannot be saved (the disk is full, the database
    refuses the write), the store's copy holds a spent refresh token: dropping the new pair would leave the workspace
    with a token nobody can refresh (a reinstall, once it expires). The person's command still works with the new
    token, and the pair is saved once the database takes writes again."""
    async with rotating_bot_behind_a_proxy(emu, tmp_path, expires_in=60) as (bot, _proxy):
        tokens = bot.bot.tokens
        assert tokens is not None
        tokens.save_again = 0.0  # offer it to the store again on the very next call
        old = emu.oauth.grants[0].access_token
        with sqlite3.connect(tmp_path / "threadflow.db") as db:  # the database refuses writes of the bots' table
            for when in ("INSERT", "UPDATE"):
                db.execute(f"CREATE TRIGGER refuse_{when.lower()} BEFORE {when} ON slack_bots "
                           "BEGIN SELECT RAISE(ABORT, 'writes to slack_bots are refused'); END")
        await command_starts_a_run(emu)
        new = emu.oauth.grants[0].access_token
        assert new != old, "the token was not refreshed"
        with sqlite3.connect(tmp_path / "threadflow.db") as db:
            db.execute("DROP TRIGGER refuse_insert")
            db.execute("DROP TRIGGER refuse_update")
        await command_starts_a_run(emu)
        stored = await bot.bot.installs.async_find_bot(enterprise_id=None, team_id=TEAM_A)  # type: ignore[union-attr]
        assert stored is not None and stored.bot_token == new, "the refreshed token was never saved"
        assert stored.bot_refresh_token == emu.oauth.grants[0].refresh_token
