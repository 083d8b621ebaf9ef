"""Actions from the run page and the workflow form, through the engine's public API, over HTTP."""

from __future__ import annotations

import json

from pydantic import BaseModel

from bot.emulator import SlackEmulator
from bot.inspector import InspectorConfig
from tests.inspector.conftest import ALICE, BOB, GENERAL, Browser, StartInspector, slack_config, slack_run
from workflows import Engine, StepContext, Workflow, step


class Num(BaseModel):
    n: int


class Go(BaseModel):
    speed: int


@step(id="double", input=Num, output=Num)
async def double(ctx: StepContext[Num]) -> Num:
    return Num(n=ctx.input.n * 2)


@step(id="add-one", input=Num, output=Num)
async def add_one(ctx: StepContext[Num]) -> Num:
    return Num(n=ctx.input.n + 1)


@step(id="after-go", input=Go, output=Go)
async def after_go(ctx: StepContext[Go]) -> Go:
    return Go(speed=ctx.input.speed + 1)


math_flow = Workflow(id="math", input=Num, output=Num).then(double).then(add_one).commit()
waits = Workflow(id="waits", input=Num).wait_for_event("go", Go).then(after_go).commit()


async def test_rerun_from_a_step_with_new_input(engine: Engine, start: StartInspector, browser: type[Browser]) -> None:
    engine.register(math_flow)
    first = await (await engine.start("math", {"n": 3})).result(timeout=5)
    assert first.output == {"n": 7}
    client = browser((await start(InspectorConfig(port=0))).url)
    token = await client.csrf(f"/runs/{first.run_id}")
    status, _, location = await client.post(f"/runs/{first.run_id}/rerun",
                                            {"csrf": token, "from": "add-one", "input": '{"n": 100}'})
    assert status == 303 and location is not None and location.startswith("/runs/")
    new_id = location.rsplit("/", 1)[1]
    result = await engine.wait_for(new_id, timeout=5)
    assert result.output == {"n": 101} and (await engine.get_run(new_id)).rerun_of == first.run_id
    status, page = await client.get(location)
    assert status == 200 and f"Re-running {first.run_id} from add-one." in page  # the notice, once
    assert "Re-running" not in (await client.get(location))[1]
    status, _, location = await client.post(f"/runs/{first.run_id}/rerun", {"csrf": token, "from": "nope"})
    assert status == 303 and "Not re-run" in (await client.get(location or ""))[1]


async def test_send_an_event_the_run_waits_for(engine: Engine, start: StartInspector, browser: type[Browser]) -> None:
    engine.register(waits)
    handle = await engine.start("waits", {"n": 1})
    assert (await handle.result(timeout=5)).status == "waiting"
    client = browser((await start(InspectorConfig(port=0))).url)
    status, page = await client.get(f"/runs/{handle.run_id}")
    assert status == 200 and "waits for event <b>go</b>" in page and '<option>go</option>' in page
    token = await client.csrf(f"/runs/{handle.run_id}")
    status, body, _ = await client.post(f"/runs/{handle.run_id}/event", {"csrf": token, "name": "go", "data": "{"},
                                        headers={"X-Requested-With": "fetch"})
    assert status == 409 and "not valid JSON" in json.loads(body)["message"]
    status, body, _ = await client.post(f"/runs/{handle.run_id}/event",
                                        {"csrf": token, "name": "go", "data": '{"speed": 4}'},
                                        headers={"X-Requested-With": "fetch"})
    assert status == 200 and json.loads(body) == {"ok": True, "message": "Event go delivered.",
                                                  "location": f"/runs/{handle.run_id}"}
    assert (await engine.wait_for(handle.run_id, timeout=5)).output == {"speed": 5}


