"""Two `threadflow worker` processes deployed with different versions of one workflow, on one database.

Each executes only the runs of the version it has; a resume of a run goes to the worker that has its
version, whichever process records the decision. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.helpers.processes import spawner
from tests.helpers.versioned_flows import deploy_v1, deploy_v2
from workflows import Engine

pytestmark = pytest.mark.timeout(180)


async def _all_have_status(e: Engine, ids: list[str], status: str) -> bool:
    return all([(await e.get_run(r)).status == status for r in ids])


async def _wait(e: Engine, ids: list[str], status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await _all_have_status(e, ids, status):
        if time.monotonic() > deadline:
            states = {r: (await e.get_run(r)).status for r in ids}
            raise AssertionError(f"runs did not all become {status} in {timeout}s: {states}")
        await asyncio.sleep(0.1)


async def test_two_worker_processes_with_different_versions_each_execute_only_their_own_runs(
    db_url: str, tmp_path: Path,
) -> None:
    async with spawner("bot.cli", tmp_path) as start:
        env = {"THREADFLOW_DATABASE_URL": db_url, "THREADFLOW_LEASE_SECONDS": "2", "THREADFLOW_POLL_INTERVAL": "0.1"}
        old = await start("worker", env=env | {"THREADFLOW_WORKFLOWS": "tests.helpers.versioned_flows:V1"})
        new = await start("worker", env=env | {"THREADFLOW_WORKFLOWS": "tests.helpers.versioned_flows:V2"})
        owners = {}
        for name, worker in (("old", old), ("new", new)):
            line = await worker.line()
            owners[name] = line.split()[2]  # "threadflow worker OWNER executing runs (...)"

        producer_v1 = Engine.from_url(db_url, execute=False).register(deploy_v1())
        producer_v2 = Engine.from_url(db_url, execute=False).register(deploy_v2())
        try:
            v1 = [(await producer_v1.start("deploy", {})).run_id for _ in range(6)]
            v2 = [(await producer_v2.start("deploy", {})).run_id for _ in range(6)]
            await _wait(producer_v2, [*v1, *v2], "suspended")
            for run_id in v1:
                details = await producer_v2.details(run_id)
                assert {s.output["by"] for s in details.steps} == {owners["old"]}
                assert [s.path for s in details.suspensions] == ["gate"]
            for run_id in v2:
                details = await producer_v2.details(run_id)
                assert {s.output["by"] for s in details.steps} == {owners["new"]}
                assert [s.path for s in details.suspensions] == ["gate2"]

            # Decisions recorded by a process of either version reach the worker that has the run's version.
            for run_id in v1:
                await producer_v1.resume(run_id, data={"approved": True})
            for run_id in v2:
                await producer_v2.resume(run_id, data={"approved": True})
            await _wait(producer_v2, [*v1, *v2], "success")
            for run_ids, owner in ((v1, owners["old"]), (v2, owners["new"])):
                for run_id in run_ids:
                    assert {s.output["by"] for s in (await producer_v2.details(run_id)).steps} == {owner}
            assert await producer_v2.list_runs(status="stranded") == []
        finally:
            await producer_v1.close()
            await producer_v2.close()
