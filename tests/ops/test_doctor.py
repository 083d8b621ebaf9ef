"""``threadflow doctor`` against the Slack emulator and the fake OpenAI server, with good and bad settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import text

from bot.commands_server import manifest
from bot.doctor import check_slack, mask
from bot.emulator import SlackEmulator
from bot.settings import Settings
from storage import Database
from tests.fakes import DUMMY_KEY, FakeOpenAI
from tests.helpers.processes import run_cli
from tests.ops.conftest import SIGNING_SECRET, TOKEN, cli_env


async def doctor(tmp_path: Path, **env: str) -> tuple[int, str, str]:
    """``threadflow doctor`` as a subprocess; this event loop keeps serving the fakes meanwhile."""
    return await run_cli(tmp_path, ("doctor",), cli_env(tmp_path, **env))


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(profile="openai") as fake:
        yield fake


@pytest.fixture
async def migrated(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'doctor.db'}"
    db = Database(url)
    await db.open()
    await db.close()
    return url


def good_env(emu: SlackEmulator, fake: FakeOpenAI, database_url: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_API_URL": emu.api_url,
        "THREADFLOW_DATABASE_URL": database_url, "THREADFLOW_PUBLIC_URL": "https://bot.example.com",
        "OPENAI_API_KEY": DUMMY_KEY, "OPENAI_BASE_URL": fake.base_url, "THREADFLOW_MODEL": "openai:gpt-4o-mini",
    }


def assert_no_secret(output: str) -> None:
    for secret in (TOKEN, SIGNING_SECRET, DUMMY_KEY):
        assert secret not in output


async def test_a_healthy_setup_passes(tmp_path: Path, emu: SlackEmulator, fake_openai: FakeOpenAI, migrated: str) -> None:
    code, out, err = await doctor(tmp_path, **good_env(emu, fake_openai, migrated))
    assert code == 0, out + err
    assert out.strip().endswith("No problems found.") and "[FAIL]" not in out
    assert "[ ok ] SLACK_BOT_TOKEN: set (xoxb-…leak)." in out
    assert "[ ok ] Slack token: xoxb-…leak works: bot @threadflow" in out
    assert "is reachable and migrated (revision" in out
    # The emulator sends no x-oauth-scopes header: that is said, and is not a failure.
    assert "[warn] Slack scopes: could not be checked" in out
    assert "[ ok ] Model: openai:gpt-4o-mini at http://127.0.0.1" in out and "answered" in out
    # The built-in agents use plain chat, structured output and (the thread chat) streaming: one probe each.
    assert "[ ok ] Model structured output: json_schema works." in out
    assert "[ ok ] Model streaming: streaming works" in out and "usage reported" in out
    assert "Model tools" not in out  # no registered agent has tools
    assert len(fake_openai.chat_requests) == 3 and [c.method for c in emu.calls()] == ["auth.test"]
    assert [bool(r.get("stream")) for r in fake_openai.chat_requests] == [False, False, True]
    assert fake_openai.chat_requests[1]["response_format"]["type"] == "json_schema"
    assert_no_secret(out + err)


async def test_a_broken_setup_says_what_is_wrong_and_exits_1(tmp_path: Path, emu: SlackEmulator,
                                                             fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_error(401, f"Incorrect API key provided: {DUMMY_KEY}.")
    env = good_env(emu, fake_openai, f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}")
    env.update(SLACK_BOT_TOKEN="xoxb-wrong-0000-abcd", SLACK_SIGNING_SECRET="", THREADFLOW_WORKFLOWS="no_such_module")
    code, out, err = await doctor(tmp_path, **env)
    assert code == 1, out + err
    fails = [line for line in out.splitlines() if line.startswith("[FAIL]")]
    assert len(fails) == 5 and out.strip().endswith("5 problems found.")
    assert "[FAIL] SLACK_SIGNING_SECRET: not set." in out
    assert "[FAIL] THREADFLOW_WORKFLOWS: Could not import workflow module 'no_such_module'" in out
    assert f"the file {tmp_path / 'missing.db'} does not exist yet. Run `threadflow migrate`" in out
    assert "Slack rejected SLACK_BOT_TOKEN (xoxb-…abcd): invalid_auth." in out
    assert "[FAIL] Model: openai:gpt-4o-mini is not reachable:" in out and "HTTP 401" in out
    assert "Check OPENAI_API_KEY" in out
    assert not (tmp_path / "missing.db").exists()  # doctor only looks
    assert_no_secret(out + err)
    assert "xoxb-wrong-0000-abcd" not in out


async def test_an_old_schema_and_an_unreachable_slack(tmp_path: Path, migrated: str) -> None:
    db = Database(migrated)
    await db.open()
    await db.run_in_transaction(lambda conn: conn.execute(text("UPDATE alembic_version SET version_num = '0001'")))
    await db.close()
    code, out, _ = await doctor(tmp_path, SLACK_BOT_TOKEN=TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                                SLACK_API_URL="http://127.0.0.1:9/api/", THREADFLOW_DATABASE_URL=migrated)
    assert code == 1
    assert "is at schema revision 0001, this version needs" in out and "Run `threadflow migrate`" in out
    assert "[FAIL] Slack token: could not reach Slack at http://127.0.0.1:9/api/" in out
    assert "[ ok ] Model: no OPENAI_API_KEY: agents use the offline model" in out
    assert_no_secret(out)


async def test_a_malformed_setting_is_named(tmp_path: Path) -> None:
    code, out, err = await doctor(tmp_path, THREADFLOW_PORT="eighty")
    assert code == 2 and "Setting THREADFLOW_PORT is invalid" in err
    code, _, err = await doctor(tmp_path, THREADFLOW_TIMEZONE="Mars/Olympus")
    assert code == 2 and "THREADFLOW_TIMEZONE" in err and "'Mars/Olympus' is not a known time zone" in err


async def test_a_misspelt_log_level_or_format_is_a_failed_line(tmp_path: Path, migrated: str) -> None:
    """Read by serve, worker, dev and ui only (which refuse to start over them), not when settings load: doctor
    said nothing of a THREADFLOW_LOG_LEVEL that made serve and worker die at start."""
    code, out, _ = await doctor(tmp_path, THREADFLOW_DATABASE_URL=migrated, THREADFLOW_LOG_LEVEL="verbose",
                                THREADFLOW_LOG_FORMAT="yaml")
    assert code == 1
    failed = "\n".join(line for line in out.splitlines() if line.startswith("[FAIL]"))
    assert "THREADFLOW_LOG_LEVEL: 'verbose' is not a log level; use DEBUG, INFO, WARNING or ERROR." in failed, out
    assert "THREADFLOW_LOG_FORMAT: 'yaml' is not a log format; use text (the default) or json." in failed


@pytest.mark.parametrize(("source", "error"), [
    ("x = (\n", "SyntaxError: '(' was never closed (myflows.py, line 1)"),
    ("import os\nraise RuntimeError('settings missing: API_KEY')\n",
     "RuntimeError: settings missing: API_KEY (at {dir}/myflows.py, line 2)"),
], ids=["syntax-error", "raises-at-import"])
async def test_a_workflow_module_that_fails_to_import_is_a_failed_line_not_a_crash(
        tmp_path: Path, migrated: str, source: str, error: str) -> None:
    """Only an ImportError was turned into a clear failure: a module with a SyntaxError, or one raising at import,
    made doctor die with a traceback before printing any check, and every other command too."""
    (tmp_path / "myflows.py").write_text(source)
    code, out, err = await doctor(tmp_path, THREADFLOW_DATABASE_URL=migrated, THREADFLOW_WORKFLOWS="myflows")
    assert code == 1 and "Traceback" not in err, err[-300:]
    [line] = [line for line in out.splitlines() if line.startswith("[FAIL] THREADFLOW_WORKFLOWS")]
    assert f"Workflow module 'myflows' (from THREADFLOW_WORKFLOWS) failed to import: {error.format(dir=tmp_path)}. " \
           "Fix the module, or take it out of THREADFLOW_WORKFLOWS." in line, line
    assert "[ ok ] Database" in out  # the other checks still ran

    code, out, err = await run_cli(tmp_path, ("workflows",), cli_env(tmp_path, THREADFLOW_WORKFLOWS="myflows"))
    assert (code, out) == (2, "") and err.startswith("error: Workflow module 'myflows'"), (code, err[-300:])


async def test_malformed_model_and_sqlite_tuning_are_each_a_failed_line(tmp_path: Path, migrated: str) -> None:
    """Read where they are used, not by Settings: unchecked, every agent call failed with "could not convert
    string to float" and doctor said nothing."""
    code, out, _ = await doctor(tmp_path, THREADFLOW_DATABASE_URL=migrated, THREADFLOW_MODEL_TIMEOUT="60s",
                                THREADFLOW_MODEL_MAX_ATTEMPTS="four", THREADFLOW_SQLITE_BUSY_TIMEOUT_MS="30s",
                                THREADFLOW_SQLITE_SYNCHRONOUS="FUL")
    assert code == 1
    failed = "\n".join(line for line in out.splitlines() if line.startswith("[FAIL]"))
    assert "THREADFLOW_MODEL_TIMEOUT: must be a number of seconds above 0, like 60; got '60s'." in failed, out
    assert "THREADFLOW_MODEL_MAX_ATTEMPTS: must be a whole number of tries, 1 or more, like 4; got 'four'." in failed
    assert "THREADFLOW_SQLITE_BUSY_TIMEOUT_MS: must be a whole number of milliseconds" in failed
    assert "THREADFLOW_SQLITE_SYNCHRONOUS: must be one of OFF, NORMAL, FULL, EXTRA; got 'FUL'." in failed


