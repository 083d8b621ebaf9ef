"""``threadflow dev``: the page's endpoints drive the real bot through the emulator, as a person in Slack would.

Each test starts a whole sandbox in-process (emulator + page + the bot via ``start_server``) on a SQLite file
in ``tmp_path`` and talks to it only over HTTP, the way the page does. The last tests start ``threadflow dev``
itself, in an empty directory with no environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.emulator import Message, SlackEmulator
from bot.sandbox import SANDBOX_BOT_TOKEN, Sandbox, SandboxError
from bot.settings import Settings
from tests.helpers import eventually

ALICE, BOB, CHANNEL = "U0ALICE", "U0BOB", "C0GENERAL"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sandbox]:
    monkeypatch.setenv("THREADFLOW_WORKSPACE", str(tmp_path / "workspace"))  # deploy-app writes Terraform there
    settings = Settings(_env_file=None, THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'threadflow.db'}",  # type: ignore[call-arg]
                        THREADFLOW_PROGRESS_INTERVAL=0.05)
    async with Sandbox(settings, port=0) as sb:
        yield sb
        secret = sb.emulator.signing_secret
        assert secret not in json.dumps(sb.emulator.snapshot()), "the signing secret leaked into Slack"


@pytest.fixture
async def http(sandbox: Sandbox) -> AsyncIterator[Page]:
    async with aiohttp.ClientSession(base_url=sandbox.url) as session:
        yield Page(sandbox, session)


class Page:
    """What the page's script does, in Python: POST an action, read the state."""

    def __init__(self, sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
        self.sandbox, self.session, self.emu = sandbox, session, sandbox.emulator

    async def post(self, path: str, body: Any, status: int = 200) -> dict[str, Any]:
        async with self.session.post(path, json=body) as resp:
            data = await resp.json()
            assert resp.status == status, data
            return dict(data)

    async def state(self, user: str | None = None) -> dict[str, Any]:
        async with self.session.get("/sandbox/state", params={"user": user} if user else {}) as resp:
            assert resp.status == 200
            return dict(await resp.json())

    def root(self, workflow: str) -> Message | None:
        return next((m for m in self.emu.messages(CHANNEL) if m.text.startswith(f"Workflow {workflow} (")), None)

    def thread(self, root: Message) -> list[Message]:
        return [m for m in self.emu.thread(CHANNEL, root.ts) if m.ts != root.ts]

    async def approval(self, root: Message) -> Message:
        return await self.emu.wait_for(lambda: next((m for m in self.thread(root) if buttons(m)), None), timeout=10)


def buttons(msg: Message | dict[str, Any]) -> list[str]:
    blocks = msg.get("blocks") if isinstance(msg, dict) else msg.blocks
    return [e["text"]["text"] for b in blocks or [] if b.get("type") == "actions" for e in b.get("elements", [])]


def status_line(msg: Message) -> str:
    return next(b["text"]["text"] for b in msg.blocks or [] if b.get("type") == "section")


# -- the page ---------------------------------------------------------------------------------------


async def test_page_and_assets_are_local(http: Page) -> None:
    async with http.session.get("/") as resp:
        html = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
    assert "/sandbox/static/sandbox.js" in html and "/sandbox/static/sandbox.css" in html
    texts = [html]
    for asset, kind in (("sandbox.js", "javascript"), ("sandbox.css", "text/css")):
        async with http.session.get(f"/sandbox/static/{asset}") as resp:
            assert resp.status == 200 and kind in resp.content_type
            texts.append(await resp.text())
    for text in texts:  # nothing is fetched from elsewhere: no CDN, no web fonts, no remote images
        assert not re.search(r"""(src|href)=["']?(https?:)?//|url\(["']?(https?:)?//|@import|fetch\(["']http""", text)


async def test_state_shows_people_and_hides_other_peoples_ephemerals(http: Page) -> None:
    http.emu.state.add_ephemeral(CHANNEL, BOB, text="for bob")
    state = await http.state(ALICE)
    assert state["people"] == [ALICE, BOB] and state["bot_user_id"] == "U0BOT" and state["command"] == "/flow"
    assert state["model"] == "offline"
    assert state["ephemerals"] == []
    assert [e["text"] for e in (await http.state(BOB))["ephemerals"]] == ["for bob"]


# -- acting as people ---------------------------------------------------------------------------------


async def test_approval_run_from_the_page(http: Page) -> None:
    """``/flow run approval``, a click by someone who may not decide, then the starter's Approve."""
    assert (await http.post("/sandbox/command", {"text": "/flow run approval", "user": ALICE})) == \
        {"ok": True, "status": 200}
    root = await http.emu.wait_for(lambda: http.root("approval"))
    approval = await http.approval(root)
    assert buttons(approval) == ["Approve", "Reject", "Reject with reason…"]
    await http.emu.wait_for(lambda: "`approve` _waiting for approval_" in json.dumps(root.blocks))  # checklist
    state = await http.state(ALICE)
    (shown,) = [m for m in state["messages"][CHANNEL] if m["ts"] == root.ts]
    assert shown["reply_count"] == 1 and shown["blocks"] == root.blocks

    refused = await http.post("/sandbox/click", {"ts": approval.ts, "action_id": "approve", "user": BOB})
    assert refused["ok"]  # Slack got a 200: the bot acked, then said no, only to bob
    await http.emu.wait_for(lambda: http.emu.ephemerals(BOB))
    assert "can't decide" in http.emu.ephemerals(BOB)[0].text
    assert (await http.state(ALICE))["ephemerals"] == []

    await http.post("/sandbox/click", {"ts": approval.ts, "action_id": "approve", "user": ALICE})
    await http.emu.wait_for(lambda: ":white_check_mark:" in status_line(root) and "success" in status_line(root),
                            timeout=10)
    await http.emu.wait_for(lambda: any("Run finished" in m.text for m in http.thread(root)))
    assert "Approved by <@U0ALICE>" in http.emu.message(approval.ts).text  # type: ignore[union-attr]
    kinds = {(d.kind, d.status) for d in http.emu.state.deliveries}
    assert kinds == {("slash_command", 200), ("block_actions", 200)}  # real, signed requests, all accepted


async def test_deploy_app_cost_approval_and_thread_chat(http: Page) -> None:
    text = '/flow run deploy-app "a Postgres-backed API for 10k users"'
    await http.post("/sandbox/command", {"text": text, "user": ALICE})
    root = await http.emu.wait_for(lambda: http.root("deploy-app"))
    approval = await http.approval(root)
    assert "Estimated cost" in approval.text
    await http.post("/sandbox/click", {"ts": approval.ts, "action_id": "approve", "user": ALICE})
    await http.emu.wait_for(lambda: any("Run finished" in m.text for m in http.thread(root)), timeout=15)
    assert any(m.text.startswith("*architect*") for m in http.thread(root))

    asked = await http.post("/sandbox/message", {"text": "what did the architect decide?", "user": ALICE,
                                                 "thread_ts": root.ts})
    assert asked["ok"] and asked["delivered"]
    answer = await http.emu.wait_for(lambda: next(
        (m for m in http.thread(root) if float(m.ts) > float(asked["ts"]) and m.user == "U0BOT"
         and finished(http.emu, m)), None), timeout=10)
    assert "Earlier in this thread" in answer.text  # the offline model quotes the run's thread


def finished(emu: SlackEmulator, msg: Message) -> bool:
    """A message is all there: posted whole, or streamed and stopped."""
    stream = emu.streams.of(msg.ts)
    return stream is None or stream.state == "stopped"


async def test_mentions_are_sent_like_slack_sends_them(http: Page) -> None:
    posted = await http.post("/sandbox/message", {"text": "@threadflow is 1 < 2 & @bob around?", "user": ALICE})
    msg = http.emu.message(posted["ts"])
    assert msg is not None and msg.text == "<@U0BOT> is 1 &lt; 2 &amp; <@U0BOB> around?"
    mention = [d for d in http.emu.state.deliveries if d.kind == "event_callback"]
    assert [json.loads(d.body)["event"]["type"] for d in mention] == ["message", "app_mention"]
    answer = await http.emu.wait_for(lambda: http.emu.thread(CHANNEL, msg.ts)[1:], timeout=10)
    assert answer[0].user == "U0BOT"  # a mention is answered in a thread under it


async def test_reject_with_reason_through_the_modal(http: Page) -> None:
    await http.post("/sandbox/command", {"text": "/flow run approval", "user": ALICE})
    root = await http.emu.wait_for(lambda: http.root("approval"))
    approval = await http.approval(root)
    await http.post("/sandbox/click", {"ts": approval.ts, "action_id": "reject_with_reason", "user": ALICE})
    (view,) = await http.emu.wait_for(lambda: http.emu.views(ALICE))
    assert (await http.state(BOB))["views"] == []  # a modal is only on the screen of who opened it
    result = await http.post("/sandbox/view", {"view_id": view.id, "values": {"reason": {"reason": "not today"}},
                                               "user": ALICE})
    assert result == {"ok": True, "status": 200, "errors": {}}
    assert http.emu.views(ALICE) == []
    await http.emu.wait_for(lambda: "failed" in status_line(root), timeout=10)
    await http.emu.wait_for(lambda: "not today" in (http.emu.message(approval.ts) or approval).text)


async def test_closing_a_modal(http: Page) -> None:
    await http.post("/sandbox/command", {"text": "/flow run approval", "user": ALICE})
    approval = await http.approval(await http.emu.wait_for(lambda: http.root("approval")))
    await http.post("/sandbox/click", {"ts": approval.ts, "action_id": "reject_with_reason", "user": ALICE})
    (view,) = await http.emu.wait_for(lambda: http.emu.views(ALICE))
    assert await http.post("/sandbox/view/close", {"view_id": view.id}) == {"ok": True}
    assert http.emu.views(ALICE) == [] and http.emu.state.views[view.id].closed
    await http.post("/sandbox/view", {"view_id": view.id, "values": {}}, status=404)


async def test_bad_requests_get_clear_answers(http: Page) -> None:
    unknown = await http.post("/sandbox/command", {"text": "/deploy now", "user": ALICE})
    assert unknown == {"ok": False, "error": "unknown_command"}
    assert "`/deploy` is not a valid command" in http.emu.ephemerals(ALICE)[0].text
    assert "act as one of U0ALICE, U0BOB" in (await http.post("/sandbox/command", {"text": "/flow help",
                                                                                   "user": "U0BOT"}, 400))["error"]
    assert "Unknown channel" in (await http.post("/sandbox/message", {"text": "hi", "channel": "C0NOPE"}, 400))["error"]
    await http.post("/sandbox/message", {"text": "  "}, 400)
    await http.post("/sandbox/message", {"text": "hi", "thread_ts": "1.000001"}, 404)
    await http.post("/sandbox/click", {"ts": "1.000001", "action_id": "approve"}, 404)
    async with http.session.post("/sandbox/click", data="not json", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400 and (await resp.json())["ok"] is False


async def test_a_command_the_bot_cannot_take_says_so(http: Page) -> None:
    http.emu.bot_url = "http://127.0.0.1:9/slack/events"  # the bot is away (e.g. restarting)
    assert (await http.post("/sandbox/command", {"text": "/flow help"})) == {"ok": False, "error": "dispatch_failed"}
    assert http.emu.ephemerals(ALICE)[0].text == '`/flow` failed with the error "dispatch_failed".'
    posted = await http.post("/sandbox/message", {"text": "still here?"})
    assert posted["ok"] and not posted["delivered"]  # stored, as Slack would, though nobody heard it


async def test_forged_requests_are_refused(sandbox: Sandbox) -> None:
    """The sandbox bot checks signatures like ``serve`` does: its secret is random and not the default."""
    assert sandbox.settings.slack_signing_secret is not None
    assert sandbox.settings.slack_bot_token.get_secret_value() == SANDBOX_BOT_TOKEN  # type: ignore[union-attr]
    assert sandbox.settings.slack_api_url == sandbox.emulator.api_url
    forged = await sandbox.emulator.slash_command("/flow", "help", forge_signature=True)
    assert forged.status == 401


# -- the live feed ------------------------------------------------------------------------------------


async def read_event(resp: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The next server-sent event (comments and ``retry`` skipped)."""
    name, data = "message", None
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif not line and data is not None:
            return name, data


async def test_events_stream_a_snapshot_then_changes(http: Page) -> None:
    async with http.session.get("/sandbox/events") as resp:
        assert resp.content_type == "text/event-stream"
        name, snapshot = await read_event(resp)
        assert name == "snapshot" and snapshot["messages"] == {} and snapshot["people"] == [ALICE, BOB]
        await http.post("/sandbox/message", {"text": "hello", "user": BOB})
        name, change = await read_event(resp)
        assert name == "change" and change["kind"] == "message.posted"
        assert change["data"]["message"]["text"] == "hello" and change["data"]["message"]["user"] == BOB
        kinds: list[str] = []  # API calls and deliveries stay out of the page's feed
        await http.post("/sandbox/command", {"text": "/flow help", "user": BOB})
        while not kinds or kinds[-1] != "ephemeral.posted":
            kinds.append((await read_event(resp))[1]["kind"])
        assert all(k.startswith(("message.", "ephemeral.", "view.")) for k in kinds)


async def test_stopping_ends_open_event_streams(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")  # type: ignore[call-arg]
    sandbox = await Sandbox(settings, port=0).start()
    async with aiohttp.ClientSession() as session, session.get(sandbox.url + "sandbox/events") as resp:
        assert (await read_event(resp))[0] == "snapshot"
        await asyncio.wait_for(sandbox.stop(), 5)
        assert await asyncio.wait_for(resp.content.read(), 5) == b""  # ended, not hung


async def test_a_busy_port_is_reported_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings(_env_file=None, THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")  # type: ignore[call-arg]
        with pytest.raises(SandboxError, match=r"--port 8081"):
            await Sandbox(settings, port=port).start()


# -- threadflow dev -----------------------------------------------------------------------------------


async def test_threadflow_dev_in_an_empty_directory_with_no_environment(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    with (tmp_path / "stderr.log").open("wb") as logs:  # a file, so a chatty bot never blocks on a full pipe
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "dev", "--no-browser", "--port", "0", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=logs)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()  # type: ignore[union-attr]
        match = re.fullmatch(r"threadflow sandbox: open (http://127\.0\.0\.1:\d+/)\n", line)
        assert match, line
        async with aiohttp.ClientSession() as session:
            async with session.get(match.group(1)) as resp:
                assert resp.status == 200 and "threadflow sandbox" in await resp.text()
            async with session.post(match.group(1) + "sandbox/command", json={"text": "/flow workflows"}) as resp:
                assert (await resp.json())["ok"]
            async with session.get(match.group(1) + "sandbox/state", params={"user": ALICE}) as resp:
                ephemerals = (await resp.json())["ephemerals"]
        assert "deploy-app" in ephemerals[0]["text"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stdout, _ = await proc.communicate()
    assert b"Ctrl+C to stop" in stdout
    assert (tmp_path / "threadflow.db").exists()  # the default database, in the current directory
    stderr = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in stderr and "alembic" not in stderr, stderr[-2000:]


async def test_the_sandbox_works_with_realistic_slack(tmp_path: Path) -> None:
    """``threadflow dev --realistic-slack``: Slack answers in 0.1-0.3 s and enforces its rate limits."""
    settings = Settings(_env_file=None, THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'threadflow.db'}",  # type: ignore[call-arg]
                        THREADFLOW_PROGRESS_INTERVAL=0.05)
    async with Sandbox(settings, port=0, realistic_slack=True) as sb, \
            aiohttp.ClientSession(base_url=sb.url) as session:
        http = Page(sb, session)
        assert sb.emulator.web_api.rate_limits.enabled and sb.emulator.web_api.latency.ranges["*"] == (0.1, 0.3)
        await http.post("/sandbox/command", {"text": "/flow run approval", "user": ALICE})
        root = await http.emu.wait_for(lambda: http.root("approval"), timeout=15)
        approval = await http.emu.wait_for(lambda: next((m for m in http.thread(root) if buttons(m)), None), timeout=15)
        await http.post("/sandbox/click", {"ts": approval.ts, "action_id": "approve", "user": ALICE})
        await http.emu.wait_for(lambda: any("Run finished" in m.text for m in http.thread(root)), timeout=20)
        await http.emu.wait_for(lambda: "success" in status_line(root), timeout=20)
        assert http.emu.rate_limited == 0


async def test_a_person_switches_slack_faults_on_and_off_from_the_sandbox(http: Page) -> None:
    """``POST /sandbox/faults``: the faults the tests inject (429 runs, latency, realistic limits), over HTTP."""
    behaviour = await http.post("/sandbox/faults", {
        "latency": {"chat.update": 0.3, "chat.postEphemeral": [0.1, 0.2]},
        "fail_next": [{"method": "chat.postMessage", "status": 429, "times": 2, "retry_after": 1}]})
    assert behaviour["latency"] == {"chat.update": [0.3, 0.3], "chat.postEphemeral": [0.1, 0.2]}
    assert behaviour["faults"] == [{"method": "chat.postMessage", "status": 429, "error": "ratelimited", "times": 2,
                                    "retry_after": 1, "delay": 0.0, "drop": False}]

    await http.post("/sandbox/command", {"text": "/flow run approval", "user": ALICE})
    root = await http.emu.wait_for(lambda: http.root("approval"), timeout=15)
    await http.approval(root)
    posts = http.emu.calls("chat.postMessage")
    assert [c.status for c in posts][:3] == [429, 429, 200]
    assert posts[2].time - posts[0].time >= 1.9  # the bot waited out each Retry-After: 1

    async with http.session.get("/sandbox/faults") as resp:
        assert (await resp.json())["faults"] == []  # both were used up
    on = await http.post("/sandbox/faults", {"realistic": True, "fail_next": [{"method": "*", "status": 503}]})
    assert on["realistic"] is True and on["latency"]["*"] == [0.1, 0.3] and on["faults"][0]["error"] == "service_unavailable"
    off = await http.post("/sandbox/faults", {"realistic": False, "clear_faults": True,
                                              "latency": {"chat.update": 0, "chat.postEphemeral": 0}})
    assert off["realistic"] is False and off["latency"] == {} and off["faults"] == []
    assert not http.emu.web_api.rate_limits.enabled

    bad = await http.post("/sandbox/faults", {"fail_next": [{"method": "chat.postMesage"}]}, status=400)
    assert "Unknown Web API method chat.postMesage" in bad["error"] and "chat.postMessage" in bad["error"]
    bad = await http.post("/sandbox/faults", {"fail_next": [{"status": 99}], "latency": {"*": -1}}, status=400)
    assert "fail_next.0.status" in bad["error"] and "latency" in bad["error"]
    bad = await http.post("/sandbox/faults", {"realistc": True}, status=400)
    assert "realistc" in bad["error"]


async def test_clear_faults_also_removes_slowed_methods_but_not_realistic_mode(http: Page) -> None:
    """The README's reset line (``clear_faults`` + ``realistic: false``) left an earlier latency in place."""
    await http.post("/sandbox/faults", {"latency": {"chat.update": 0.3}, "fail_next": [{"method": "chat.update"}]})
    reset = await http.post("/sandbox/faults", {"clear_faults": True, "realistic": False})
    assert reset["latency"] == {} and reset["faults"] == [] and reset["realistic"] is False

    await http.post("/sandbox/faults", {"realistic": True, "latency": {"chat.update": 0.3}})
    kept = await http.post("/sandbox/faults", {"clear_faults": True})
    assert kept["realistic"] is True and kept["latency"] == {"*": [0.1, 0.3]}


async def test_approving_from_the_run_inspector_updates_the_slack_card(http: Page) -> None:
    """``threadflow dev`` serves the inspector beside the sandbox: a decision there goes through the same
    compare-and-set as the buttons, and the card in Slack says who decided."""
    inspector = http.sandbox.inspector
    assert inspector is not None and (await http.state())["inspector_url"] == inspector.url.rstrip("/") + "/runs"
    await http.post("/sandbox/command", {"text": "/flow run approval ship it", "user": ALICE})
    root = await http.emu.wait_for(lambda: http.root("approval"), timeout=15)
    card = await http.approval(root)
    run_id = json.loads(next(e["value"] for b in card.blocks or [] if b.get("type") == "actions"
                             for e in b["elements"]))["run_id"]

    async with aiohttp.ClientSession(base_url=inspector.url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as ui:
        async with ui.get(f"/runs/{run_id}") as resp:
            page = await resp.text()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert resp.status == 200 and token is not None
        async with ui.post(f"/runs/{run_id}/resume", data={"csrf": token.group(1), "path": "approve",
                                                           "decision": "approve"},
                           headers={"X-Requested-With": "fetch"}) as resp:
            assert resp.status == 200, await resp.text()

    await http.emu.wait_for(lambda: "Approved by" in str((http.emu.message(card.ts) or card).blocks), timeout=15)
    assert not buttons(http.emu.message(card.ts) or card)
    await http.emu.wait_for(lambda: "success" in status_line(http.emu.message(root.ts) or root), timeout=15)


async def test_two_workspaces_each_install_the_app_and_have_their_own_page(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``threadflow dev --workspaces 2``: the app is installed in both through the emulator's OAuth flow; a run
    started on the second workspace's page lives there only and is "no such run" from the first."""
    monkeypatch.setenv("THREADFLOW_WORKSPACE", str(tmp_path / "workspace"))
    settings = Settings(_env_file=None, THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'threadflow.db'}",  # type: ignore[call-arg]
                        THREADFLOW_PROGRESS_INTERVAL=0.05)
    async with Sandbox(settings, port=0, workspaces=2) as sb:
        assert sb.bot is not None and sb.bot.installs is not None
        urls = sb.workspace_urls
        assert list(urls) == ["T0TEAM", "T2SANDBOX"] and urls["T2SANDBOX"].endswith("/w/T2SANDBOX/")
        assert {g.team_id for g in sb.emulator.oauth.grants} == {"T0TEAM", "T2SANDBOX"}
        second = sb.emulator.workspace("T2SANDBOX")
        async with aiohttp.ClientSession() as session:
            async with session.get(urls["T2SANDBOX"]) as resp:
                assert resp.status == 200 and "/sandbox/static/sandbox.js" in await resp.text()
            async with session.post(urls["T2SANDBOX"] + "sandbox/command",
                                    json={"text": "/flow run approval", "user": ALICE}) as resp:
                assert (await resp.json()) == {"ok": True, "status": 200}
            root = await second.wait_for(lambda: next((m for m in second.messages(CHANNEL)
                                                       if m.text.startswith("Workflow approval (")), None), timeout=10)
            bot = sb.bot

            async def recorded() -> list[Any]:
                return await bot.store.recent_runs("T2SANDBOX")

            run_id = (await eventually(recorded, timeout=5))[0].run_id
            assert run_id in root.text and not sb.emulator.messages(CHANNEL)
            async with session.get(urls["T2SANDBOX"] + "sandbox/state") as resp:
                assert any(run_id in m["text"] for m in (await resp.json())["messages"].get(CHANNEL, []))
            async with session.post(urls["T0TEAM"] + "sandbox/command",
                                    json={"text": f"/flow status {run_id}", "user": ALICE}) as resp:
                assert resp.status == 200
        shown = await sb.emulator.wait_for(lambda: sb.emulator.ephemerals(ALICE), timeout=5)
        assert "no such run" in shown[0].text
        assert {c.token for c in second.calls()} == {sb.emulator.oauth.grants[1].access_token}


async def test_another_web_site_cannot_drive_the_sandbox_from_the_persons_browser(http: Page) -> None:
    """A page from elsewhere may send a "simple" cross-site POST (text/plain, no preflight) to 127.0.0.1; the
    sandbox takes only JSON bodies (which a browser sends cross-site only after a preflight nobody answers), so
    such a page can neither start runs as the person nor switch Slack faults on."""
    for path, body in (("/sandbox/faults", '{"realistic": true}'),
                       ("/sandbox/command", '{"text": "/flow run approval", "user": "U0ALICE"}')):
        async with http.session.post(path, data=body, headers={"Content-Type": "text/plain"}) as resp:
            refused = await resp.json()
            assert resp.status == 415, refused
        assert "Content-Type: application/json" in refused["error"]
    assert not http.emu.web_api.rate_limits.enabled
    assert not http.emu.messages(CHANNEL)


async def test_a_page_whose_dns_name_rebinds_to_127_0_0_1_can_neither_read_nor_drive_the_sandbox(http: Page) -> None:
    """After a DNS rebinding, a web page the developer visits is same-origin with the sandbox (its JSON requests
    need no preflight): it could read every message of the sandbox's Slack and start runs as alice. Everything on
    the sandbox's address answers only to 127.0.0.1/localhost, as the run inspector does without sign-in."""
    port = http.sandbox.url.rstrip("/").rsplit(":", 1)[-1]
    rebound = {"Host": f"rebind.attacker.example:{port}", "Origin": f"http://rebind.attacker.example:{port}"}
    async with http.session.get("/sandbox/state", headers=rebound) as resp:
        assert resp.status == 403
    async with http.session.get("/api/conversations.history", params={"channel": CHANNEL},
                                headers={**rebound, "Authorization": f"Bearer {SANDBOX_BOT_TOKEN}"}) as resp:
        assert resp.status == 403  # the local Slack's Web API too: the sandbox's bot token is no secret
    async with http.session.post("/sandbox/command", json={"user": ALICE, "channel": CHANNEL,
                                                           "text": "/flow run greet-user name=mallory"},
                                 headers=rebound) as resp:
        assert resp.status == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):  # the names the developer opens it with
        async with http.session.get("/sandbox/state", headers={"Host": host}) as resp:
            assert resp.status == 200
    await asyncio.sleep(0.5)  # (a command taken would have posted the run's root message by now)
    assert http.root("greet-user") is None

