"""Errors raised by the storage layer.

    StorageError
     +-- DatabaseURLError        the configured URL is not one threadflow can use (user's fault)
     +-- DatabaseSettingError    a THREADFLOW_SQLITE_* setting is malformed (user's fault)
     +-- DatabaseUnavailable     the database cannot be reached, opened or written (retried first, when it may pass)
     +-- MigrationError          the schema could not be brought up to date
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of storage errors."""


class DatabaseURLError(StorageError, ValueError):
    """The database URL is malformed or names an unsupported database."""


class DatabaseSettingError(StorageError, ValueError):
    """A database setting other than the URL (``THREADFLOW_SQLITE_*``) is malformed; the message names it."""


class DatabaseUnavailable(StorageError):
    """The database cannot be used right now: unreachable, read-only, full, or it kept failing past the retries.

    The message names the database (without its password) and the driver's reason, never SQL text.
    """


class MigrationError(StorageError):
    """Applying the migrations failed."""
