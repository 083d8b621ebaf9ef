"""Many workspaces: installs through the emulator's OAuth flow, per-workspace tokens, and isolation.

The bot runs with SLACK_CLIENT_ID / SLACK_CLIENT_SECRET / SLACK_STATE_SECRET and no bot token; it is
installed in two workspaces of the emulator the way a person does it (``/slack/install`` -> Slack's
authorize page -> ``/slack/oauth_redirect`` with the code and the state cookie). Workspace B deliberately
reuses A's channel and user ids, so only the workspace tells them apart.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet, InvalidToken

from bot.emulator import Message, SlackEmulator
from bot.logs import TextFormatter
from bot.runtime import build_engine
from bot.server import start_server
from bot.settings import Settings
from storage.memory_store import MemoryStore
from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    RunningBot,
    SuspendedRun,
    approval_messages,
    button_value,
    free_port,
)

SIGNING_SECRET = "signing-secret-do-not-leak-5678"
CLIENT_ID, CLIENT_SECRET = "111.222", "client-secret-do-not-leak"
STATE_SECRET = "state-secret-do-not-leak"
KEY = Fernet.generate_key().decode()
TEAM_A, TEAM_B = "T0TEAM", "T0OTHER"
OTHER_CHANNEL = "C0RANDOM"


@dataclass
class Installed:
    emu: SlackEmulator
    b: SlackEmulator
    bot: RunningBot
    base: str
    database: Path

    def token_of(self, team: str) -> str:
        return next(g.access_token for g in reversed(self.emu.oauth.grants) if g.team_id == team)


def oauth_settings(emu: SlackEmulator, database: Path, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_CLIENT_ID": CLIENT_ID, "SLACK_CLIENT_SECRET": CLIENT_SECRET,
        "SLACK_STATE_SECRET": STATE_SECRET, "THREADFLOW_ENCRYPTION_KEY": KEY, "SLACK_API_URL": emu.api_url,
        "THREADFLOW_PUBLIC_URL": f"http://127.0.0.1:{port}", "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "THREADFLOW_PROGRESS_INTERVAL": 0.05, "THREADFLOW_MODEL": "offline", "THREADFLOW_SLACK_PACING": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


async def start_oauth_bot(emu: SlackEmulator, database: Path, **overrides: Any) -> tuple[RunningBot, str]:
    port = free_port()
    settings = oauth_settings(emu, database, port, **overrides)
    engine = build_engine(settings, poll_interval=0.05, lease_seconds=2.0)
    runner, bot, bound = await start_server(settings, engine, host="127.0.0.1", port=port)
    running = RunningBot(emu, settings, engine, bot, runner, bound)
    emu.bot_url = running.url
    return running, f"http://127.0.0.1:{bound}"


async def install(base: str, team: str, *, user: str = ALICE, org_wide: bool = False) -> str:
    """Click "Add to Slack" on the bot's page, "Allow" on Slack's; returns the bot's closing page."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/slack/install") as resp:
            assert resp.status == 200
            page = await resp.text()
            cookie = resp.headers["Set-Cookie"].split(";")[0]
        authorize = html.unescape(re.search(r'href="([^"]*oauth/v2/authorize[^"]*)"', page).group(1))  # type: ignore[union-attr]
        authorize += f"&team={team}&user={user}" + ("&org_wide=1" if org_wide else "")
        async with http.get(authorize, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            back = resp.headers["Location"]
        assert back.startswith(f"{base}/slack/oauth_redirect?")
        async with http.get(back, headers={"Cookie": cookie}, allow_redirects=False) as resp:
            text = await resp.text()
            assert resp.status == 200, text
            return text


@pytest.fixture
async def emu(logs: pytest.LogCaptureFixture) -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(signing_secret=SIGNING_SECRET, bot_token="xoxb-never-installed") as emulator:
        emulator.state.tokens.clear()  # no token until the app is installed
        emulator.oauth.register_app(CLIENT_ID, CLIENT_SECRET)
        yield emulator
        assert_no_oauth_secrets(emulator, logs)


def assert_no_oauth_secrets(emu: SlackEmulator, logs: pytest.LogCaptureFixture) -> None:
    """No token the installs produced, nor the app's secrets or the key, in a log record or a Slack message
    (the conftest's ``logs`` fixture captures the bot's and the Slack libraries' logs down to DEBUG)."""
    secrets = {CLIENT_SECRET, STATE_SECRET, KEY, SIGNING_SECRET}
    for grant in emu.oauth.grants:
        secrets |= {grant.access_token, *([grant.refresh_token] if grant.refresh_token else [])}
    secrets |= set(emu.oauth.expiry)  # every token ever issued, rotated ones too
    # Every phase's records (``logs.records`` alone holds only the teardown's), as the bot's log handler writes
    # them; the Slack libraries' debug records are not written at all (bot.logs keeps them at WARNING and up).
    records = [*logs.get_records("setup"), *logs.get_records("call"), *logs.records]
    quiet = ("slack_sdk", "slack_bolt")
    formatter = TextFormatter()
    seen = [formatter.format(record) for record in records
            if record.levelno >= logging.WARNING or not record.name.startswith(quiet)]
    seen += [json.dumps(w.snapshot()) for w in emu.all_workspaces]
    for secret in secrets:
        leaks = [text[:300] for text in seen if secret in text]
        assert not leaks, f"a secret leaked: {leaks}"


@pytest.fixture
async def installed(emu: SlackEmulator, tmp_path: Path) -> AsyncIterator[Installed]:
    b = emu.add_workspace(TEAM_B, domain="other-co")
    emu.add_channel("random", OTHER_CHANNEL)
    bot, base = await start_oauth_bot(emu, tmp_path / "threadflow.db")
    for team in (TEAM_A, TEAM_B):
        assert "Thank you!" in await install(base, team)
    yield Installed(emu, b, bot, base, tmp_path / "threadflow.db")
    await bot.stop()


async def command(ws: SlackEmulator, text: str, *, user: str = ALICE, channel: str = CHANNEL) -> str:
    """Type ``/flow text`` in ``ws`` and return the ephemeral answer."""
    before = len(ws.ephemerals(user))
    ack = await ws.slash_command("/flow", text, user=user, channel=channel)
    assert ack.status == 200, ack.body
    shown = await ws.wait_for(lambda: len(ws.ephemerals(user)) > before and ws.ephemerals(user), timeout=5)
    return str(shown[before].text)


async def suspended_in(ws: SlackEmulator, bot: RunningBot, text: str = "run approval ship it") -> SuspendedRun:
    before = {m.ts for m in approval_messages(ws)}
    ack = await ws.slash_command("/flow", text, user=ALICE)
    assert ack.status == 200, ack.body
    approval: Message = await ws.wait_for(
        lambda: next((m for m in approval_messages(ws) if m.ts not in before), None), timeout=5)
    run_id = button_value(approval)["run_id"]
    assert await bot.settled(run_id, ("suspended",)) == "suspended"
    root = next(m for m in ws.messages(CHANNEL) if run_id in m.text)
    return SuspendedRun(run_id, root, approval)


# -- installs ------------------------------------------------------------------------------------------


async def test_two_workspaces_installed_through_oauth_run_workflows_at_the_same_time(installed: Installed) -> None:
    emu, b, bot = installed.emu, installed.b, installed.bot
    run_a, run_b = await asyncio.gather(suspended_in(emu, bot, "run approval ship A"),
                                        suspended_in(b, bot, "run approval ship B"))
    assert run_a.run_id != run_b.run_id
    # Each workspace shows only its own run, and every call for it went out with its own token.
    assert all(run_b.run_id not in m.text for m in emu.messages(CHANNEL))
    assert all(run_a.run_id not in m.text for m in b.messages(CHANNEL))
    token_a, token_b = installed.token_of(TEAM_A), installed.token_of(TEAM_B)
    assert token_a != token_b
    assert {c.token for c in emu.calls() if c.method != "oauth.v2.access"} == {token_a}
    assert {c.token for c in b.calls()} == {token_b}
    # Both can be approved in their own workspace and finish.
    await emu.click(run_a.approval, "approve", user=ALICE)
    await b.click(run_b.approval, "approve", user=ALICE)
    assert await bot.settled(run_a.run_id) == "success"
    assert await bot.settled(run_b.run_id) == "success"


async def test_a_workspace_slack_keeps_rate_limiting_does_not_hold_back_another(emu: SlackEmulator, tmp_path: Path) -> None:
    b = emu.add_workspace(TEAM_B, domain="other-co")
    # Pacing on, as in production: Slack's Retry-After holds the method for the workspace, in every replica.
    bot, base = await start_oauth_bot(emu, tmp_path / "threadflow.db", THREADFLOW_SLACK_PACING=True)
    try:
        for team in (TEAM_A, TEAM_B):
            assert "Thank you!" in await install(base, team)
        await rate_limited_b_does_not_hold_back_a(emu, b, bot)
    finally:
        await bot.stop()


async def rate_limited_b_does_not_hold_back_a(emu: SlackEmulator, b: SlackEmulator, bot: RunningBot) -> None:
    run_b = await suspended_in(b, bot, "run approval ship B")
    # From now on Slack answers every post and edit in B with 429 and Retry-After 30 s.
    for method in ("chat.postMessage", "chat.update"):
        b.fail_next(method, status=429, retry_after=30, times=1000)
    await b.click(run_b.approval, "approve", user=ALICE)
    assert await bot.settled(run_b.run_id) == "success"
    await b.wait_for(lambda: any(c.status == 429 for c in b.calls()), timeout=5)

    # A meanwhile: its card is posted, the click is taken and the end is reported at once.
    run_a = await suspended_in(emu, bot, "run approval ship A")
    await emu.click(run_a.approval, "approve", user=ALICE)
    assert await bot.settled(run_a.run_id) == "success"
    await emu.wait_for(lambda: any("Run finished" in m.text for m in emu.thread(CHANNEL, run_a.root.ts)), timeout=5)

    # B waits out its Retry-After instead of hammering Slack: after a method's first 429, no call of it is sent
    # again (calls already in flight when the 429 came back may still arrive), and nothing more shows in B.
    await asyncio.sleep(1.0)
    first_refused: dict[str, float] = {}
    for c in b.calls():
        if c.status == 429:
            first_refused.setdefault(c.method, c.time)
    assert first_refused
    late = [(c.method, round(c.time - first_refused[c.method], 3)) for c in b.calls()
            if c.method in first_refused and c.time > first_refused[c.method] + 0.5]
    assert not late, late
    assert not any("Run finished" in m.text for m in b.thread(CHANNEL, run_b.root.ts))


async def test_install_without_the_state_cookie_is_refused_and_stores_nothing(emu: SlackEmulator, tmp_path: Path) -> None:
    bot, base = await start_oauth_bot(emu, tmp_path / "threadflow.db")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/slack/install") as resp:
                page = await resp.text()
            authorize = html.unescape(re.search(r'href="([^"]*oauth/v2/authorize[^"]*)"', page).group(1))  # type: ignore[union-attr]
            async with http.get(authorize + f"&team={TEAM_A}", allow_redirects=False) as resp:
                back = resp.headers["Location"]
            async with http.get(back, allow_redirects=False) as resp:  # a forged link: no cookie
                assert resp.status == 400
        assert await bot.bot.installs.rows.find_bot(None, TEAM_A) is None  # type: ignore[union-attr]
    finally:
        await bot.stop()


async def test_tokens_in_the_database_are_not_readable_without_the_key(installed: Installed) -> None:
    token_a = installed.token_of(TEAM_A)
    with sqlite3.connect(installed.database) as raw:
        rows = raw.execute("SELECT team_id, bot_token FROM slack_bots").fetchall()
        dump = "\n".join(raw.iterdump())
    assert {team for team, _ in rows} == {TEAM_A, TEAM_B}
    for _team, stored in rows:
        assert stored and not stored.startswith("xox"), stored
    assert token_a not in dump and installed.token_of(TEAM_B) not in dump
    stored_a = next(stored for team, stored in rows if team == TEAM_A)
    assert Fernet(KEY.encode()).decrypt(stored_a.encode()).decode() == token_a  # only the key opens it
    with pytest.raises(InvalidToken):
        Fernet(Fernet.generate_key()).decrypt(stored_a.encode())


# -- isolation -----------------------------------------------------------------------------------------


async def test_status_of_a_run_from_another_workspace_or_channel_is_no_such_run(installed: Installed) -> None:
    emu, b, bot = installed.emu, installed.b, installed.bot
    emu.openid.set_members(CHANNEL, [ALICE])  # BOB is not in A's #general; ALICE is
    run = await suspended_in(emu, bot)
    nonexistent = await command(emu, "status 0123456789abcdef0123456789abcdef", user=BOB, channel=OTHER_CHANNEL)
    unknown_text = nonexistent.replace("0123456789abcdef0123456789abcdef", run.run_id)
    assert "no such run" in unknown_text

    # The same words as for an id nobody ever used: from workspace B (same channel and user ids) ...
    assert await command(b, f"status {run.run_id}", user=ALICE) == unknown_text
    # ... from another channel of A, by someone who is not in the run's channel ...
    assert await command(emu, f"status {run.run_id}", user=BOB, channel=OTHER_CHANNEL) == unknown_text
    assert await command(emu, f"cancel {run.run_id}", user=BOB, channel=OTHER_CHANNEL) == unknown_text
    assert await command(b, f"cancel {run.run_id}", user=ALICE) == unknown_text
    # ... while a member of the run's channel sees it from anywhere in A, and anyone in the channel itself.
    assert f"*Run `{run.run_id}`*" in await command(emu, f"status {run.run_id}", user=ALICE, channel=OTHER_CHANNEL)
    assert f"*Run `{run.run_id}`*" in await command(emu, f"status {run.run_id}", user=BOB)
    assert (await bot.engine.get_run(run.run_id)).status == "suspended"


async def test_runs_lists_only_runs_of_channels_the_person_can_see(installed: Installed) -> None:
    emu, b, bot = installed.emu, installed.b, installed.bot
    emu.openid.set_members(CHANNEL, [ALICE])
    run = await suspended_in(emu, bot)
    assert run.run_id in await command(emu, "runs", user=ALICE, channel=OTHER_CHANNEL)
    assert run.run_id not in await command(emu, "runs", user=BOB, channel=OTHER_CHANNEL)
    assert run.run_id not in await command(b, "runs", user=ALICE)


async def test_a_channel_the_bot_cannot_check_shows_its_runs_only_in_the_channel(installed: Installed) -> None:
    emu, bot = installed.emu, installed.bot
    run = await suspended_in(emu, bot)
    emu.fail_next("conversations.members", status=200, error="not_in_channel", times=5)
    assert "no such run" in await command(emu, f"status {run.run_id}", user=ALICE, channel=OTHER_CHANNEL)
    assert f"*Run `{run.run_id}`*" in await command(emu, f"status {run.run_id}", user=ALICE)


async def test_a_crafted_click_from_another_workspace_or_channel_does_not_decide(installed: Installed) -> None:
    emu, b, bot = installed.emu, installed.b, installed.bot
    run = await suspended_in(emu, bot)
    approve = next(e for blk in run.approval.blocks or [] for e in blk.get("elements") or []
                   if e.get("action_id") == "approve")
    action = {"type": "button", "action_id": "approve", "block_id": "x", "value": approve["value"],
              "action_ts": str(time.time())}

    def payload(ws: SlackEmulator, channel: str, *, with_message: bool = True) -> dict[str, Any]:
        body = ws.delivery.block_actions_payload(
            user=ALICE, channel=channel, message=run.approval.to_api() if with_message else None,
            message_ts=run.approval.ts, is_ephemeral=False, actions=[action],
            response_url=ws.delivery.response_url_base + "none", trigger_id="1.2.3")
        if not with_message:
            body.pop("container", None)
            body.pop("channel", None)
        return body

    # A copy of A's card clicked in workspace B (same channel id), in another channel of A, and with no
    # message or container at all: all signed, none decides.
    for ws, body in ((b, payload(b, CHANNEL)), (emu, payload(emu, OTHER_CHANNEL)),
                     (emu, payload(emu, CHANNEL, with_message=False))):
        result = await ws.delivery.send_interaction(body)
        assert result.status == 200
    await bot.idle()
    assert (await bot.engine.get_run(run.run_id)).status == "suspended"
    shown = [e.text for e in b.ephemerals(ALICE)]
    assert shown and all("no such run" in t for t in shown)
    # The real card still works.
    await emu.click(run.approval, "approve", user=ALICE)
    assert await bot.settled(run.run_id) == "success"


async def test_thread_chat_recall_never_returns_another_workspaces_messages(installed: Installed) -> None:
    emu, b, bot = installed.emu, installed.b, installed.bot
    bot_user = emu.state.bot_user_id
    said = await emu.post_as_user(f"<@{bot_user}> remember that the vault code is kiwi-4711")
    await emu.wait_for(lambda: [m for m in emu.thread(CHANNEL, said.ts) if m.user == bot_user], timeout=5)
    asked = await b.post_as_user(f"<@{bot_user}> what is the vault code? kiwi-4711 was it?")
    answer = await b.wait_for(lambda: [m for m in b.thread(CHANNEL, asked.ts) if m.user == bot_user], timeout=5)
    await bot.idle()
    assert "Earlier in this thread" not in answer[0].text  # B's thread starts empty: nothing of A's recalled
    memory = bot.engine.memory
    assert memory is not None
    in_a = await memory.store.search_text("vault kiwi-4711", resource_id=f"slack:{TEAM_A}:{CHANNEL}")
    assert any("remember that the vault code" in str(hit) for hit in in_a)  # recall works within A
    in_b = await memory.store.search_text("vault kiwi-4711", resource_id=f"slack:{TEAM_B}:{CHANNEL}")
    assert all("remember that the vault code" not in str(hit) for hit in in_b)


async def test_a_crafted_feedback_click_from_another_workspace_or_channel_rates_nothing(installed: Installed) -> None:
    """A feedback button's value names an agent call by id; a copy clicked in workspace B (same channel id) or
    in another channel of A neither records a rating on A's call nor tells that the call exists."""
    emu, b, bot = installed.emu, installed.b, installed.bot
    bot_user = emu.state.bot_user_id
    said = await emu.post_as_user(f"<@{bot_user}> what is the plan for the release?")
    answer = await emu.wait_for(lambda: next((m for m in emu.thread(CHANNEL, said.ts) if m.user == bot_user
                                              and any(blk.get("type") == "context_actions" for blk in m.blocks or [])),
                                             None), timeout=10)
    await bot.idle()
    element = next(e for blk in answer.blocks or [] if blk.get("type") == "context_actions"
                   for e in blk.get("elements") or [] if e.get("type") == "feedback_buttons")
    value = element["positive_button"]["value"]
    context_id = json.loads(value)["context_id"]

    def payload(ws: SlackEmulator, channel: str, button_value: str) -> dict[str, Any]:
        action = {"type": "feedback_buttons", "action_id": "agent_feedback", "block_id": "x",
                  "value": button_value, "action_ts": str(time.time())}
        return ws.delivery.block_actions_payload(
            user=BOB, channel=channel, message=answer.to_api(), message_ts=answer.ts, is_ephemeral=False,
            actions=[action], response_url=ws.delivery.response_url_base + "none", trigger_id="1.2.3")

    unknown = json.dumps({"rating": "good", "context_id": 987654321})
    for ws, channel, button in ((emu, OTHER_CHANNEL, unknown), (b, CHANNEL, value), (emu, OTHER_CHANNEL, value)):
        before = len(ws.ephemerals(BOB))
        assert (await ws.delivery.send_interaction(payload(ws, channel, button))).status == 200
        await ws.wait_for(lambda ws=ws, before=before: len(ws.ephemerals(BOB)) > before, timeout=5)
    await bot.idle()
    row = await MemoryStore(bot.engine.db).get_agent_context(context_id)
    assert row is not None and not (row.answer or {}).get("feedback")
    said_unknown = emu.ephemerals(BOB)[0].text
    assert "Thanks" not in said_unknown
    assert [e.text for e in b.ephemerals(BOB)] == [said_unknown]  # word for word the answer for an unknown call
    assert [e.text for e in emu.ephemerals(BOB)] == [said_unknown, said_unknown]
    # In its own channel the button still works.
    await emu.click(answer, "agent_feedback", user=BOB, value="positive")
    await bot.idle()
    row = await MemoryStore(bot.engine.db).get_agent_context(context_id)
    assert row is not None and [f["user"] for f in (row.answer or {}).get("feedback") or []] == [BOB]


# -- uninstall, revocation -----------------------------------------------------------------------------


async def test_uninstalling_b_stops_its_deliveries_and_leaves_a_untouched(installed: Installed) -> None:
    emu, b, bot = installed.emu, installed.b, installed.bot
    run_a, run_b = await suspended_in(emu, bot, "run approval A"), await suspended_in(b, bot, "run approval B")
    result = await emu.uninstall(TEAM_B)
    assert result.status == 200
    await bot.idle()
    assert await bot.bot.installs.rows.find_bot(None, TEAM_B) is None  # type: ignore[union-attr]
    calls_b = len(b.calls())
    # B's run goes on in the database (approved from the CLI/API), but nothing more is sent to B.
    await bot.engine.resume(run_b.run_id, step="approve", data={"approved": True, "by": ALICE}, by=ALICE)
    await emu.click(run_a.approval, "approve", user=ALICE)
    assert await bot.settled(run_a.run_id) == "success"
    assert await bot.settled(run_b.run_id) == "success"
    await emu.wait_for(lambda: any("Run finished" in m.text for m in emu.thread(CHANNEL, run_a.root.ts)), timeout=5)
    await asyncio.sleep(0.3)
    assert len(b.calls()) == calls_b
    assert (await bot.engine.get_run(run_b.run_id)).status == "success"  # B's runs stay in the database
    # A slash command from B reaches an app that no longer has a token there: nothing about any run.
    ack = await b.slash_command("/flow", f"status {run_b.run_id}", user=ALICE)
    assert run_b.run_id not in ack.body and "Run `" not in ack.body
    await bot.idle()
    assert len(b.calls()) == calls_b


async def test_revoked_tokens_stop_deliveries_like_an_uninstall(installed: Installed) -> None:
    emu, b, bot = installed.emu, installed.b, installed.bot
    run_b = await suspended_in(b, bot, "run approval B")
    assert (await emu.revoke_tokens(TEAM_B)).status == 200
    await bot.idle()
    assert await bot.bot.installs.rows.find_bot(None, TEAM_B) is None  # type: ignore[union-attr]
    calls_b = len(b.calls())
    await bot.engine.resume(run_b.run_id, step="approve", data={"approved": True, "by": ALICE}, by=ALICE)
    assert await bot.settled(run_b.run_id) == "success"
    await asyncio.sleep(0.3)
    assert len(b.calls()) == calls_b
    run_a = await suspended_in(emu, bot, "run approval A")  # A is untouched
    assert run_a.run_id


# -- rotation, Enterprise Grid ---------------------------------------------------------------------------


async def test_a_rotated_token_is_refreshed_before_it_expires(emu: SlackEmulator, tmp_path: Path) -> None:
    emu.oauth.register_app(CLIENT_ID, CLIENT_SECRET, token_rotation=True, expires_in=3 * 3600)
    bot, base = await start_oauth_bot(emu, tmp_path / "threadflow.db", SLACK_TOKEN_ROTATION=True)
    try:
        await install(base, TEAM_A)
        first = emu.oauth.grants[0].access_token
        assert first.startswith("xoxe.xoxb-") and emu.oauth.grants[0].refresh_token
        run = await suspended_in(emu, bot)  # three hours left: more than the two hours before expiry
        assert {c.token for c in emu.calls() if c.method != "oauth.v2.access"} == {first}
        # Time passes: the token now expires within the two hours, so it is refreshed before the next call.
        emu.oauth.expiry[first] = time.time() + 60
        row = await bot.bot.installs.rows.find_bot(None, TEAM_A)  # type: ignore[union-attr]
        assert row is not None
        row["bot_token_expires_at"] = time.time() + 60
        await bot.bot.installs.rows.save_bot(row)
        bot.bot.tokens._bots.clear()  # type: ignore[union-attr]  # the cached copy is older than the change
        await emu.click(run.approval, "approve", user=ALICE)
        assert await bot.settled(run.run_id) == "success"
        second = emu.oauth.grants[0].access_token
        assert second != first
        refreshes = [c for c in emu.calls("oauth.v2.access") if c.params.get("grant_type") == "refresh_token"]
        assert len(refreshes) == 1
        await emu.wait_for(lambda: any("Run finished" in m.text for m in emu.thread(CHANNEL, run.root.ts)), timeout=5)
        later = [c for c in emu.calls() if c.method not in ("oauth.v2.access",) and c.time > refreshes[0].time]
        assert later and {c.token for c in later} == {second}
        assert not [c for c in emu.calls() if (c.response or {}).get("error") == "token_expired"]
    finally:
        await bot.stop()


async def test_an_enterprise_grid_org_wide_install_works(emu: SlackEmulator, tmp_path: Path) -> None:
    emu.state.enterprise_id = "E0ORG"
    bot, base = await start_oauth_bot(emu, tmp_path / "threadflow.db")
    try:
        await install(base, TEAM_A, org_wide=True)
        emu.state.org_wide_install = True
        row = await bot.bot.installs.rows.find_bot("E0ORG", None)  # type: ignore[union-attr]
        assert row is not None and row["is_enterprise_install"] and row["team_id"] is None
        run = await suspended_in(emu, bot)
        slack_run = await bot.bot.store.get_run(run.run_id)
        assert slack_run is not None and slack_run.enterprise_id == "E0ORG" and slack_run.team_id == TEAM_A
        assert f"*Run `{run.run_id}`*" in await command(emu, f"status {run.run_id}")
        await emu.click(run.approval, "approve", user=ALICE)
        assert await bot.settled(run.run_id) == "success"
    finally:
        await bot.stop()


async def test_the_manifest_has_the_redirect_url_and_uninstall_events_with_oauth(emu: SlackEmulator, tmp_path: Path) -> None:
    from bot.commands_server import manifest

    settings = oauth_settings(emu, tmp_path / "x.db", 3000, THREADFLOW_PUBLIC_URL="https://flow.example.com")
    m = manifest(settings, None)
    assert m["oauth_config"]["redirect_urls"] == ["https://flow.example.com/slack/oauth_redirect"]
    assert {"app_uninstalled", "tokens_revoked"} <= set(m["settings"]["event_subscriptions"]["bot_events"])
    assert m["settings"]["org_deploy_enabled"] is True


async def test_doctor_checks_the_key_and_reports_tokens_it_cannot_decrypt(installed: Installed) -> None:
    from bot.doctor import diagnose

    port = installed.bot.port

    def named(checks: list[Any], name: str) -> Any:
        return next(c for c in checks if c.name == name)

    good = await diagnose(oauth_settings(installed.emu, installed.database, port))
    assert named(good, "THREADFLOW_ENCRYPTION_KEY").status == "ok"
    assert named(good, "Installs").status == "ok" and "2 workspace(s)" in named(good, "Installs").detail

    other_key = await diagnose(oauth_settings(installed.emu, installed.database, port,
                                              THREADFLOW_ENCRYPTION_KEY=Fernet.generate_key().decode()))
    installs = named(other_key, "Installs")
    assert installs.status == "fail" and "cannot be decrypted" in installs.detail and TEAM_B in installs.detail
    # The old key after a new one still opens them (key rotation).
    rotated = await diagnose(oauth_settings(installed.emu, installed.database, port,
                                            THREADFLOW_ENCRYPTION_KEY=f"{Fernet.generate_key().decode()},{KEY}"))
    assert named(rotated, "Installs").status == "ok"

    malformed = await diagnose(oauth_settings(installed.emu, installed.database, port,
                                              THREADFLOW_ENCRYPTION_KEY="not-a-key"))
    assert named(malformed, "THREADFLOW_ENCRYPTION_KEY").status == "fail"
    for checks in (good, other_key, malformed):
        text = "\n".join(c.line() for c in checks)
        assert KEY not in text and installed.token_of(TEAM_A) not in text and CLIENT_SECRET not in text


async def test_a_scheduled_run_starts_in_its_own_workspace_with_its_token(installed: Installed) -> None:
    from bot.schedule_commands import fire_in_slack
    from storage.schedule_store import ScheduleStore
    from workflows.schedules import create_schedule

    emu, b, bot = installed.emu, installed.b, installed.bot
    schedule = await create_schedule(bot.engine, ScheduleStore(bot.engine.db), "greet-user", "0 9 * * *",
                                     input={"name": "Ada"}, team_id=TEAM_B, channel_id=CHANNEL, created_by=BOB)
    await fire_in_slack(bot.bot.deps, schedule)  # from the scheduler's task: no Slack request around it
    root = await b.wait_for(lambda: next((m for m in b.messages(CHANNEL) if "greet-user" in m.text), None), timeout=5)
    run_id = next(r.run_id for r in await bot.bot.store.recent_runs(TEAM_B))
    assert run_id in root.text and not any(run_id in m.text for m in emu.messages(CHANNEL))
    slack_run = await bot.bot.store.get_run(run_id)
    assert slack_run is not None and (slack_run.team_id, slack_run.channel_id, slack_run.started_by) == (TEAM_B, CHANNEL, BOB)
    assert {c.token for c in b.calls()} == {installed.token_of(TEAM_B)}
    # Seen from B's channel; not from A's channel with the same id.
    assert run_id in await command(b, "runs", user=BOB)
    assert run_id not in await command(emu, "runs", user=BOB)


async def test_schedules_of_another_workspace_or_channel_are_not_listed_nor_removable(installed: Installed) -> None:
    """A schedule shows its input; like a run it belongs to its channel: /flow schedules lists it and
    /flow unschedule removes it only for people who can see that channel, in its workspace. A schedule made
    outside Slack (no channel) is not visible from Slack at all."""
    from storage.schedule_store import ScheduleStore
    from workflows.schedules import create_schedule

    emu, b, bot = installed.emu, installed.b, installed.bot
    store = ScheduleStore(bot.engine.db)
    emu.openid.set_members(CHANNEL, [ALICE])
    made = await command(emu, 'schedule greet-user "0 9 * * *" name=secret-ada', user=ALICE)
    assert made.startswith(":calendar: Scheduled.")
    [mine] = await store.list_schedules()
    cli = await create_schedule(bot.engine, store, "greet-user", "0 8 * * *", input={"name": "operator-only"})

    unknown = await command(emu, "unschedule 0123456789abcdef", user=BOB, channel=OTHER_CHANNEL)
    assert "There is no schedule" in unknown
    for ws, user, channel in ((b, ALICE, CHANNEL), (emu, BOB, OTHER_CHANNEL)):
        listing = await command(ws, "schedules", user=user, channel=channel)
        assert mine.id not in listing and "secret-ada" not in listing and cli.id not in listing
        assert "operator-only" not in listing
        for schedule_id in (mine.id, cli.id):
            refused = await command(ws, f"unschedule {schedule_id}", user=user, channel=channel)
            assert refused == unknown.replace("0123456789abcdef", schedule_id)
    assert {s.id for s in await store.list_schedules()} == {mine.id, cli.id}
    # Alice is in the schedule's channel: she sees it from another channel of A too.
    assert mine.id in await command(emu, "schedules", user=ALICE, channel=OTHER_CHANNEL)
    assert mine.id in await command(emu, "schedules", user=ALICE)


@pytest.mark.parametrize(("override", "message"), [
    ({"THREADFLOW_ENCRYPTION_KEY": ""}, "THREADFLOW_ENCRYPTION_KEY is not set, and installs through OAuth"),
    ({"THREADFLOW_ENCRYPTION_KEY": "not-a-key"}, "THREADFLOW_ENCRYPTION_KEY is not a valid key"),
    ({"SLACK_SIGNING_SECRET": ""}, "SLACK_SIGNING_SECRET is not set"),
], ids=["no-key", "bad-key", "no-signing-secret"])
def test_serve_with_oauth_refuses_a_missing_or_bad_setting_in_one_line(emu: SlackEmulator, tmp_path: Path,
                                                                       override: dict[str, str], message: str) -> None:
    from bot.settings import SettingsError

    settings = oauth_settings(emu, tmp_path / "x.db", 3000, **override)
    assert settings.oauth_enabled
    with pytest.raises(SettingsError, match=re.escape(message)) as info:
        settings.require_slack()
    assert "\n" not in str(info.value) and KEY not in str(info.value)


def test_without_a_state_secret_the_single_token_mode_stays(emu: SlackEmulator, tmp_path: Path) -> None:
    settings = oauth_settings(emu, tmp_path / "x.db", 3000, SLACK_STATE_SECRET="", SLACK_BOT_TOKEN="xoxb-one")
    assert not settings.oauth_enabled
    settings.require_slack()  # the one bot token is enough
