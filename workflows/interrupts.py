"""Telling a real Ctrl+C or SIGTERM apart from a step that raises ``KeyboardInterrupt`` or ``SystemExit``.

A step's ``sys.exit(3)`` or ``raise KeyboardInterrupt`` is its own failure: the engine fails that step and
the process goes on executing every other run. A signal sent to the process is not: the process must still
shut down. Python raises both in the same way, so while an engine is open its process's SIGINT and SIGTERM
handlers (when they are Python functions: Python's default Ctrl+C handler, asyncio.run's) are wrapped to
note that the signal arrived, then do what they did before. A KeyboardInterrupt or SystemExit that meets
the engine after such a signal is let through.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Signals received while a wrapper was installed.
_received: set[int] = set()
#: The handler each wrapper calls, to restore when the last engine closes.
_wrapped: dict[int, Any] = {}
_users = 0


def install() -> None:
    """Wrap the process's Python signal handlers (main thread only; nested calls are counted)."""
    global _users
    if threading.current_thread() is not threading.main_thread():
        return
    _users += 1
    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if callable(current) and not getattr(current, "_threadflow", False):
            _wrapped[sig] = current
            signal.signal(sig, _wrapper(current))


def uninstall() -> None:
    """Put the previous handlers back once the last engine that installed the wrappers closes."""
    global _users
    if threading.current_thread() is not threading.main_thread() or _users == 0:
        return
    _users -= 1
    if _users:
        return
    for sig, previous in list(_wrapped.items()):
        if getattr(signal.getsignal(sig), "_threadflow", False):
            signal.signal(sig, previous)
        del _wrapped[sig]


def _wrapper(previous: Any) -> Any:
    def note_signal(signum: int, frame: FrameType | None) -> Any:
        _received.add(signum)
        return previous(signum, frame)

    note_signal._threadflow = True  # type: ignore[attr-defined]
    return note_signal


def note(signum: int) -> None:
    """A handler of the process's own (``threadflow worker``'s) received ``signum``: what it raises is real."""
    _received.add(signum)


def from_signal(exc: BaseException) -> bool:
    """True if ``exc`` (a KeyboardInterrupt or SystemExit) may come from a signal sent to this process."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT in _received
    if isinstance(exc, SystemExit):
        return bool(_received)
    return False
