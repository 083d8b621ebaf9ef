"""A lease's holder is taken for dead only by a process that can see its pid: same machine, same boot, same PID
namespace. Two containers or machines that share a hostname must not hand back each other's runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import EngineFactory
from workflows import Workflow, step
from workflows.owners import dead_here, new_owner, process_scope


@pytest.fixture(scope="module")
def gone_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def owner_of(pid: int, scope: str | None) -> str:
    return f"{socket.gethostname()}:{pid}:abc123" + (f":{scope}" if scope is not None else "")


@pytest.mark.skipif(not process_scope(), reason="no boot id or PID namespace to read (not Linux)")
def test_this_process_names_its_scope_in_its_owner() -> None:
    host, pid, _random, scope = new_owner().split(":")
    assert (host, int(pid), scope) == (socket.gethostname(), os.getpid(), process_scope())


@pytest.mark.skipif(not process_scope(), reason="no boot id or PID namespace to read (not Linux)")
def test_a_gone_process_of_this_scope_is_dead_and_a_live_one_is_not(gone_pid: int) -> None:
    assert dead_here(owner_of(gone_pid, process_scope()))
    assert not dead_here(owner_of(os.getpid(), process_scope()))


def test_a_gone_pid_under_this_hostname_in_another_scope_is_not_taken_for_dead(gone_pid: int) -> None:
    # Another container with host networking, or another machine with the same name: its pid is not ours to test.
    assert not dead_here(owner_of(gone_pid, "0123456789ab"))


def test_an_owner_written_without_a_scope_is_judged_by_its_hostname_as_before(gone_pid: int) -> None:
    assert dead_here(owner_of(gone_pid, None))
    assert not dead_here(owner_of(os.getpid(), None))
    assert not dead_here(f"elsewhere.example:{gone_pid}:abc123")
    assert not dead_here("crashed") and not dead_here(f"{socket.gethostname()}:not-a-pid:abc123")


@step(id="work")
async def work(ctx: object) -> None:
    return None


async def test_recover_hands_back_only_the_runs_of_dead_processes_it_can_see(
    engine: EngineFactory, gone_pid: int
) -> None:
    wf = Workflow(id="owned").then(work).commit()
    observer = engine(wf, execute=False)
    ours, elsewhere = (await observer.start("owned", {})).run_id, (await observer.start("owned", {})).run_id
    for run_id, owner in ((ours, owner_of(gone_pid, process_scope() or None)), (elsewhere, owner_of(gone_pid, "0123456789ab"))):
        assert await observer.store.claim(owner, 10, 60.0, only=[run_id]) == [run_id]

    recovered = await observer.recover()

    assert recovered == [ours]
    assert (await observer.get_run(ours)).status == "pending"
    run = await observer.get_run(elsewhere)
    assert run.status == "running" and run.owner == owner_of(gone_pid, "0123456789ab")  # its lease decides
