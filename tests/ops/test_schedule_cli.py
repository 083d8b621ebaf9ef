"""``threadflow schedule add|list|remove``: as a real subprocess, and through ``bot.cli.main`` for the errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main

MainCLI = Callable[..., tuple[str, str]]


@pytest.fixture
def run_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> MainCLI:
    """``out, err = run_main("schedule", "list", expect=0)``: the CLI in this process, on a SQLite file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREADFLOW_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")

    def run(*args: str, expect: int = 0) -> tuple[str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        assert code == expect, (code, out, err)
        return out, err

    return run


def test_add_list_and_remove_a_schedule(cli: Any) -> None:
    added = cli("schedule", "add", "greet-user", "0 9 * * 1-5", "--input", '{"name": "Ada"}', "--tz", "Europe/Oslo")
    assert added.stdout.startswith("Scheduled s") and "greet-user at '0 9 * * 1-5' (Europe/Oslo)" in added.stdout
    assert "next run" in added.stdout and "09:00 Europe/Oslo" in added.stdout
    schedule_id = added.stdout.split()[1].rstrip(":")

    cli("schedule", "add", "approval", "@hourly", "--channel", "C0GENERAL", "--team", "T0TEAM", THREADFLOW_TIMEZONE="Asia/Tokyo")
    listed = {s["workflow_id"]: s for s in json.loads(cli("schedule", "list", "--json").stdout)}
    assert listed["greet-user"]["id"] == schedule_id and listed["greet-user"]["input"] == {"name": "Ada"}
    assert listed["greet-user"]["created_by"] == "cli" and listed["greet-user"]["channel_id"] is None
    assert listed["approval"]["timezone"] == "Asia/Tokyo" and listed["approval"]["channel_id"] == "C0GENERAL"
    text = cli("schedule", "list").stdout
    assert f"{schedule_id}  greet-user  '0 9 * * 1-5' (Europe/Oslo)" in text and "in C0GENERAL" in text

    assert cli("schedule", "remove", schedule_id).stdout.strip() == f"Removed schedule {schedule_id}."
    assert [s["workflow_id"] for s in json.loads(cli("schedule", "list", "--json").stdout)] == ["approval"]
    again = cli("schedule", "remove", schedule_id, expect=2)
    assert again.stderr.startswith(f"error: There is no schedule '{schedule_id}'")


def test_bad_schedules_are_refused_with_exit_status_2(run_main: MainCLI) -> None:
    def error(*args: str) -> str:
        return run_main("schedule", "add", *args, expect=2)[1]

    assert "is not a schedule" in error("greet-user", "0 9 * *")
    assert "Time zone 'Nowhere/City' is not known" in error("greet-user", "@daily", "--input", '{"name": "A"}',
                                                             "--tz", "Nowhere/City")
    assert "Workflow 'greet-usr' is not registered" in error("greet-usr", "@daily")
    assert "Invalid input of workflow 'greet-user'" in error("greet-user", "@daily")
    assert "--input is not valid JSON" in error("greet-user", "@daily", "--input", "{")
    assert "--channel needs --team" in error("approval", "@daily", "--channel", "C1")
    assert run_main("schedule", "list")[0].startswith("No schedules.")


def test_a_cron_of_a_date_that_never_comes_is_refused_with_exit_status_2(run_main: MainCLI) -> None:
    """``0 9 30 2 *`` is valid cron syntax (February 30th): refused with the reason, not croniter's traceback."""
    _, err = run_main("schedule", "add", "greet-user", "0 9 30 2 *", "--input", '{"name": "Ada"}', expect=2)
    assert err.startswith("error: '0 9 30 2 *' never fires") and "Traceback" not in err