async def test_the_second_decision_is_told_who_won(engine: Engine, start: StartInspector, browser: type[Browser]) -> None:
    handle = await engine.start("approval", {"request": "ship"}, started_by=ALICE)
    await handle.result(timeout=5)
    client = browser((await start(InspectorConfig(port=0))).url)
    token = await client.csrf(f"/runs/{handle.run_id}")
    await engine.resume(handle.run_id, data={"approved": True}, by=BOB)  # a click in Slack came first
    status, body, _ = await client.post(f"/runs/{handle.run_id}/resume",
                                        {"csrf": token, "path": "approve", "decision": "reject"},
                                        headers={"X-Requested-With": "fetch"})
    reply = json.loads(body)
    assert status == 409 and reply["ok"] is False and BOB in reply["message"]
    assert (await engine.wait_for(handle.run_id, timeout=5)).status == "success"


async def test_the_workflow_form_validates_like_the_engine(engine: Engine, start: StartInspector,
                                                           browser: type[Browser]) -> None:
    client = browser((await start(InspectorConfig(port=0))).url)
    status, page = await client.get("/workflows")
    assert status == 200 and 'id="start-deploy-app"' in page and 'name="cost_threshold"' in page
    token = await client.csrf("/workflows")
    status, page, _ = await client.post("/workflows/deploy-app/start", {"csrf": token, "request": "x",
                                                                        "cost_threshold": "lots"})
    assert status == 400 and "Cost Threshold must be a number" in page and 'value="lots"' in page
    status, _, location = await client.post("/workflows/greet-user/start", {"csrf": token, "name": "Grace"})
    assert status == 303 and location is not None
    result = await engine.wait_for(location.rsplit("/", 1)[1], timeout=5)
    assert result.output == {"greeting": "Hello, Grace!"}
    assert (await engine.get_run(result.run_id)).started_by == "operator"


async def test_optional_sign_in_turns_the_operator_into_a_person(
    engine: Engine, emulator: SlackEmulator, start: StartInspector, browser: type[Browser],
) -> None:
    """The sandbox's mode: open to this machine, and signing in applies a person's rules."""
    run_id = await slack_run(engine, "approval", {"request": "ship"}, channel=GENERAL, user=ALICE)
    client = browser((await start(slack_config(emulator, sign_in_optional=True))).url)
    status, page = await client.get(f"/runs/{run_id}")
    assert status == 200 and 'value="approve"' in page and "Sign in</a>" in page  # the operator may decide
    await client.sign_in_with_slack(emulator, BOB)
    status, page = await client.get(f"/runs/{run_id}")
    assert status == 200 and "Only U0ALICE may decide this." in page
    token = await client.csrf(f"/runs/{run_id}")
    await client.post("/logout", {"csrf": token})
    assert 'value="approve"' in (await client.get(f"/runs/{run_id}"))[1]


async def test_who_may_decide_a_step_of_a_nested_workflow_follows_its_path(
    engine: Engine, emulator: SlackEmulator, start: StartInspector, browser: type[Browser],
) -> None:
    """``review/approve`` and ``release/approve`` share a step id; each is decided by its own step's approvers."""
    from tests.helpers.nested_approval_flows import RELEASER, REVIEWER, ship

    engine.register(ship)
    run_id = await slack_run(engine, "ship", {"request": "v1.2"}, channel=GENERAL, user=REVIEWER)
    await engine.resume(run_id, step="review/approve", data={"approved": True}, by=REVIEWER)
    await engine.wait_for(run_id, timeout=5)
    [waiting] = [s for s in await engine.suspensions(run_id) if s.status == "open"]
    assert waiting.path == "release/approve"
    client = browser((await start(slack_config(emulator))).url)
    await client.sign_in_with_slack(emulator, REVIEWER)

    status, page = await client.get(f"/runs/{run_id}")
    assert status == 200 and f"Only {RELEASER} may decide this." in page
    token = await client.csrf(f"/runs/{run_id}")
    status, _, _ = await client.post(f"/runs/{run_id}/resume", {"csrf": token, "path": "release/approve",
                                                              "decision": "approve"})
    assert status == 403
    assert (await engine.get_run(run_id)).status == "suspended"
