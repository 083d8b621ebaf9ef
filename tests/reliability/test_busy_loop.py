"""An ``async def`` step that blocks its process's event loop (CPU-bound code, ``time.sleep``) for twice the lease,
with two ``threadflow worker`` processes on one database: leases are renewed from a thread, so the other worker
takes nothing over. Before, heartbeats stopped with the loop and the workers took each other's runs in turn (the
bad step ran 10 times in 60 s and healthy runs repeated steps).
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import EngineFactory
from tests.reliability.conftest import StartWorker
from tests.reliability.faulty_flows import WORKFLOWS, executions
from tests.reliability.tally import tally

LEASE = 1.0
BLOCK = 2.5  # seconds the step holds the event loop: more than two leases


async def test_a_step_that_blocks_the_event_loop_past_the_lease_is_not_taken_over(
    db_url: str, fault_dir: Path, start_worker: StartWorker, engine: EngineFactory
) -> None:
    env = {"THREADFLOW_TEST_BLOCK_SECONDS": str(BLOCK)}
    workers = [await start_worker(db_url, lease=LEASE, env=env) for _ in range(2)]
    observer = engine(*WORKFLOWS, execute=False)
    blocked = {(await observer.start("blocks", {"n": i})).run_id: {"n": i + 16} for i in range(2)}
    expected = {(await observer.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(20)}

    counts = await tally("async step blocks the event loop for 2.5 leases", observer, expected | blocked,
                         fault_dir, timeout=60)

    assert counts.save().harmless
    for run_id in blocked:  # the blocking step ran once: never taken over by the other worker
        assert executions(fault_dir)[(run_id, "block")] == 1
        assert "run.recovered" not in [ev.type for ev in (await observer.details(run_id)).events]
    for w in workers:
        w.proc.terminate()
        assert await w.exit_code() == 0
    logs = "".join(w.errors() for w in workers)
    assert "the event loop was blocked for" in logs and "in step `block` of run" in logs
