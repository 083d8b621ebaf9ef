"""Storage: the database handle, the schema and the repositories the engine, memory and bot use."""

from .database import DEFAULT_DATABASE_URL, ChangeSignal, Database, normalize_url
from .errors import DatabaseURLError, MigrationError, StorageError
from .memory_store import MemoryStore
from .retention import PruneReport, prune
from .run_queries import RunCursor, RunFilter, RunPage, RunQueries, Visibility
from .schedule_store import ScheduleRecord, ScheduleStore

__all__ = [
    "DEFAULT_DATABASE_URL",
    "ChangeSignal",
    "Database",
    "DatabaseURLError",
    "MemoryStore",
    "MigrationError",
    "PruneReport",
    "RunCursor",
    "RunFilter",
    "RunPage",
    "RunQueries",
    "ScheduleRecord",
    "ScheduleStore",
    "StorageError",
    "Visibility",
    "normalize_url",
    "prune",
]