# -- scopes, from the x-oauth-scopes header a real Slack sends ------------------------------------------


async def slack_with_scopes(scopes: str) -> web.AppRunner:
    async def auth_test(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        return web.json_response({"ok": True, "user": "threadflow", "team": "Acme", "team_id": "T1"},
                                 headers={"x-oauth-scopes": scopes})

    app = web.Application()
    app.router.add_post("/api/auth.test", auth_test)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def settings_for(runner: web.AppRunner) -> Settings:
    host, port = runner.addresses[0][:2]
    return Settings(_env_file=None, SLACK_BOT_TOKEN=TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                    SLACK_API_URL=f"http://{host}:{port}/api/")


@pytest.mark.parametrize(("granted", "status", "expected"), [
    ("chat:write,commands", "fail", "the token lacks chat:write.public, app_mentions:read, channels:history"),
    (None, "ok", "scopes the manifest asks for are granted"),
])
async def test_scopes_are_compared_with_the_manifest(granted: str | None, status: str, expected: str) -> None:
    wanted = manifest(Settings(_env_file=None), None)["oauth_config"]["scopes"]["bot"]
    runner = await slack_with_scopes(granted if granted is not None else ",".join([*wanted, "files:write"]))
    try:
        token_check, scope_check = await check_slack(settings_for(runner))
    finally:
        await runner.cleanup()
    assert token_check.status == "ok" and "bot @threadflow in Acme (T1)" in token_check.detail
    assert scope_check.status == status and expected in scope_check.detail


@pytest.mark.parametrize(("secret", "shown"), [
    ("xoxb-1234-5678-abcdefgh", "xoxb-…efgh"), ("xapp-1-A111-222-zzzz", "xapp-…zzzz"), ("short", "…"),
    ("plainsecretvalue1234", "…1234"), (None, "(empty)"),
])
def test_mask_shows_the_kind_and_last_four_only(secret: Any, shown: str) -> None:
    assert mask(secret) == shown


# -- the model server's capabilities --------------------------------------------------------------------

TOOL_FLOWS = """
from pydantic import BaseModel
from workflows import Agent, Workflow, agent_step, tool

class Host(BaseModel):
    host: str

@tool
async def ping(args: Host) -> str:
    \"\"\"Ping a host.\"\"\"
    return "pong"

checker = Agent("checker", "Check hosts.", tools=[ping])
checks = Workflow(id="check-host", input=Host).then(agent_step(checker, input=Host, prompt="ping {host}")).commit()
"""


async def model_doctor(tmp_path: Path, fake: FakeOpenAI, database_url: str, **env: str) -> str:
    """The model lines of ``threadflow doctor`` (Slack is not configured here, so its exit status says nothing)."""
    (tmp_path / "tool_flows.py").write_text(TOOL_FLOWS)
    code, out, err = await doctor(tmp_path, THREADFLOW_DATABASE_URL=database_url, OPENAI_API_KEY=DUMMY_KEY,
                                  OPENAI_BASE_URL=fake.base_url, THREADFLOW_WORKFLOWS="tool_flows", **env)
    assert_no_secret(out + err)
    return "\n".join(line for line in out.splitlines() if " Model" in line)


async def test_doctor_says_what_falls_back_and_names_the_flag_a_server_needs_for_tools(
        tmp_path: Path, migrated: str) -> None:
    async with FakeOpenAI(profile="llamacpp", tools=False) as fake:  # an older llama-server without --jinja
        out = await model_doctor(tmp_path, fake, migrated)
    assert "[ ok ] Model: openai:gpt-4o-mini" in out and "(profile openai)" in out
    assert ("[warn] Model structured output: the server refused json_schema; agents will use json_object with the "
            "schema in the instructions.") in out
    assert "[FAIL] Model tools: The model server at http://127.0.0.1" in out
    assert "tools param requires --jinja flag" in out and "Start llama-server with --jinja" in out
    assert "[ ok ] Model streaming: streaming works" in out
    # One probe per capability: chat 1, structured 2 (json_schema refused, then json_object), tools 1, streaming 1.
    assert len(fake.chat_requests) == 5


async def test_doctor_on_a_minimal_server_with_the_vllm_flag_missing(tmp_path: Path, migrated: str) -> None:
    async with FakeOpenAI(profile="vllm", tools=False) as fake:
        out = await model_doctor(tmp_path, fake, migrated, THREADFLOW_MODEL_PROFILE="vllm")
    assert "(profile vllm)" in out and "[ ok ] Model structured output: json_schema works." in out
    assert "--enable-auto-tool-choice and --tool-call-parser to be set" in out
    assert "Start vLLM with --enable-auto-tool-choice and a --tool-call-parser" in out
    async with FakeOpenAI(profile="generic") as fake:
        out = await model_doctor(tmp_path, fake, migrated)
    assert "[FAIL]" not in out
    assert ("[warn] Model structured output: the server refused json_schema, json_object; agents will use plain "
            "text with the schema in the instructions, the JSON taken from the answer.") in out
    assert "[ ok ] Model tools: tools work" in out
    assert "[warn] Model streaming: streaming works" in out and "takes no stream_options" in out
