"""Storage: the database handle, the schema and the repositories the engine, memory and bot use.

Names are imported on first use (see :mod:`storage.lazy`), so importing the package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:
    from .database import ChangeSignal, Database
    from .errors import DatabaseURLError, MigrationError, StorageError
    from .installations import InstallationRows, OAuthStates
    from .memory_store import MemoryStore
    from .retention import PruneReport, prune
    from .run_listing import list_runs_readonly
    from .run_queries import RunCursor, RunFilter, RunPage, RunQueries, Visibility
    from .schedule_store import ScheduleRecord, ScheduleStore
    from .urls import DEFAULT_DATABASE_URL, normalize_url

_EXPORTS = {
    "DEFAULT_DATABASE_URL": ".urls",
    "ChangeSignal": ".database",
    "Database": ".database",
    "normalize_url": ".urls",
    "DatabaseURLError": ".errors",
    "MigrationError": ".errors",
    "StorageError": ".errors",
    "InstallationRows": ".installations",
    "OAuthStates": ".installations",
    "MemoryStore": ".memory_store",
    "PruneReport": ".retention",
    "prune": ".retention",
    "list_runs_readonly": ".run_listing",
    "RunCursor": ".run_queries",
    "RunFilter": ".run_queries",
    "RunPage": ".run_queries",
    "RunQueries": ".run_queries",
    "Visibility": ".run_queries",
    "ScheduleRecord": ".schedule_store",
    "ScheduleStore": ".schedule_store",
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "ChangeSignal",
    "Database",
    "DatabaseURLError",
    "InstallationRows",
    "MemoryStore",
    "MigrationError",
    "OAuthStates",
    "PruneReport",
    "RunCursor",
    "RunFilter",
    "RunPage",
    "RunQueries",
    "ScheduleRecord",
    "ScheduleStore",
    "StorageError",
    "Visibility",
    "list_runs_readonly",
    "normalize_url",
    "prune",
]
