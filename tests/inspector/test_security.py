"""The inspector's security rules: where it may listen, who sees which run, CSRF, and who may approve."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.cli import main
from bot.emulator import SlackEmulator
from bot.inspector import InspectorConfig, InspectorError, start_inspector
from tests.inspector.conftest import (
    ALICE,
    BOB,
    GENERAL,
    SECRET,
    Browser,
    StartInspector,
    slack_config,
    slack_run,
)
from workflows import Engine

ROOT = Path(__file__).resolve().parents[2]


# -- where it listens ---------------------------------------------------------------------------------


def test_off_loopback_without_sign_in_the_ui_command_refuses_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "will not listen on 0.0.0.0 without sign-in" in err
    assert "THREADFLOW_UI_TOKEN" in err and err.count("\n") == 1


async def test_off_loopback_without_sign_in_start_inspector_refuses(engine: Engine, start: StartInspector) -> None:
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        with pytest.raises(InspectorError, match="without sign-in"):
            await start(InspectorConfig(host=host, port=0))


def test_serve_with_the_ui_off_loopback_refuses_before_starting(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-x")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "s")
    monkeypatch.setenv("THREADFLOW_UI_HOST", "0.0.0.0")
    assert main(["serve", "--ui", "--port", "0"]) == 2
    assert "will not listen on 0.0.0.0 without sign-in" in capsys.readouterr().err


async def test_the_ui_command_prints_its_address_and_with_a_token_may_listen_anywhere(tmp_path: Path) -> None:
    env = {**os.environ, "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'ui.db'}",
           "THREADFLOW_UI_TOKEN": "operator-token-for-tests", "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "ui", "--host", "0.0.0.0", "--port", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/runs \(listening on 0\.0\.0\.0\)", line)
        assert found, line  # an address that opens, not 0.0.0.0
        import aiohttp

        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{found.group(1)}/runs"
            async with http.get(url, allow_redirects=False) as resp:
                assert resp.status == 302 and resp.headers["Location"].startswith("/login")
            async with http.get(url, headers={"Authorization": "Bearer operator-token-for-tests"}) as resp:
                assert resp.status == 200 and "Runs" in await resp.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_the_operator_can_use_the_inspector_of_an_oauth_installed_bot(tmp_path: Path) -> None:
    """Installs through OAuth (README, "Distributing the app"): no SLACK_BOT_TOKEN, and SLACK_CLIENT_ID/SECRET are
    the installs' credentials. ``threadflow ui`` starts (it refused: "Sign in with Slack needs SLACK_BOT_TOKEN
    too"); the operator sees every run, and nobody signs in with Slack, which could not tell their channels."""
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "THREADFLOW_", "OPENAI_"))}
    env.update({
        "PYTHONPATH": str(ROOT), "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'ui.db'}",
        "SLACK_CLIENT_ID": "1234.5678", "SLACK_CLIENT_SECRET": "0123456789abcdef0123456789abcdef",
        "SLACK_SIGNING_SECRET": "signing-secret", "SLACK_STATE_SECRET": "state-secret",
        "THREADFLOW_ENCRYPTION_KEY": Fernet.generate_key().decode(), "THREADFLOW_UI_TOKEN": "operator-token-for-tests",
    })
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "ui", "--port", "0", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "threadflow inspector: open" in line, line or (await proc.stderr.read()).decode()
        url = line.split("open ", 1)[1].split()[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Authorization": "Bearer operator-token-for-tests"}) as resp:
                assert resp.status == 200 and "Runs" in await resp.text()
            async with http.get(url.replace("/runs", "/auth/slack"), allow_redirects=False) as resp:
                assert resp.status == 404  # Sign in with Slack is off: it fails closed
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_off_loopback_an_oauth_installed_bots_inspector_needs_the_operator_token() -> None:
    """With Sign in with Slack off (OAuth installs, no bot token), only THREADFLOW_UI_TOKEN lets it off loopback,
    and the refusal says why SLACK_CLIENT_ID, although set, is not sign-in."""
    from bot.settings import Settings

    settings = Settings(_env_file=None, SLACK_CLIENT_ID="1234.5678", SLACK_CLIENT_SECRET="c" * 32,  # type: ignore[call-arg]
                        SLACK_STATE_SECRET="state", SLACK_SIGNING_SECRET="signing")
    config = InspectorConfig.from_settings(settings, host="0.0.0.0")
    assert config.slack is None and not config.sign_in_configured
    with pytest.raises(InspectorError, match="THREADFLOW_UI_TOKEN.*Sign in with Slack is off: installs come through"):
        config.check_exposure()


async def test_without_sign_in_it_answers_only_to_loopback_host_names(engine: Engine, start: StartInspector,
                                                                    browser: type[Browser]) -> None:
    running = await start(InspectorConfig(port=0))
    client = browser(running.url)
    assert (await client.get("/runs"))[0] == 200
    status, text = await client.get("/runs", headers={"Host": "rebound.example:8090"})
    assert status == 403 and "only on 127.0.0.1" in text


# -- who sees what ------------------------------------------------------------------------------------


async def test_a_signed_in_person_not_in_a_runs_channel_gets_404(
    engine: Engine, emulator: SlackEmulator, start: StartInspector, browser: type[Browser],
) -> None:
    secret_run = await slack_run(engine, "greet-user", {"name": "Secret"}, channel=SECRET, user=ALICE)
    open_run = await slack_run(engine, "greet-user", {"name": "Open"}, channel=GENERAL, user=ALICE)
    running = await start(slack_config(emulator))

    bob = browser(running.url)
    status, _ = await bob.get("/runs", allow_redirects=False)
    assert status == 302  # sign-in is required once it is configured
    await bob.sign_in_with_slack(emulator, BOB)
    status, listing = await bob.get("/runs")
    assert status == 200 and open_run in listing and secret_run not in listing
    assert (await bob.get(f"/runs/{secret_run}"))[0] == 404
    assert (await bob.get(f"/runs/{secret_run}/live"))[0] == 404
    assert (await bob.get(f"/runs/{open_run}"))[0] == 200
    status, search = await bob.get(f"/runs?q={secret_run}")
    assert status == 200 and f'href="/runs/{secret_run}"' not in search and "No runs match" in search

    alice = browser(running.url)
    await alice.sign_in_with_slack(emulator, ALICE)
    status, page = await alice.get(f"/runs/{secret_run}")
    assert status == 200 and "Hello, Secret!" in page
    asked = [c.params.get("user") for c in emulator.calls("users.conversations")]
    assert BOB in asked and ALICE in asked


async def test_a_forged_or_replayed_sign_in_is_refused(
    engine: Engine, emulator: SlackEmulator, start: StartInspector, browser: type[Browser],
) -> None:
    running = await start(slack_config(emulator))
    mallory = browser(running.url)
    status, page = await mallory.get("/login")
    assert status == 200 and "Sign in with Slack" in page and "Operator token" not in page
    status, _, _ = await mallory.post("/login", {"token": "x"})
    assert status == 403
    async with mallory.http.get(mallory.url("/auth/slack/callback?code=made-up&state=made-up"),
                                allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/login"
    assert "The sign-in expired or was not started here" in (await mallory.get("/login"))[1]
    assert "spoofed" not in (await mallory.get("/login?error=spoofed"))[1]
    assert (await mallory.get("/runs", allow_redirects=False))[0] == 302


# -- CSRF ---------------------------------------------------------------------------------------------


async def test_a_cross_site_post_is_refused(engine: Engine, start: StartInspector, browser: type[Browser]) -> None:
    handle = await engine.start("approval", {"request": "ship it"}, started_by=ALICE)
    assert (await handle.result(timeout=10)).status == "suspended"
    running = await start(InspectorConfig(port=0))
    client = browser(running.url)
    token = await client.csrf(f"/runs/{handle.run_id}")

    # another site's page posting the form (the browser sends the cookie, and says where it came from)
    status, text, _ = await client.post(f"/runs/{handle.run_id}/cancel", {"csrf": token},
                                        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site" in text
    # a post without the session's token (an old browser that sends no Origin)
    status, text, _ = await client.post(f"/runs/{handle.run_id}/cancel", {"csrf": "guessed"})
    assert status == 403 and "stale or came from another site" in text
    assert (await engine.get_run(handle.run_id)).status == "suspended"

    status, _, location = await client.post(f"/runs/{handle.run_id}/cancel", {"csrf": token},
                                            headers={"Origin": running.url.rstrip("/")})
    assert status == 303 and location == f"/runs/{handle.run_id}"
    assert (await engine.get_run(handle.run_id)).status == "canceled"


# -- who may act --------------------------------------------------------------------------------------


async def test_a_non_approver_cannot_approve(
    engine: Engine, emulator: SlackEmulator, start: StartInspector, browser: type[Browser],
) -> None:
    run_id = await slack_run(engine, "approval", {"request": "ship it"}, channel=GENERAL, user=ALICE)
    running = await start(slack_config(emulator))

    bob = browser(running.url)
    await bob.sign_in_with_slack(emulator, BOB)
    status, page = await bob.get(f"/runs/{run_id}")
    assert status == 200 and "Only U0ALICE may decide this." in page and 'value="approve"' not in page
    token = await bob.csrf(f"/runs/{run_id}")
    status, text, _ = await bob.post(f"/runs/{run_id}/resume", {"csrf": token, "path": "approve", "decision": "approve"})
    assert status == 403 and "only U0ALICE may" in text
    status, text, _ = await bob.post(f"/runs/{run_id}/cancel", {"csrf": token})
    assert status == 403
    assert (await engine.get_run(run_id)).status == "suspended"

    alice = browser(running.url)
    await alice.sign_in_with_slack(emulator, ALICE)
    token = await alice.csrf(f"/runs/{run_id}")
    status, _, _ = await alice.post(f"/runs/{run_id}/resume", {"csrf": token, "path": "approve", "decision": "approve"})
    assert status == 303
    result = await engine.wait_for(run_id, timeout=10)
    assert result.status == "success"
    suspension = (await engine.store.suspensions_of(run_id))[0]
    assert suspension.resolved_by == ALICE


async def test_the_operator_token_signs_in_one_operator(engine: Engine, start: StartInspector,
                                                        browser: type[Browser]) -> None:
    handle = await engine.start("greet-user", {"name": "Ada"})
    await handle.result(timeout=10)
    running = await start(InspectorConfig(port=0, token="s3cret-operator"))
    client = browser(running.url)
    status, _ = await client.get("/runs", allow_redirects=False)
    assert status == 302
    token = await client.csrf("/login")
    status, _, location = await client.post("/login", {"csrf": token, "token": "wrong", "next": "/runs"})
    assert status == 303 and location is not None and location.startswith("/login?next=")
    assert "That token is not right." in (await client.get(location))[1]
    status, _, location = await client.post("/login", {"csrf": token, "token": "s3cret-operator", "next": "/workflows"})
    assert status == 303 and location == "/workflows"
    status, page = await client.get("/runs")
    assert status == 200 and handle.run_id in page


async def test_serve_with_the_ui_serves_it_on_its_own_loopback_port(tmp_path: Path, emulator: SlackEmulator) -> None:
    env = {**os.environ, "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
           "SLACK_BOT_TOKEN": "xoxb-inspector-test", "SLACK_SIGNING_SECRET": "test-signing-secret",
           "SLACK_API_URL": emulator.api_url, "THREADFLOW_UI": "true", "THREADFLOW_UI_PORT": "0",
           "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1", "--port", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        found = None
        while found is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "serve ended before printing the inspector's address"
            found = re.search(r"threadflow inspector: open (http://127\.0\.0\.1:\d+/)runs", line)
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(found.group(1) + "workflows") as resp:
            assert resp.status == 200 and "deploy-app" in await resp.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_the_manifest_lists_the_sign_in_redirect_and_membership_scopes() -> None:
    from bot.commands_server import manifest
    from bot.settings import Settings

    made = manifest(Settings(_env_file=None, THREADFLOW_UI_URL="https://runs.example.com/"), None)  # type: ignore[call-arg]
    assert made["oauth_config"]["redirect_urls"] == ["https://runs.example.com/auth/slack/callback"]
    assert {"channels:read", "groups:read"} <= set(made["oauth_config"]["scopes"]["bot"])


@pytest.mark.parametrize("next_", ["/\t/evil.example/x", "//evil.example", "/\\evil.example", "https://evil.example",
                                   "/\n/evil.example", " /evil"])
async def test_signing_in_never_redirects_off_site(engine: Engine, start: StartInspector, browser: type[Browser],
                                                   next_: str) -> None:
    running = await start(InspectorConfig(port=0, token="s3cret-operator"))
    client = browser(running.url)
    token = await client.csrf("/login")
    status, _, location = await client.post("/login", {"csrf": token, "token": "s3cret-operator", "next": next_})
    assert status == 303 and location == "/runs"


async def test_approvers_come_from_the_runs_own_version_not_a_newer_one(
    engine: Engine, emulator: SlackEmulator, start: StartInspector, browser: type[Browser],
) -> None:
    from pydantic import BaseModel

    from workflows import Workflow, step

    class Decision(BaseModel):
        approved: bool

    def gated(version: str, approver: str) -> Any:
        @step(id="gate", resume=Decision, approvers=[approver])
        async def gate(ctx: Any) -> dict[str, Any]:
            decision = await ctx.suspend({"question": "ship it?"})
            return {"approved": decision.approved}

        return Workflow(id="gated", version=version).then(gate).commit()

    engine.register(gated("1", ALICE))
    run_id = await slack_run(engine, "gated", {}, channel=GENERAL, user=ALICE)
    engine.register(gated("2", BOB))  # a deploy names other approvers; the waiting run keeps its own
    running = await start(slack_config(emulator))
    bob = browser(running.url)
    await bob.sign_in_with_slack(emulator, BOB)
    token = await bob.csrf(f"/runs/{run_id}")
    status, _, _ = await bob.post(f"/runs/{run_id}/resume", {"csrf": token, "path": "gate", "decision": "approve"})
    assert status == 403
    assert (await engine.get_run(run_id)).status == "suspended"


async def test_changing_the_operator_token_signs_out_its_sessions(engine: Engine, start: StartInspector,
                                                                  browser: type[Browser]) -> None:
    secret = b"s" * 32  # THREADFLOW_UI_SECRET: sessions outlive a restart
    first = await start(InspectorConfig(port=0, token="old-operator-token", secret=secret))
    client = browser(first.url)
    token = await client.csrf("/login")
    status, _, _ = await client.post("/login", {"csrf": token, "token": "old-operator-token", "next": "/runs"})
    assert status == 303 and (await client.get("/runs", allow_redirects=False))[0] == 200
    # The operator rotates the token (a leak, a colleague leaving): the same cookie no longer signs anyone in.
    second = await start(InspectorConfig(port=0, token="new-operator-token", secret=secret))
    again = Browser(client.http, second.url)
    status, _ = await again.get("/runs", allow_redirects=False)
    assert status == 302


async def test_raw_resume_data_records_who_is_signed_in_not_who_the_json_names(
    engine: Engine, start: StartInspector, browser: type[Browser],
) -> None:
    handle = await engine.start("approval", {"request": "ship it"})
    await handle.result(timeout=10)
    client = browser((await start(InspectorConfig(port=0))).url)
    token = await client.csrf(f"/runs/{handle.run_id}")
    status, _, _ = await client.post(f"/runs/{handle.run_id}/resume",
                                     {"csrf": token, "path": "approve", "data": '{"approved": true, "by": "U0SOMEONE"}'})
    assert status == 303
    await engine.wait_for(handle.run_id, timeout=10)
    [resumed] = [e for e in (await engine.details(handle.run_id)).events if e.type == "run.resumed"]
    assert resumed.data["data"]["by"] == "operator"


async def test_the_runs_page_feed_says_nothing_about_runs_a_person_may_not_see(
    engine: Engine, emulator: SlackEmulator, start: StartInspector, browser: type[Browser],
) -> None:
    running = await start(slack_config(emulator))
    bob = browser(running.url)
    await bob.sign_in_with_slack(emulator, BOB)
    async with bob.http.get(bob.url("/runs/live")) as feed:
        assert feed.status == 200

        async def next_change() -> bytes:
            while True:
                line = await feed.content.readline()
                if line.startswith(b"event: changed"):
                    return line

        await slack_run(engine, "greet-user", {"name": "Secret"}, channel=SECRET, user=ALICE)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(next_change(), 1.5)  # a run in a channel bob is not in: silence
        await slack_run(engine, "greet-user", {"name": "Open"}, channel=GENERAL, user=ALICE)
        assert await asyncio.wait_for(next_change(), 5)


async def test_an_address_with_a_nul_character_is_a_bad_request_not_a_server_error(db_url: str) -> None:
    # A hand-edited or hostile URL: PostgreSQL's text holds no NUL, so looking it up was a 500 there.
    engine = Engine.from_url(db_url)
    await engine.open()
    running = await start_inspector(engine, InspectorConfig(port=0))
    try:
        async with aiohttp.ClientSession() as http:
            answers = {}
            for query in ("/runs?q=ab%00cd", "/runs?before=1.0~ab%00", "/runs?workflow=de%00ploy", "/runs/ab%00cd"):
                async with http.get(running.url.rstrip("/") + query) as resp:
                    answers[query] = (resp.status, await resp.text())
            async with http.get(running.url.rstrip("/") + "/runs?q=abc") as resp:
                assert resp.status == 200
    finally:
        await running.stop()
        await engine.close()
    assert {status for status, _ in answers.values()} == {400}, answers
    assert all("NUL" in text for _, text in answers.values())
