"""A background job's failure that repeats on every retry, logged when it starts, now and then, and when it ends.

The dispatcher, the version announcer and the WAL checkpoint retry on their own schedule while the database is
out (a full disk, a server restart): logging every attempt with its traceback buried the one line that says what
is wrong under hundreds that say it again. The first failure is logged with its traceback, a reminder follows
every ``remind_every`` seconds while it lasts, and one line says when it works again. A failure of another kind
meanwhile (a bug showing once the database is back) is told as a new one, with its own traceback.

Database outages are warnings (they end by themselves); anything else is an error, as it was before.
"""

from __future__ import annotations

import logging
import time

from .errors import DatabaseUnavailable
from .faults import transient_kind


class FailureLog:
    """``failed(exc)`` on each failed attempt of ``what``, ``worked()`` on each attempt that worked."""

    def __init__(self, logger: logging.Logger, what: str, *, remind_every: float = 60.0) -> None:
        self._log = logger
        self.what = what
        self.remind_every = remind_every
        #: Failed attempts since the last one that worked.
        self.failures = 0
        self._since = 0.0
        self._reminded = 0.0
        self._kind: type[BaseException] | None = None

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.failures += 1
        level = logging.WARNING if isinstance(exc, DatabaseUnavailable) or transient_kind(exc) else logging.ERROR
        if self.failures == 1 or type(exc) is not self._kind:
            if self.failures == 1:
                self._since = now
            self._reminded, self._kind = now, type(exc)
            self._log.log(level, "%s failed; retrying: %s: %s", self.what, type(exc).__name__, exc, exc_info=exc)
        elif now - self._reminded >= self.remind_every:
            self._reminded = now
            self._log.log(level, "%s still fails after %.0f s (%d attempts); retrying: %s: %s", self.what,
                          now - self._since, self.failures, type(exc).__name__, exc)
        else:
            self._log.debug("%s failed again (%d attempts): %s: %s", self.what, self.failures, type(exc).__name__, exc)

    def worked(self) -> None:
        if self.failures:
            self._log.warning("%s works again after %.1f s (%d failed attempts)", self.what,
                              time.monotonic() - self._since, self.failures)
            self.failures = 0
            self._kind = None
