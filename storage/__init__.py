"""Storage: the database handle, the schema and the repositories the engine, memory and bot use."""

from .database import DEFAULT_DATABASE_URL, ChangeSignal, Database, normalize_url
from .errors import DatabaseURLError, MigrationError, StorageError
from .memory_store import MemoryStore
from .retention import PruneReport, prune
from .schedule_store import ScheduleRecord, ScheduleStore

__all__ = [
    "DEFAULT_DATABASE_URL",
    "ChangeSignal",
    "Database",
    "DatabaseURLError",
    "MemoryStore",
    "MigrationError",
    "PruneReport",
    "ScheduleRecord",
    "ScheduleStore",
    "StorageError",
    "normalize_url",
    "prune",
]
