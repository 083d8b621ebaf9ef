"""``threadflow`` across a deploy: versions listed, stranded runs found, resumes refused cleanly, runs moved.

Real subprocesses on one SQLite file; each call loads the workflow versions a deployment would have
(``tests.helpers.versioned_flows:V1``, ``:V2`` or ``:BOTH``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.helpers.versioned_flows import V2 as V2_FLOWS
from tests.helpers.versioned_flows import deploy_v1, deploy_v2
from workflows import Engine

ROOT = Path(__file__).resolve().parents[2]
FLOWS = "tests.helpers.versioned_flows"


class CLI(Protocol):
    def __call__(self, *args: str, flows: str = ..., expect: int = ...) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADFLOW_", "SLACK_", "OPENAI_"))}
    env.update({
        "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        "THREADFLOW_POLL_INTERVAL": "0.1",
        "PYTHONPATH": str(ROOT),
    })

    def run(*args: str, flows: str = "V2", expect: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=tmp_path,
                              env=env | {"THREADFLOW_WORKFLOWS": f"{FLOWS}:{flows}"},
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    return run


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


V1, V2 = deploy_v1().fingerprint, deploy_v2().fingerprint


def test_after_a_deploy_without_v1_the_run_is_listed_as_stranded_and_resume_consumes_nothing(cli: CLI) -> None:
    waiting = as_json(cli("run", "deploy", flows="V1"))
    assert waiting["status"] == "suspended" and waiting["suspended"][0]["path"] == "gate"
    run_id = waiting["run_id"]

    listing = cli("workflows").stdout
    assert f"2 ({V2[:8]})" in listing and f"1 ({V1[:8]})" in listing
    assert "STRANDED" in listing
    [deploy] = [w for w in as_json(cli("workflows", "--json")) if w["id"] == "deploy"]
    assert (deploy["version"], deploy["open_runs"]) == ("2", 1)
    by_version = {v["version"]: v for v in deploy["versions"]}
    assert by_version["2"] == {"version": "2", "fingerprint": V2, "newest": True, "registered": True,
                               "served_by": [], "open_runs": 0}
    assert (by_version["1"]["registered"], by_version["1"]["open_runs"]) == (False, 1)

    stranded = cli("runs", "--status", "stranded")
    assert run_id in stranded.stdout and f"1 ({V1[:8]})" in stranded.stdout
    assert [r["id"] for r in as_json(cli("runs", "--status", "stranded", "--json"))] == [run_id]

    refused = cli("resume", run_id, "--data", '{"approved": true}', expect=2)
    assert refused.stderr.startswith(f"error: Run {run_id} is on version 1 ({V1[:8]}) of workflow 'deploy'")
    assert f"Registered versions of 'deploy': 2 ({V2[:8]})" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    shown = as_json(cli("show", run_id, "--json"))
    assert shown["run"]["status"] == "suspended"
    assert [(s["path"], s["status"]) for s in shown["suspensions"]] == [("gate", "open")]

    # v1 registered again (kept beside v2): the same decision goes through, on v1.
    done = as_json(cli("resume", run_id, "--data", '{"approved": true}', flows="BOTH"))
    assert done["status"] == "success"
    assert sorted(s["path"] for s in as_json(cli("show", run_id, "--json"))["steps"]) == ["finish", "gate", "prepare"]
    assert as_json(cli("runs", "--status", "stranded", "--json")) == []


def test_rerun_from_moves_a_stranded_run_onto_the_current_version(cli: CLI) -> None:
    run_id = as_json(cli("run", "deploy", flows="V1"))["run_id"]
    moved = as_json(cli("rerun", run_id, "--from", "gate2"))
    assert moved["status"] == "suspended" and moved["suspended"][0]["path"] == "gate2"
    assert as_json(cli("show", run_id, "--json"))["run"]["status"] == "canceled"
    new = as_json(cli("show", moved["run_id"], "--json"))["run"]
    assert (new["workflow_version"], new["workflow_fingerprint"], new["rerun_of"]) == ("2", V2, run_id)
    assert as_json(cli("resume", moved["run_id"], "--data", '{"approved": true}'))["status"] == "success"


def test_a_stranded_run_can_be_canceled(cli: CLI) -> None:
    run_id = as_json(cli("run", "deploy", flows="V1"))["run_id"]
    assert as_json(cli("cancel", run_id))["status"] == "canceled"
    assert as_json(cli("runs", "--status", "stranded", "--json")) == []


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_resume_of_a_run_that_never_settles_returns_within_its_wait_bound_using_little_cpu(cli: CLI) -> None:
    run_id = as_json(cli("run", "slow-after-approval"))["run_id"]
    cpu = _child_cpu()
    cli("show", run_id)  # what starting a command that opens the engine costs, to compare with (`runs` opens none)
    startup = _child_cpu() - cpu

    cpu, started = _child_cpu(), time.monotonic()
    gave_up = cli("resume", run_id, "--data", '{"approved": true}', "--wait", "3", expect=1)
    elapsed, used = time.monotonic() - started, _child_cpu() - cpu
    assert 3 <= elapsed < 30
    assert used - startup < 1.0, f"waiting 3 s used {used - startup:.2f} s of CPU beyond startup"
    assert f"stopped waiting after 3 seconds: run {run_id} is still" in gave_up.stderr
    assert as_json(gave_up)["run_id"] == run_id and as_json(gave_up)["status"] in ("running", "pending")
    # The decision was recorded: resuming again says so.
    again = cli("resume", run_id, "--data", '{"approved": true}', "--no-wait", expect=2)
    assert "already resumed" in again.stderr


async def test_no_wait_returns_at_once_and_leaves_the_run_to_a_process_that_executes_runs(
    cli: CLI, tmp_path: Path,
) -> None:
    run_id = as_json(cli("run", "deploy"))["run_id"]
    started = time.monotonic()
    handed = as_json(cli("resume", run_id, "--data", '{"approved": true}', "--no-wait"))
    assert handed["status"] == "pending" and time.monotonic() - started < 30
    queued = as_json(cli("run", "deploy", "--no-wait"))
    assert queued["status"] == "pending"

    worker = Engine.from_url(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", poll_interval=0.05).register(*V2_FLOWS)
    try:
        assert (await worker.wait_for(run_id, timeout=20)).status == "success"
        assert (await worker.wait_for(queued["run_id"], timeout=20)).status == "suspended"
    finally:
        await worker.close()
    assert as_json(cli("recover", "--wait", "5")) == {"recovered": [], "results": []}
    bad = cli("resume", run_id, "--wait", "0", expect=2)
    assert "--wait" in bad.stderr and "--no-wait" in bad.stderr
