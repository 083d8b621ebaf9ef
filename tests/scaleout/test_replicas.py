"""Several replicas on one PostgreSQL: claims with leases, takeover after SIGKILL, resumes across processes.

Real processes (`threadflow worker`) against a real database; the tests skip without
THREADFLOW_TEST_POSTGRES_URL (CI always sets it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.scaleout_flows import gated, three_steps
from workflows import Engine

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


def worker_env(url: str, log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "THREADFLOW_DATABASE_URL": url,
        "THREADFLOW_WORKFLOWS": "tests.helpers.scaleout_flows",
        "THREADFLOW_LEASE_SECONDS": "2",
        "THREADFLOW_POLL_INTERVAL": "0.1",
        "THREADFLOW_TEST_EXEC_LOG": str(log),
        "PYTHONPATH": str(ROOT),
    })
    return env


def start_workers(count: int, env: dict[str, str], concurrency: int = 50) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--concurrency", str(concurrency)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=20)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
        if w.stderr is not None:
            w.stderr.close()


async def enqueue(url: str, n: int, delay: float = 0.0) -> list[str]:
    """Insert ``n`` pending runs without executing them here."""
    producer = Engine.from_url(url, execute=False)
    producer.register(three_steps, gated)
    ids = [(await producer.start("three-steps", {"n": 0, "delay": delay})).run_id for _ in range(n)]
    await producer.close()
    return ids


async def wait_for_workers(url: str, count: int, timeout: float = 60) -> None:
    """Until ``count`` worker processes are up (each lists the versions it executes in ``served_versions``)."""
    watcher = Engine.from_url(url, execute=False)
    deadline = time.monotonic() + timeout
    try:
        while len(await watcher.live_executors()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(await watcher.live_executors())} of {count} workers up in {timeout}s")
            await asyncio.sleep(0.1)
    finally:
        await watcher.close()


async def wait_all_done(url: str, ids: list[str], timeout: float) -> None:
    watcher = Engine.from_url(url, execute=False)
    await watcher.open()
    deadline = time.monotonic() + timeout
    try:
        while True:
            done = await watcher.store.count_runs("success")
            if done >= len(ids):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"only {done} of {len(ids)} runs finished in {timeout}s")
            await asyncio.sleep(0.2)
    finally:
        await watcher.close()


def executions(log: Path) -> Counter[tuple[str, str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter((run_id, path) for run_id, path, _pid in (line.split() for line in lines))


@pytest.mark.parametrize("workers", [2, 4])
async def test_workers_execute_each_step_exactly_once(pg_url: str, tmp_path: Path, workers: int) -> None:
    log = tmp_path / "exec.log"
    procs = start_workers(workers, worker_env(pg_url, log))
    try:
        # Every worker up before the runs arrive: on a fast machine the first ones to start had run all 500 before
        # the last one had imported its modules.
        await wait_for_workers(pg_url, workers)
        ids = await enqueue(pg_url, 500)
        await wait_all_done(pg_url, ids, timeout=150)
    finally:
        stop(procs)
    counts = executions(log)
    assert set(counts) == {(r, s) for r in ids for s in ("a", "b", "c")}
    assert set(counts.values()) == {1}
    pids = {line.split()[2] for line in log.read_text().splitlines()}
    assert len(pids) == workers, "every worker took a share of the runs"


async def test_a_killed_worker_s_runs_are_finished_by_the_others(pg_url: str, tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    ids = await enqueue(pg_url, 60, delay=0.2)
    env = worker_env(pg_url, log)
    victim = start_workers(1, env, concurrency=10)[0]
    survivors: list[subprocess.Popen[bytes]] = []
    try:
        # Let the victim hold runs mid-flight, then kill it without any chance to hand them back.
        deadline = time.monotonic() + 30
        while len(executions(log)) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        survivors = start_workers(2, env)
        await wait_all_done(pg_url, ids, timeout=120)
    finally:
        stop([victim, *survivors])
    counts = executions(log)
    assert set(counts) == {(r, s) for r in ids for s in ("a", "b", "c")}
    repeated = {key: n for key, n in counts.items() if n > 1}
    # Only a step in flight at the kill may run again (at most one per run the victim held).
    assert len(repeated) <= 10
    assert all(n == 2 for n in repeated.values())


async def test_concurrent_resumes_across_two_replicas_have_one_winner(pg_url: str, tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    os.environ["THREADFLOW_TEST_EXEC_LOG"] = str(log)
    engine = Engine.from_url(pg_url, poll_interval=0.05)
    engine.register(gated)
    run = await engine.start("gated", {"n": 0})
    assert (await run.result()).status == "suspended"
    start_at = time.time() + 3.0
    env = worker_env(pg_url, log)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.resume_many", pg_url, run.run_id, "25", name, str(start_at)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for name in ("replica1", "replica2")
    ]
    outputs = [p.communicate(timeout=90) for p in procs]
    lines = [ln for out, _err in outputs for ln in out.decode().splitlines()]
    assert all(p.returncode == 0 for p in procs), [err.decode()[-2000:] for _out, err in outputs]
    winners = [ln.split()[1] for ln in lines if ln.startswith("won")]
    losers = [ln.split()[1] for ln in lines if ln.startswith("lost")]
    assert len(winners) == 1 and len(losers) == 49
    assert set(losers) == set(winners), "every loser is told who won"
    result = await engine.wait_for(run.run_id, timeout=30)
    assert result.status == "success"
    details = await engine.details(run.run_id)
    assert [s.resolved_by for s in details.suspensions] == winners
    await engine.close()
    assert executions(log)[(run.run_id, "gate")] == 1
