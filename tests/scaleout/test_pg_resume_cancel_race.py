"""Resume and cancel of one suspended run from two replicas at the same moment (PostgreSQL).

Cancel is final (README: "Cancel is final: nothing overwrites it"), and resume is a compare-and-set: of a resume
and a cancel racing, either the resume wins (then the cancel stops the resumed run) or the cancel wins and the
resume is refused. A resume that is told it succeeded on a run canceled before it, with its ``run.resumed`` event
after the run's final ``run.canceled``, is neither.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import FAST
from tests.helpers.scaleout_flows import gated
from workflows import Engine
from workflows.errors import UsageError as WorkflowError

pytestmark = pytest.mark.timeout(120)

ROUNDS = 80


async def test_a_resume_racing_a_cancel_is_refused_or_comes_first(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THREADFLOW_TEST_EXEC_LOG", str(tmp_path / "exec.log"))
    a = Engine.from_url(pg_url, **FAST)
    b = Engine.from_url(pg_url, **FAST)
    a.register(gated)
    b.register(gated)
    await a.open()
    await b.open()
    bad: list[str] = []
    try:
        ids = [(await a.start("gated", {"n": i})).run_id for i in range(ROUNDS)]
        for run_id in ids:
            assert (await a.wait_for(run_id, timeout=20)).status == "suspended"

        async def resume(run_id: str) -> BaseException | None:
            try:
                await a.resume(run_id, step="gate", data={"approved": True}, by="alice")
            except WorkflowError as exc:
                return exc
            return None

        async def cancel(run_id: str) -> BaseException | None:
            try:
                await b.cancel(run_id, by="bob")
            except WorkflowError as exc:
                return exc
            return None

        for run_id in ids:
            resumed, canceled = await asyncio.gather(resume(run_id), cancel(run_id))
            if resumed is None and canceled is None:
                # Both were told they succeeded: only right if the resume came first (then the cancel stopped it).
                events = [e.type for e in await b.store.read_events(run_id)]
                if events.index("run.resumed") > events.index("run.canceled"):
                    run = await b.get_run(run_id)
                    susp = (await b.suspensions(run_id))[0]
                    bad.append(f"{run_id}: resume and cancel both succeeded, cancel first; run {run.status}, "
                               f"suspension {susp.status} by {susp.resolved_by}; events {events}")
    finally:
        await a.close()
        await b.close()
    assert not bad, f"{len(bad)} of {ROUNDS} rounds:\n" + "\n".join(bad[:5])
