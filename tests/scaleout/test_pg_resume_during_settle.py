"""A decision that reaches a replica while the run's holder is settling it as suspended (it opened the approval,
found nothing decided yet, and is committing ``suspended``): the run must go on with the decision, not stay
suspended for good with its decision consumed.

The holder's settle is slowed on the wire between its check for decisions that came meanwhile and its update of the
run (a slow network for a moment: 0.3 s), so the other replica's resume lands in that gap every time; without the
delay the same gap is about one round trip wide, and a click landing in it is rare but not impossible.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import FAST
from tests.helpers.pg_wire import commit_cutter
from tests.helpers.scaleout_flows import gated
from workflows import Engine

pytestmark = pytest.mark.timeout(60)


async def test_a_resume_landing_while_the_holder_settles_suspended_is_not_lost(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THREADFLOW_TEST_EXEC_LOG", str(tmp_path / "exec.log"))
    async with commit_cutter(pg_url) as (wire, proxied):
        holder = Engine.from_url(proxied, **FAST)  # the replica executing the run (its connections go through `wire`)
        clicker = Engine.from_url(pg_url, **FAST)  # the replica the Slack click lands on
        holder.register(gated)
        clicker.register(gated)
        try:
            await holder.open()
            await clicker.open()
            wire.hold(b"WITH upd AS")  # the holder's settle of the run (its one-statement update on PostgreSQL)
            run = await holder.start("gated", {"n": 1})
            await asyncio.wait_for(wire.held.wait(), 10)
            # The approval is open; the holder is between its check and its update.
            assert [s.status for s in await clicker.suspensions(run.run_id)] == ["open"]
            # (With the settle's transaction holding the run, the resume may wait for it: it is not awaited first.)
            click = asyncio.ensure_future(clicker.resume(run.run_id, step="gate", data={"approved": True}, by="U1"))
            await asyncio.sleep(0.3)
            wire.release()
            await asyncio.wait_for(click, 10)
            try:
                result = await clicker.wait_for(run.run_id, timeout=10)
                status = result.status
            except TimeoutError:
                status = (await clicker.get_run(run.run_id)).status
            susp = await clicker.suspensions(run.run_id)
        finally:
            wire.release()
            await holder.close()
            await clicker.close()
    assert [s.status for s in susp] == ["resolved"]  # the decision was taken (the click was told so)
    assert status == "success", f"the run is {status} with its approval already decided: nothing will ever move it"


async def test_an_event_landing_while_the_holder_settles_waiting_is_not_lost(pg_url: str) -> None:
    from tests.scaleout.test_pg_unknown_commit_outcome import two_gos

    async with commit_cutter(pg_url) as (wire, proxied):
        holder = Engine.from_url(proxied, **FAST)
        sender = Engine.from_url(pg_url, **FAST)  # the replica `send_event` is called on (a webhook, the CLI)
        holder.register(two_gos)
        sender.register(two_gos)
        try:
            await holder.open()
            await sender.open()
            wire.hold(b"WITH upd AS")  # the holder's settle of the run as waiting for "go"
            run = await holder.start("two-gos", {})
            await asyncio.wait_for(wire.held.wait(), 10)
            sending = asyncio.ensure_future(sender.send_event(run.run_id, "go", {}))
            await asyncio.sleep(0.3)
            wire.release()
            delivery = await asyncio.wait_for(sending, 10)
            await asyncio.sleep(1.5)  # time enough to take the event and reach the second wait
            received = [e.path for e in await sender.store.read_events(run.run_id) if e.type == "event.received"]
            status = (await sender.get_run(run.run_id)).status
            waits = {s.path: s.status for s in await sender.suspensions(run.run_id)}
        finally:
            wire.release()
            await holder.close()
            await sender.close()
    assert delivery == "delivered" and waits.get("first-go") == "resolved"  # the sender was told it arrived
    assert received == ["first-go"], (
        f"event {delivery}, its wait {waits}, but the run never took it: {status}, received at {received}")
