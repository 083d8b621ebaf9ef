"""A run's page shows the run's own workflow version, even when a newer one is registered beside it."""

from __future__ import annotations

from bot.inspector import InspectorConfig
from tests.helpers.versioned_flows import deploy_v1, deploy_v2
from tests.inspector.conftest import Browser, StartInspector
from workflows import Engine


async def test_the_run_page_decides_with_the_run_s_version_not_the_newest(
    engine: Engine, start: StartInspector, browser: type[Browser],
) -> None:
    engine.register(deploy_v1())
    waiting = await (await engine.start("deploy", {})).result(timeout=5)
    engine.register(deploy_v2())  # the deploy: v2 is the newest, v1 stays registered for this run
    client = browser((await start(InspectorConfig(port=0))).url)
    status, page = await client.get(f"/runs/{waiting.run_id}")
    assert status == 200
    # v1's ``gate`` takes a decision (approved: bool): Approve/Reject, not v2's idea of the run.
    assert 'value="approve"' in page and 'value="reject"' in page
    token = await client.csrf(f"/runs/{waiting.run_id}")
    status, _, _ = await client.post(f"/runs/{waiting.run_id}/resume",
                                     {"csrf": token, "path": "gate", "decision": "approve"})
    assert status == 303
    assert (await engine.wait_for(waiting.run_id, timeout=5)).status == "success"
    assert sorted(s.path for s in (await engine.details(waiting.run_id)).steps) == ["finish", "gate", "prepare"]
