"""A background job's repeating failure: logged when it starts, now and then while it lasts, and when it ends."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from storage.failure_log import FailureLog

log = logging.getLogger("threadflow.test-failure-log")


def said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    records = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records if r.name == log.name]
    caplog.clear()
    return records


def disk_full(attempt: int = 0) -> sqlite3.OperationalError:
    return sqlite3.OperationalError(f"database or disk is full ({attempt})")


def test_a_failure_repeating_on_every_retry_is_logged_once_then_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = FailureLog(log, "the nightly sweep")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for attempt in range(50):
            failures.failed(disk_full(attempt))
        [(level, first, traceback), *again] = said(caplog)
        assert level == logging.WARNING and traceback  # an outage of the database: it ends by itself
        assert first == "the nightly sweep failed; retrying: OperationalError: database or disk is full (0)"
        assert len(again) == 49 and {level for level, _, _ in again} == {logging.DEBUG}

        failures.worked()
        [(level, message, _)] = said(caplog)
        assert level == logging.WARNING and message.startswith("the nightly sweep works again after ")
        assert message.endswith("(50 failed attempts)")
        failures.worked()
        assert said(caplog) == []  # nothing to say while it works

        failures.failed(disk_full())  # a new episode is told again, with its traceback
        assert said(caplog) == [
            (logging.WARNING, "the nightly sweep failed; retrying: OperationalError: database or disk is full (0)", True)]


def test_another_kind_of_failure_meanwhile_is_told_as_a_new_one_and_a_bug_is_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = FailureLog(log, "the nightly sweep")
    with caplog.at_level(logging.WARNING, logger=log.name):
        failures.failed(disk_full())
        failures.failed(disk_full())
        failures.failed(TypeError("unsupported operand"))  # the database is back; a bug shows
        failures.failed(TypeError("unsupported operand"))
    assert said(caplog) == [
        (logging.WARNING, "the nightly sweep failed; retrying: OperationalError: database or disk is full (0)", True),
        (logging.ERROR, "the nightly sweep failed; retrying: TypeError: unsupported operand", True),
    ]


def test_a_long_failure_is_recalled_every_reminder_interval(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog(log, "the nightly sweep", remind_every=0.0)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for _ in range(3):
            failures.failed(TimeoutError("no answer"))
    messages = [message for _, message, _ in said(caplog)]
    assert messages[0] == "the nightly sweep failed; retrying: TimeoutError: no answer"
    assert [m.split(" after ")[0] for m in messages[1:]] == ["the nightly sweep still fails"] * 2
    assert messages[2].endswith("(3 attempts); retrying: TimeoutError: no answer")
