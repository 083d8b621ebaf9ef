"""The outside of the process: the ``threadflow`` command run for real, and filesystems a test mounts (as root)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def threadflow(database_url: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """``threadflow ARGS`` in a process of its own, with only this database (and ``env``) configured."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("THREADFLOW_", "SLACK_", "OPENAI_"))}
    clean |= {"THREADFLOW_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=clean, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@contextmanager
def tmpfs(mount: Path, size: str = "4m") -> Iterator[Path]:
    """A small tmpfs of the test's own at ``mount`` (root only: the caller skips otherwise)."""
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
