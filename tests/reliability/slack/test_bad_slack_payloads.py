"""Random and mutated ``block_actions`` payloads, correctly signed: the bot answers 200 or a 4xx (never a 5xx),
changes no run, and tells the clicker why nothing happened when it can.

The payloads start from a real click on a real approval message and are then broken: bad JSON in the button
value, missing keys, unknown run ids, another run's step, someone not allowed, missing or mistyped top-level
fields. A payload that validly decides a run is never generated (those are the approval tests' business).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.emulator.delivery import action_payload, find_action
from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    RunningBot,
    SuspendedRun,
    suspend_approval,
)
from tests.reliability.slack.flows import sign_off_flow

ACTIONS = ["approve", "reject", "reject_with_reason"]
#: Top-level fields a payload may lack, and fields whose value may be of any type, without bolt failing to
#: parse the request: what bolt itself chokes on is test_payloads_bolt_cannot_parse_are_refused_with_a_4xx.
DROPPABLE = ["user", "channel", "container", "message", "actions", "team", "trigger_id", "response_url", "type",
             "api_app_id", "token", "state"]
RETYPABLE = ["container", "message", "trigger_id", "response_url", "type", "api_app_id", "token", "state"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutations(draw: st.DrawFn) -> dict[str, Any]:
    """A description of what to break; ``build`` turns it into a payload once the runs exist."""
    run = draw(st.sampled_from(["A", "B", "unknown", "missing"]) | json_values)
    step = draw(st.sampled_from(["approve", "sign-off", "missing", "approve/x"]) | json_values)
    value_kind = draw(st.sampled_from(["object", "object", "not-json", "json-scalar", "empty", "no-value"]))
    return {
        "run": run, "step": step, "value_kind": value_kind,
        "scalar": draw(json_values), "text": draw(st.text(max_size=20)),
        "clicker": draw(st.sampled_from([ALICE, BOB, "U0NOBODY"])),
        "action_id": draw(st.sampled_from([*ACTIONS, *ACTIONS, "unknown_action"])),
        "drop": draw(st.lists(st.sampled_from(DROPPABLE), max_size=3, unique=True)),
        "retype": draw(st.dictionaries(st.sampled_from(RETYPABLE), json_values, max_size=2)),
    }


def may_decide(m: dict[str, Any]) -> bool:
    """Could this click really decide a run (or open the modal to)? Alice started both; each run waits at its own
    step. (Whether run B's button value may decide B from run A's message is test_request_security's business.)"""
    value_ok = m["value_kind"] == "object" and (m["run"], m["step"]) in (("A", "approve"), ("B", "sign-off"))
    return value_ok and m["clicker"] == ALICE and m["action_id"] in ACTIONS


def build(bot: RunningBot, runs: dict[str, SuspendedRun], m: dict[str, Any]) -> dict[str, Any]:
    emu = bot.emu
    msg = emu.message(runs["A"].approval.ts)
    assert msg is not None
    block_id, element = find_action(msg.blocks, "approve")
    value: dict[str, Any] = {}
    if m["run"] != "missing":
        value["run_id"] = runs[m["run"]].run_id if m["run"] in ("A", "B") else (
            "0123456789abcdef" if m["run"] == "unknown" else m["run"])
    if m["step"] != "missing":
        value["step"] = m["step"]
    raw = {"object": json.dumps(value), "not-json": m["text"] + "{", "json-scalar": json.dumps(m["scalar"]),
           "empty": "", "no-value": None}[m["value_kind"]]
    element = {**element, "action_id": m["action_id"], "value": raw}
    action = action_payload(block_id, element, raw, emu.state.next_ts())
    if raw is None:
        action.pop("value", None)
    ru = emu.state.issue_response_url("block_actions", m["clicker"], CHANNEL, message_ts=msg.ts,
                                      thread_ts=msg.thread_ts, is_ephemeral=False)
    user = m["clicker"] if m["clicker"] in emu.state.users else ALICE
    payload = emu.delivery.block_actions_payload(
        user=user, channel=CHANNEL, message=msg.to_api(), message_ts=msg.ts, is_ephemeral=False, actions=[action],
        response_url=emu.delivery.response_url_base + ru.id, trigger_id=emu.state.issue_trigger(user))
    payload["user"]["id"] = m["clicker"]
    for key in m["drop"]:
        payload.pop(key, None)
    payload.update(copy.deepcopy(m["retype"]))
    return payload


def can_be_told(m: dict[str, Any], payload: dict[str, Any]) -> bool:
    """The bot knows who clicked where, and the click was one of its buttons: it should say why it did nothing."""
    intact = all(k in payload for k in ("user", "channel", "actions", "type"))
    intact = intact and not {"type", "container", "message"} & set(m["retype"])
    return intact and m["clicker"] in (ALICE, BOB) and m["action_id"] in ACTIONS and not opens_modal_today(m)


def opens_modal_today(m: dict[str, Any]) -> bool:
    """"Reject with reason" from someone allowed on an existing run opens the modal whatever the step: see
    test_reject_with_reason_for_a_step_that_does_not_wait_opens_no_modal."""
    known_run = m["value_kind"] == "object" and m["run"] in ("A", "B") and m["step"] != "missing"
    return m["action_id"] == "reject_with_reason" and m["clicker"] == ALICE and known_run and "user" not in m["drop"]


async def state_of(bot: RunningBot, runs: dict[str, SuspendedRun]) -> list[Any]:
    out = []
    for run in runs.values():
        details = await bot.engine.details(run.run_id)
        out.append((details.run.status, [(ev.id, ev.type) for ev in details.events],
                    [(s.status, s.resolved_by) for s in details.suspensions]))
    return out


@pytest.fixture
async def two_runs(bot: RunningBot) -> dict[str, SuspendedRun]:
    bot.engine.register(sign_off_flow)
    a = await suspend_approval(bot, "run approval ship it")
    b = await suspend_approval(bot, "run sign-off-flow sign it")
    return {"A": a, "B": b}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=mutations().filter(lambda m: not may_decide(m)))
