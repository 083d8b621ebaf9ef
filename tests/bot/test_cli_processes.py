"""The commands that execute runs, as processes: how they stop on a signal and how they refuse to start.

A process that executes runs holds them (owner and lease). Stopping it must hand them back (pending, no owner),
and a start that fails must not take them first: a run left under a dead owner is later counted as a crash of
its process, and THREADFLOW_MAX_RECOVERIES such counts fail a healthy run for good.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import eventually
from tests.helpers.processes import ROOT, run_cli

SLOW = json.dumps({"seconds": 30})


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "THREADFLOW_", "OPENAI_"))}
    return clean | {
        "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        "THREADFLOW_WORKSPACE": str(tmp_path / "workspace"),
        "THREADFLOW_WORKFLOWS": "tests.helpers.slow_flows",
        "PYTHONPATH": str(ROOT),
    }


def run_rows(tmp_path: Path) -> list[tuple[str, str, str | None, int]]:
    """(id, status, owner, recoveries) of every run, read from the SQLite file as it is."""
    db = tmp_path / "cli.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT id, status, owner, recoveries FROM runs").fetchall()
        except sqlite3.OperationalError:  # (not migrated yet)
            return []


def step_starts(tmp_path: Path, run_id: str) -> int:
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        return conn.execute("SELECT count(*) FROM events WHERE run_id = ? AND type = 'step.started'",
                            (run_id,)).fetchone()[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_to_threadflow_run_hands_the_run_back(tmp_path: Path, env: dict[str, str],
                                                             sig: signal.Signals) -> None:
    """``threadflow run`` executes the run itself when nothing else does. Ctrl-C handed it back; SIGTERM (what
    ``kill``, ``timeout``, systemd and CI runners send) killed the process at once, the run left ``running``
    under a dead owner until a recovery counted a crash against it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "run", "slow-flow", "--input", SLOW, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await eventually(lambda: [row[1] for row in run_rows(tmp_path)] == ["running"], timeout=15)
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    [(_, status, owner, recoveries)] = run_rows(tmp_path)
    assert (status, owner, recoveries) == ("pending", None, 0), (proc.returncode, err.decode()[-300:])
    assert proc.returncode == 130 and "Traceback" not in err.decode()


@pytest.mark.parametrize("taken", ["bot-port", "inspector-port", "ui-port"])
async def test_serve_on_a_port_in_use_says_so_without_taking_the_queued_runs(tmp_path: Path, env: dict[str, str],
                                                                             taken: str) -> None:
    """``serve`` on a taken port (an earlier instance still stopping, a second one by mistake) died with an
    OSError traceback, after its engine had claimed the queued runs and started their steps: each start of a
    restart loop counted as a crash of those runs, and the fourth failed a healthy run for good. The ports are
    now taken before the engine starts, and a taken one is one line and exit 2, as for ``threadflow ui``."""
    code, out, err = await run_cli(tmp_path, ("run", "slow-flow", "--input", SLOW, "--no-wait"), env)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    env |= {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": "secret", "THREADFLOW_HOST": "127.0.0.1",
            "SLACK_API_URL": "http://127.0.0.1:9/api/"}  # (nothing listens there: Slack calls fail fast)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env["THREADFLOW_UI_PORT"] = str(port)
        args = {"bot-port": ("serve", "--port", str(port)), "inspector-port": ("serve", "--ui", "--port", "0"),
                "ui-port": ("ui",)}[taken]  # (``threadflow ui`` executes runs too)
        starts = [await run_cli(tmp_path, args, env, timeout=20) for _ in range(4)]

    assert run_rows(tmp_path) == [(run_id, "pending", None, 0)]
    assert step_starts(tmp_path, run_id) == 0
    for code, out, err in starts:
        assert (code, out) == (2, ""), (code, err[-300:])
    what = "threadflow" if taken == "bot-port" else "the run inspector"
    assert err.splitlines()[-1].startswith(f"error: {what} cannot listen on 127.0.0.1:{port} (Address already in use). ")
    assert "Traceback" not in err, err


