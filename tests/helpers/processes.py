"""Worker processes a test can read line by line and SIGKILL (crash recovery and the reliability suite)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """``python -m MODULE ...`` in a process of its own; stdout is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr

    async def line(self, timeout: float = 30) -> str:
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)  # type: ignore[union-attr]
        if not raw:
            await self.proc.wait()
            raise AssertionError(f"worker exited ({self.proc.returncode}) without output:\n{self.errors()}")
        return raw.decode().strip()

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    async def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return await self.exit_code()

    async def exit_code(self, timeout: float = 30) -> int:
        # Waiting reaps the process: a zombie would still look alive to the engine's dead-owner check.
        return await asyncio.wait_for(self.proc.wait(), timeout)


Spawn = Callable[..., Awaitable[Worker]]


@asynccontextmanager
async def spawner(module: str, tmp_path: Path) -> AsyncIterator[Spawn]:
    """``start = ...; w = await start("start", url, ..., env={...})``; leftovers are killed at the end."""
    workers: list[Worker] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Worker:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("THREADFLOW_")}
        stderr = tmp_path / f"worker-{len(workers)}.err"
        with stderr.open("wb") as err:  # the child keeps its own copy of the descriptor
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args,
                cwd=ROOT, env=clean | {"PYTHONPATH": str(ROOT)} | (env or {}),
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )
        worker = Worker(proc, stderr)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for w in workers:
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()


async def run_cli(cwd: Path, args: tuple[str, ...], env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    """``threadflow ARGS`` in ``cwd`` with exactly ``env``, awaited without blocking: the test's event loop keeps
    serving the fakes (Slack, OpenAI) the command talks to. Returns its exit code, stdout and stderr. A command still
    running after ``timeout`` (a server that started where it should have refused) is killed, and TimeoutError raised."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