@example(m={"run": "A", "step": "sign-off", "value_kind": "object", "scalar": None, "text": "", "clicker": ALICE,
            "action_id": "approve", "drop": [], "retype": {}})
@example(m={"run": "unknown", "step": "approve", "value_kind": "object", "scalar": None, "text": "",
            "clicker": ALICE, "action_id": "reject", "drop": [], "retype": {}})
@example(m={"run": "A", "step": "approve", "value_kind": "not-json", "scalar": None, "text": "",
            "clicker": ALICE, "action_id": "approve", "drop": [], "retype": {}})
@example(m={"run": "A", "step": "approve", "value_kind": "object", "scalar": None, "text": "",
            "clicker": BOB, "action_id": "reject_with_reason", "drop": [], "retype": {}})
async def test_broken_button_clicks_are_acked_or_refused_and_change_no_run(
    bot: RunningBot, two_runs: dict[str, SuspendedRun], m: dict[str, Any]
) -> None:
    emu = bot.emu
    before = await state_of(bot, two_runs)
    told_before = len(emu.ephemerals(m["clicker"]))
    views_before = len(emu.calls("views.open"))
    payload = build(bot, two_runs, m)

    answer = await emu.delivery.send_form("block_actions", {"payload": json.dumps(payload)}, payload)
    await bot.idle()

    assert answer.status == 200 or 400 <= answer.status < 500, (answer.status, answer.body[:200], m)
    assert await state_of(bot, two_runs) == before
    if not opens_modal_today(m):
        assert len(emu.calls("views.open")) == views_before  # no modal for a click that cannot decide
    if can_be_told(m, payload):
        told = emu.ephemerals(m["clicker"])[told_before:]
        assert len(told) == 1, m
        assert told[0].text.startswith((":warning:", ":no_entry:", ":information_source:")), told[0].text


def _valid_click(bot: RunningBot, run: SuspendedRun) -> dict[str, Any]:
    emu = bot.emu
    msg = emu.message(run.approval.ts)
    assert msg is not None
    block_id, element = find_action(msg.blocks, "approve")
    value = json.dumps({"run_id": run.run_id, "step": "approve"})
    action = action_payload(block_id, {**element, "value": value}, None, emu.state.next_ts())
    return emu.delivery.block_actions_payload(
        user=ALICE, channel=CHANNEL, message=msg.to_api(), message_ts=msg.ts, is_ephemeral=False, actions=[action],
        response_url=emu.delivery.response_url_base + "R-none", trigger_id=emu.state.issue_trigger(ALICE))


def _broken(payload: dict[str, Any], how: str) -> str:
    if how == "not-json":
        return "{" + json.dumps(payload)
    if how == "user-not-an-object":
        payload["user"] = False
    elif how == "no-actions":
        payload["actions"] = []
    elif how == "action-without-id":
        del payload["actions"][0]["action_id"]
    elif how == "enterprise-not-an-object":
        payload["enterprise"] = 1
    return json.dumps(payload)


@pytest.mark.parametrize("how", ["not-json", "user-not-an-object", "no-actions", "action-without-id",
                                 "enterprise-not-an-object"])
async def test_payloads_bolt_cannot_parse_are_refused_with_a_4xx(bot: RunningBot, how: str) -> None:
    run = await suspend_approval(bot)
    raw = _broken(_valid_click(bot, run), how)  # Alice's own approve click, then broken

    answer = await bot.emu.delivery.send_form("block_actions", {"payload": raw}, {})
    await bot.idle()

    assert (await bot.engine.get_run(run.run_id)).status == "suspended"  # holds today already
    assert 400 <= answer.status < 500, answer.status


@pytest.mark.parametrize("case", ["already-decided", "another-runs-step"])
async def test_reject_with_reason_for_a_step_that_does_not_wait_opens_no_modal(
    bot: RunningBot, two_runs: dict[str, SuspendedRun], case: str
) -> None:
    emu, run = bot.emu, two_runs["A"]
    stale = run.approval.to_api()  # Alice's screen before her decision lands
    value = None
    if case == "already-decided":
        await emu.click(run.approval, "approve", user=ALICE)
        assert await bot.settled(run.run_id) == "success"
    else:
        value = json.dumps({"run_id": run.run_id, "step": "sign-off"})  # run A, run B's step path
    await bot.idle()

    await emu.click(stale, "reject_with_reason", user=ALICE, value=value)
    await bot.idle()

    assert emu.calls("views.open") == []
    told = await emu.wait_for(lambda: emu.ephemerals(ALICE), timeout=5)
    assert told[0].text.startswith((":information_source:", ":warning:"))
