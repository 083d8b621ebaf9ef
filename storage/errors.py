"""Errors raised by the storage layer.

    StorageError
     +-- DatabaseURLError        the configured URL is not one threadflow can use (user's fault)
     +-- MigrationError          the schema could not be brought up to date
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of storage errors."""


class DatabaseURLError(StorageError, ValueError):
    """The database URL is malformed or names an unsupported database."""


class MigrationError(StorageError):
    """Applying the migrations failed."""
