"""Mastra as a peer of benchmark 1: ``bench/mastra/bench.mjs`` run by Node, its packages pinned in
``bench/mastra/package-lock.json`` and installed with ``npm ci`` at bench time.

Mastra 1.x needs Node >= 22.13. The system's ``node`` is used when it is new enough; otherwise the Node
binary from the npm package ``node`` (pinned in the same lock file) is. Without ``npm``, or when the
install fails, the caller gets :class:`Skipped` with the reason, and the benchmark prints a "skipped" row.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "mastra"
MIN_NODE = (22, 13)


class Skipped(Exception):
    """Mastra cannot run here; the message says why."""


def _version(node: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        return tuple(int(p) for p in out.lstrip("v").split(".")[:3])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def prepare() -> str:
    """Install the pinned packages if needed; the path of a Node binary new enough for Mastra."""
    npm = shutil.which("npm")
    if not (HERE / "node_modules" / "@mastra" / "core").is_dir():
        if npm is None:
            raise Skipped("npm not found (Mastra's packages are installed with `npm ci` in bench/mastra)")
        try:
            proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                                  capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Skipped(f"`npm ci` in bench/mastra did not finish: {exc}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Skipped(f"`npm ci` in bench/mastra failed: {tail[0][:160]}")
    system = shutil.which("node")
    if system is not None and (_version(system) or (0,)) >= MIN_NODE:
        return system
    bundled = HERE / "node_modules" / ".bin" / "node"
    if bundled.exists() and (_version(str(bundled)) or (0,)) >= MIN_NODE:
        return str(bundled)
    found = ".".join(map(str, _version(system) or ())) if system else "none"
    raise Skipped(f"Mastra needs Node >= {'.'.join(map(str, MIN_NODE))} (system node: {found}; "
                  "the npm package `node` did not install)")


async def run(node: str, db: Path, n: int, concurrency: int, pragmas: str, warmup: int = 10) -> dict[str, Any]:
    """One configuration in a fresh Node process: ``{"seconds", "latencies", "cpu_us", "journal", "node"}``."""
    proc = await asyncio.create_subprocess_exec(
        node, str(HERE / "bench.mjs"), str(db), str(n), str(concurrency), str(warmup), pragmas,
        cwd=HERE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 1800)
    if proc.returncode != 0:
        raise RuntimeError(f"mastra bench exited {proc.returncode}: {err.decode(errors='replace').strip()[-300:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result
