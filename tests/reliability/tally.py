"""Counting what a fault cost the healthy runs beside it: runs lost, steps repeated, results changed, runs
wrongly failed. Every fault-injection test ends with a tally of its healthy runs and asserts it (zero where the
engine promises it, a stated bound where it promises one).

With ``THREADFLOW_TEST_TALLY_FILE`` set, each tally is also appended to that file as a JSON line (the README's
reliability table is made from it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.reliability.faulty_flows import executions
from workflows import Engine

FINAL = {"success", "failed", "canceled"}


@dataclass(frozen=True)
class Tally:
    fault: str
    database: str
    runs: int
    lost: int
    repeated: int
    changed: int
    wrongly_failed: int

    @property
    def harmless(self) -> bool:
        return self.lost == self.repeated == self.changed == self.wrongly_failed == 0

    def save(self, **extra: Any) -> Tally:
        path = os.environ.get("THREADFLOW_TEST_TALLY_FILE")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(asdict(self) | extra) + "\n")
        return self


async def tally(
    fault: str,
    engine: Engine,
    expected: dict[str, Any],
    fault_dir: Path,
    *,
    timeout: float = 30.0,
) -> Tally:
    """Wait (up to ``timeout``) for each healthy run in ``expected`` (run id -> its right output) to finish,
    then count: lost (not finished), repeated (executions of a step path beyond the first, as the steps logged
    them in ``fault_dir``), changed (a different output), wrongly failed (failed or canceled although nothing
    was wrong with it)."""
    deadline = time.monotonic() + timeout
    records = {}
    for run_id in expected:
        while True:
            run = await engine.get_run(run_id)
            if run.status in FINAL or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        records[run_id] = run
    lost = sum(r.status not in FINAL for r in records.values())
    wrongly_failed = sum(r.status in ("failed", "canceled") for r in records.values())
    changed = sum(r.status == "success" and r.output != expected[r.id] for r in records.values())
    repeated = sum(n - 1 for (run_id, _path), n in executions(fault_dir).items() if run_id in expected and n > 1)
    return Tally(fault, engine.db.dialect, len(expected), lost, repeated, changed, wrongly_failed)
