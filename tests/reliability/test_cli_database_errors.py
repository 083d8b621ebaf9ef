"""Every command of the CLI that uses the database answers a malformed URL, an unreachable server and a read-only
database file with one line and exit status 2 (before: a 44-144 line traceback and exit status 1).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.system import threadflow, tmpfs

COMMANDS = [
    ("runs",), ("show", "r1"), ("run", "greet-user", "--input", '{"name": "Ada"}'), ("resume", "r1"),
    ("cancel", "r1"), ("rerun", "r1", "--from", "greet"), ("send-event", "r1", "go"), ("recover",), ("migrate",),
    ("schedule", "list"), ("prune", "--dry-run"),
]


@pytest.fixture
def read_only_file(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database on a filesystem mounted read-only (as root) or in a read-only file (otherwise)."""
    if os.geteuid() != 0:
        url = f"sqlite+aiosqlite:///{tmp_path / 'ro.db'}"
        assert threadflow(url, "migrate").returncode == 0
        (tmp_path / "ro.db").chmod(0o444)
        tmp_path.chmod(0o555)
        try:
            yield url
        finally:
            tmp_path.chmod(0o755)
        return
    with tmpfs(tmp_path / "ro") as mount:  # root may write any file: only a read-only filesystem refuses it
        url = f"sqlite+aiosqlite:///{mount / 'threadflow.db'}"
        assert threadflow(url, "migrate").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield url


def assert_one_line(proc: subprocess.CompletedProcess[str], *says: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith("error: ") and all(s in lines[0] for s in says), lines[0]
    assert "Traceback" not in proc.stderr and "[SQL" not in proc.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_a_malformed_database_url_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    proc = threadflow("mysql://user:secret@db/x", *args)
    assert_one_line(proc, "Database URL", "threadflow supports SQLite")
    assert "secret" not in proc.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_an_unreachable_database_server_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    proc = threadflow("postgresql+asyncpg://threadflow:s3cret@127.0.0.1:1/threadflow", *args)
    assert_one_line(proc, "Could not open the database", "127.0.0.1:1", "Connect call failed")
    assert "s3cret" not in proc.stderr  # the password is not shown


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_a_read_only_database_file_is_one_line_and_exit_2(read_only_file: str, args: tuple[str, ...]) -> None:
    assert_one_line(threadflow(read_only_file, *args), "Could not open the database", "writable")
