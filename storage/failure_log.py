"""A background job's failure that repeats on every retry, logged when it starts, now and then, and when it ends.

The dispatcher, the version announcer and the WAL checkpoint retry on their own schedule while the database is
out (a full disk, a server restart): logging every attempt with its traceback buried the one line that says what
is wrong under hundreds that say it again. The first failure is logged with its traceback, a reminder follows
every ``remind_every`` seconds while it lasts, and one line says when it works again.
"""

from __future__ import annotations

import logging
import time


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

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.failures += 1
        if self.failures == 1:
            self._since = self._reminded = now
            self._log.warning("%s failed; retrying: %s: %s", self.what, type(exc).__name__, exc, exc_info=exc)
        elif now - self._reminded >= self.remind_every:
            self._reminded = now
            self._log.warning("%s still fails after %.0f s (%d attempts); retrying: %s: %s", self.what,
                              now - self._since, self.failures, type(exc).__name__, exc)
        else:
            self._log.debug("%s failed again (%d attempts): %s: %s", self.what, self.failures, type(exc).__name__, exc)

    def worked(self) -> None:
        if self.failures:
            self._log.warning("%s works again after %.1f s (%d failed attempts)", self.what,
                              time.monotonic() - self._since, self.failures)
            self.failures = 0
