"""The ``threadflow`` command, run as a real subprocess against a SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADFLOW_", "SLACK_", "OPENAI_"))}
    env.update({
        "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        "THREADFLOW_WORKSPACE": str(tmp_path / "workspace"),
        "THREADFLOW_WORKFLOWS": "tests.helpers.custom_flows",
        "PYTHONPATH": str(ROOT),
    })

    def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    return run


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


def test_workflows_lists_builtins_and_configured_modules_with_their_input(cli: Any) -> None:
    out = cli("workflows").stdout
    for wf in ("greet-user", "approval", "deploy-app", "chat-flow", "adder"):
        assert wf in out
    assert "input.name: string (required)" in out
    listed = {w["id"]: w for w in as_json(cli("workflows", "--json"))}
    assert listed["adder"]["input_schema"]["required"] == ["a", "b"]


def test_run_prints_the_result_as_json(cli: Any) -> None:
    result = as_json(cli("run", "greet-user", "--input", '{"name": "Ada"}'))
    assert result["status"] == "success"
    assert result["output"] == {"greeting": "Hello, Ada!"}
    assert as_json(cli("run", "adder", "--input", '{"a": 2, "b": 3}'))["output"] == {"total": 10}


def test_suspend_resume_show_and_double_resume(cli: Any) -> None:
    waiting = as_json(cli("run", "approval", "--input", '{"request": "ship it"}'))
    assert waiting["status"] == "suspended"
    [suspended] = waiting["suspended"]
    assert suspended["step_id"] == "approve" and suspended["payload"]["details"] == "ship it"
    run_id = waiting["run_id"]

    assert run_id in cli("runs", "--status", "suspended").stdout
    bad = cli("resume", run_id, "--data", '{"approved": "maybe"}', expect=2)
    assert bad.stderr.startswith("error: Invalid resume data for step 'approve'") and "approved" in bad.stderr
    assert as_json(cli("show", run_id, "--json"))["run"]["status"] == "suspended"

    done = as_json(cli("resume", run_id, "--data", '{"approved": true}', "--by", "ada"))
    assert done["status"] == "success" and done["output"] == {"ok": True}
    again = cli("resume", run_id, "--data", '{"approved": true}', "--by", "bob", "--step", "approve", expect=2)
    assert "already resumed by ada" in again.stderr

    shown = cli("show", run_id).stdout
    assert "status=success" in shown
    assert "approve" in shown and "resolved by ada" in shown
    assert "run.resumed" in shown and "run.finished" in shown


def test_a_rejection_fails_the_run_with_exit_status_1(cli: Any) -> None:
    run_id = as_json(cli("run", "approval"))["run_id"]
    failed = as_json(cli("resume", run_id, "--data", '{"approved": false, "reason": "not today"}', "--by", "bob",
                         expect=1))
    assert failed["status"] == "failed"
    assert failed["error"].endswith("Rejected by bob: not today.")


def test_cancel_is_final(cli: Any) -> None:
    run_id = as_json(cli("run", "approval"))["run_id"]
    assert as_json(cli("cancel", run_id))["status"] == "canceled"
    assert "canceled" in cli("cancel", run_id, expect=2).stderr
    assert "only a suspended run can be resumed" in cli("resume", run_id, "--data", '{"approved": true}', expect=2).stderr
    assert as_json(cli("show", run_id, "--json"))["run"]["status"] == "canceled"


def test_rerun_from_a_step_reuses_earlier_results(cli: Any) -> None:
    first = as_json(cli("run", "adder", "--input", '{"a": 1, "b": 1}'))
    again = as_json(cli("rerun", first["run_id"], "--from", "double", "--input", '{"total": 50}'))
    assert again["status"] == "success" and again["output"] == {"total": 100}
    details = as_json(cli("show", again["run_id"], "--json"))
    assert details["run"]["rerun_of"] == first["run_id"]
    started = [e["path"] for e in details["events"] if e["type"] == "step.started"]
    assert started == ["double"], "the add step was reused, not executed again"


def test_send_event_resumes_a_waiting_run(cli: Any) -> None:
    waiting = as_json(cli("run", "waiter", "--input", '{"a": 1, "b": 2}'))
    assert waiting["status"] == "waiting"
    refused = cli("send-event", waiting["run_id"], "ping", "--data", "false", expect=2)  # data, not "no data"
    assert "data of event 'ping'" in refused.stderr and "valid dictionary" in refused.stderr
    assert as_json(cli("send-event", waiting["run_id"], "ping", "--data", '{"pong": "yes"}'))["delivery"] == "delivered"
    assert "bad" not in cli("show", waiting["run_id"]).stdout


def test_show_context_prints_what_each_agent_knew(cli: Any) -> None:
    run = as_json(cli("run", "deploy-app", "--input", '{"request": "a blog for 100 users", "cost_threshold": 9999}'))
    assert run["status"] == "success"
    out = cli("show", run["run_id"], "--context").stdout
    assert "Agent contexts (what each agent knew)" in out
    assert "step plan  agent planner" in out and "step deploy  agent deployer" in out
    assert "Requirements for 'a blog for 100 users'" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "nope"), "Workflow 'nope' is not registered. Known workflows:"),
        (("run", "greet-user", "--input", "{bad"), "--input is not valid JSON"),
        (("run", "greet-user", "--input", '{"nam": 1}'), "field 'name': Field required"),
        (("show", "missing"), "Run 'missing' does not exist"),
        (("resume", "missing", "--data", "{}"), "Run 'missing' does not exist"),
        (("cancel", "missing"), "Run 'missing' does not exist"),
    ],
)
def test_bad_input_prints_one_clear_line_and_exits_2(cli: Any, args: tuple[str, ...], message: str) -> None:
    proc = cli(*args, expect=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert proc.stdout == ""


def test_serve_without_a_token_names_the_missing_setting(cli: Any) -> None:
    proc = cli("serve", expect=2)
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip(),
    ] and "SLACK_BOT_TOKEN is not set" in proc.stderr


def test_manifest_names_the_command_scopes_and_urls(cli: Any) -> None:
    manifest = as_json(cli("manifest", "--url", "https://bot.example.com"))
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/flow" and command["url"] == "https://bot.example.com/slack/events"
    assert manifest["settings"]["interactivity"]["request_url"] == "https://bot.example.com/slack/events"
    assert {"commands", "chat:write", "app_mentions:read"} <= set(manifest["oauth_config"]["scopes"]["bot"])


def test_the_manifest_asks_for_exactly_the_scopes_the_bot_uses(cli: Any) -> None:
    from bot.commands_server import BOT_SCOPES

    manifest = as_json(cli("manifest", "--url", "https://bot.example.com"))
    assert manifest["oauth_config"]["scopes"]["bot"] == list(BOT_SCOPES)
    assert "users:read" not in BOT_SCOPES  # never called
    # Direct messages are answered, so the Messages tab is on and message.im is subscribed with im:history.
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True
    assert "message.im" in manifest["settings"]["event_subscriptions"]["bot_events"] and "im:history" in BOT_SCOPES
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for scope in BOT_SCOPES:
        assert f"`{scope}`" in readme, f"the README does not explain {scope}"
