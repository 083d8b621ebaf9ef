"""Random ``/flow`` text: the parser raises nothing but our usage errors, and the real bot, over HTTP, acks every
text with a 200 and either starts exactly one run or answers with an ephemeral error and starts none.

tests/bot/test_slack_commands.py checks hand-picked bad commands; here hypothesis picks them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.commands import VERBS, CommandError, parse_command, parse_run_input, split_run_args
from tests.bot.conftest import (
    ALICE,
    CHANNEL,
    RunningBot,
)
from workflows import CommittedWorkflow, WorkflowNotFound
from workflows.errors import InvalidInput, UsageError
from workflows.loading import load_workflows

WORKFLOWS = {wf.id: wf for wf in load_workflows(builtins=True, modules=[])}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
field_names = st.sampled_from(["name", "request", "cost_threshold", "x", "_", "name2", "1bad", ""]) | words


@st.composite
def run_inputs(draw: st.DrawFn) -> str:
    """What people type after ``run WORKFLOW``: JSON (valid or cut short), key=value pairs, quotes, free text."""
    kind = draw(st.sampled_from(["json", "broken-json", "pairs", "quoted", "text", "empty"]))
    if kind == "json":
        return json.dumps(draw(st.dictionaries(field_names, json_values, max_size=4)))
    if kind == "broken-json":
        text = json.dumps(draw(json_values))
        return "{" + text[: draw(st.integers(0, len(text)))]
    if kind == "pairs":
        pairs = draw(st.lists(st.tuples(field_names, words | json_values.map(json.dumps)), max_size=4))
        return " ".join(f"{k}={v}" for k, v in pairs)
    if kind == "quoted":
        quote = draw(st.sampled_from(['"', "'", "“", "”"]))
        return quote + draw(words) + draw(st.sampled_from(['"', "'", "”", ""]))
    if kind == "text":
        return draw(words)
    return ""


@st.composite
def command_texts(draw: st.DrawFn) -> str:
    verb = draw(st.sampled_from(["run"] * 6 + [*VERBS, "RUN", "Run", "launch", "", "*"]))
    if verb == "*":
        verb = draw(words)
    if verb.lower() == "run" or draw(st.booleans()):
        target = draw(st.sampled_from([*WORKFLOWS, *WORKFLOWS, "deploy-ap", "", "*"]))
        target = draw(words) if target == "*" else target
        rest = draw(run_inputs())
    else:
        target, rest = draw(words), draw(st.sampled_from(["", " ", "x y z"]) | words)
    spaces = draw(st.sampled_from([" "] * 6 + ["  ", "\t", " \u00a0"]))
    return f"{verb}{spaces}{target} {rest}"


any_text = command_texts() | st.text(max_size=80)


def outcome(text: str, workflows: dict[str, CommittedWorkflow]) -> str:
    """"run" when the text starts a run; "answer" for an ephemeral answer. Raises only usage errors."""
    cmd = parse_command(text)
    if cmd.verb != "run":
        return "answer"
    workflow_id, raw = split_run_args(cmd.args)
    wf = workflows.get(workflow_id)
    if wf is None:
        raise WorkflowNotFound(workflow_id, list(workflows))
    parse_run_input(wf, raw)
    return "run"


@settings(max_examples=400, deadline=None)
@given(text=any_text)
@example(text="run approval " + "x" * 5000)
@example(text='run greet-user {"name": "\\ud800"}')  # a lone surrogate, escaped in JSON
@example(text="run greet-user name='unterminated")
@example(text="\u2003run greet-user")
def test_parsing_raises_nothing_but_usage_errors(text: str) -> None:
    try:
        result = outcome(text, WORKFLOWS)
    except (CommandError, WorkflowNotFound, InvalidInput) as exc:
        assert isinstance(exc, UsageError) and str(exc)
    else:
        assert result in ("run", "answer")


# Nested JSON past Python's recursion limit: ``json.loads`` raises RecursionError, which is not a
# JSONDecodeError. Slack allows slash command text this long (about 1 000 characters here).
DEEP = 1200
DEEP_TEXTS = [
    pytest.param(f'run greet-user {{"name": {"[" * DEEP}{"]" * DEEP}}}', id="json-input"),
    pytest.param(f"run approval x={'[' * DEEP}", id="key-value-input"),
]


@pytest.mark.parametrize("text", DEEP_TEXTS)
def test_deeply_nested_json_input_is_a_usage_error(text: str) -> None:
    with pytest.raises(InvalidInput):
        outcome(text, WORKFLOWS)


# -- over HTTP, to the real bot ----------------------------------------------------------------------


async def count_runs(bot: RunningBot) -> int:
    return len(await bot.engine.list_runs(limit=1000))


async def send(bot: RunningBot, text: str) -> tuple[Any, int, int]:
    """Send ``text``; return the ack, how many runs it started and how many ephemerals Alice got."""
    runs_before, shown_before = await count_runs(bot), len(bot.emu.ephemerals(ALICE))
    ack = await bot.command(text)
    await bot.idle()
    started = await count_runs(bot) - runs_before
    if started:  # the root message is posted just before the run starts: both happen in the bot's task
        await bot.emu.wait_for(lambda: len(bot.emu.messages(CHANNEL)) > 0, timeout=5)
    return ack, started, len(bot.emu.ephemerals(ALICE)) - shown_before


def listener_errors(logs: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_environment: None) -> Path:
    """deploy-app runs write their files here, not into the working directory."""
    monkeypatch.setenv("THREADFLOW_WORKSPACE", str(tmp_path / "workspace"))
    return tmp_path / "workspace"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(command_texts(), command_texts(), st.text(max_size=80)))
@example(text="run greet-user Ada")
@example(text='run greet-user {"name": 7}')
@example(text="run approval")
@example(text="status nope")
async def test_every_slash_command_text_is_acked_and_starts_one_run_or_none(
    bot: RunningBot, workspace: Path, logs: pytest.LogCaptureFixture, text: str
) -> None:
    try:
        expected = outcome(text, bot.engine.workflows)
    except UsageError:
        expected = "error"

    ack, started, shown = await send(bot, text)

    assert ack.status == 200, (text, ack.body)
    if expected == "run":
        assert started == 1, text
    else:
        assert started == 0, text
        assert shown >= 1, f"no answer to {text!r}"
        if expected == "error":
            assert ack.json["response_type"] == "ephemeral" and ack.json["text"].startswith(":warning:")
    assert listener_errors(logs) == []


@pytest.mark.parametrize("text", DEEP_TEXTS)
async def test_deeply_nested_json_over_http_gets_an_ephemeral_error(
    bot: RunningBot, logs: pytest.LogCaptureFixture, text: str
) -> None:
    ack, started, shown = await send(bot, text)
    assert started == 0
    assert ack.status == 200 and ack.json["text"].startswith(":warning:"), (ack.status, ack.body[:200])
    assert shown == 1 and listener_errors(logs) == []
