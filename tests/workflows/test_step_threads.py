"""The daemon threads plain ``def`` steps run in (``workflows/step_threads.py``)."""

from __future__ import annotations

import threading
import time

from workflows.step_threads import StepThreads


def wait_until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_step_submitted_after_the_busy_thread_hung_gets_a_thread_of_its_own() -> None:
    """A thread that finished one step and went straight on to a queued one is not idle: when that step hangs and
    is abandoned, the next step must get a new thread, not wait behind the hung one (it would time out unrun)."""
    threads = StepThreads(1)
    first_go, hung_go = threading.Event(), threading.Event()
    try:
        first = threads.submit(first_go.wait, 30)
        hung = threads.submit(hung_go.wait, 30)  # queued: the only thread is busy with the first
        first_go.set()
        assert first.result(timeout=5) is True
        wait_until(hung.running)  # the same thread went straight on to it; it hangs
        assert threads.abandon(hung, "a step that ran past its timeout") == 1

        after = threads.submit(lambda: "ran")

        assert after.result(timeout=5) == "ran"
    finally:
        hung_go.set()
        threads.shutdown(wait=False)