@pytest.mark.parametrize("concurrency", ["0", "-5"])
async def test_a_worker_that_could_execute_nothing_is_refused(tmp_path: Path, env: dict[str, str],
                                                              concurrency: str) -> None:
    """``worker --concurrency 0`` started a worker that announced its versions but never claimed a run: every
    ``threadflow run`` then queued its run for it (README: "they never execute it in their own process beside
    it") and gave up after --wait, the run still pending."""
    code, _, err = await run_cli(tmp_path, ("worker", "--concurrency", concurrency), env, timeout=20)
    assert code == 2 and "Traceback" not in err
    assert err.endswith(f"argument --concurrency: '{concurrency}': a worker must execute at least 1 run at once\n")
    assert run_rows(tmp_path) == []


@pytest.mark.parametrize(("command", "option"), [("serve", "--port"), ("ui", "--port"), ("dev", "--port"),
                                                 ("dev", "--ui-port"), ("dev", "--bot-port")])
@pytest.mark.parametrize("port", ["70000", "-1"])
async def test_a_port_that_cannot_exist_is_a_usage_error(tmp_path: Path, env: dict[str, str], command: str,
                                                         option: str, port: str) -> None:
    """``--port`` was any int: 70000 died with an OverflowError traceback from bind()."""
    code, _, err = await run_cli(tmp_path, (command, option, port), env | {"SLACK_BOT_TOKEN": "xoxb-test",
                                                                            "SLACK_SIGNING_SECRET": "secret"})
    assert code == 2 and "Traceback" not in err, err[-300:]
    assert err.endswith(f"argument {option}: '{port}': a port is a number from 0 to 65535 (0 picks a free one)\n")


async def test_recover_alone_executes_the_queued_run_every_time_instead_of_reporting_nothing(tmp_path: Path,
                                                                                           env: dict[str, str]) -> None:
    """README: "With no such process they [run, resume, rerun, recover] execute the run themselves, so the CLI works
    alone on a laptop"; ``recover`` "continue[s] runs ... and wait[s] for them".

    ``Engine.recover`` first calls ``open()``, which starts the engine's dispatcher; the dispatcher's own first
    claim races recover's ``_claim_and_spawn``. When the dispatcher wins (about one time in four here), recover's
    claim finds nothing: the command prints ``{"recovered": [], "results": []}`` and exits 0, and closing the
    engine hands the runs its dispatcher had just started back as pending. Nothing was recovered, and the
    operator is told all is well."""
    base = env

    async def attempt(n: int) -> tuple[str, int, dict[str, Any]]:
        env = base | {"THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / f'attempt-{n}.db'}"}
        code, out, err = await run_cli(tmp_path, ("run", "slow-flow", "--input", '{"seconds": 0.2}', "--no-wait"), env)
        assert code == 0, (code, out, err)
        run_id = json.loads(out)["run_id"]
        code, out, err = await run_cli(tmp_path, ("recover", "--wait", "10"), env)
        report = json.loads(out)
        with sqlite3.connect(tmp_path / f"attempt-{n}.db") as conn:  # where the run stands once recover exited
            report["status_after"] = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
        return run_id, code, report

    # The race is lost at random (one attempt in four to eight here): a few rounds of attempts side by side.
    deadline = time.monotonic() + 15
    outcomes: list[tuple[str, int, dict[str, Any]]] = []
    while time.monotonic() < deadline:
        outcomes += await asyncio.gather(*(attempt(len(outcomes) + i) for i in range(6)))
        if any(report["recovered"] != [run_id] for run_id, _, report in outcomes):
            break
    bad = [(run_id, code, report) for run_id, code, report in outcomes if report["recovered"] != [run_id]]
    assert not bad, f"{len(bad)} of {len(outcomes)} recovers left their run pending and reported nothing: {bad[:2]}"
    assert all(code == 0 and report["results"][0]["status"] == "success" for _, code, report in outcomes)


async def test_serve_on_a_host_that_does_not_resolve_says_so_not_that_the_port_is_taken(tmp_path: Path,
                                                                                       env: dict[str, str]) -> None:
    code, _, err = await run_cli(tmp_path, ("serve", "--host", "no-such-host.invalid", "--port", "0"),
                                 env | {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": "secret"}, timeout=30)
    assert code == 2 and "Traceback" not in err, err[-300:]
    line = err.splitlines()[-1]
    assert line.startswith("error: threadflow cannot listen on no-such-host.invalid:0 (")
    assert "Another process uses the port" not in line and "Unknown error" not in line and "Check --host" in line
