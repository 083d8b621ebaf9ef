"""Building the engine the way every entry point (CLI, serve, worker, dev) needs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.progress_store import ProgressStore
from workflows import CommittedWorkflow, Engine
from workflows.loading import load_workflows

from .settings import Settings


def build_memory(settings: Settings, engine: Engine) -> Any:
    """The memory threads agents share, on the engine's own database."""
    try:
        from workflows.memory import Memory
        from workflows.models import resolve_embedder
    except ImportError:  # pragma: no cover - agents are part of every build; this keeps the core usable alone
        return None
    embedder = resolve_embedder(settings.embedder, settings) if settings.embedder else None
    return Memory(engine.db, embedder=embedder)


def build_engine(settings: Settings, *, execute: bool = True, workflows: Sequence[CommittedWorkflow] | None = None,
                 **kwargs: Any) -> Engine:
    """An engine on ``THREADFLOW_DATABASE_URL`` with the built-in and configured workflows registered (``workflows``:
    only these)."""
    kwargs.setdefault("lease_seconds", settings.lease_seconds)
    kwargs.setdefault("poll_interval", settings.poll_interval)
    kwargs.setdefault("max_recoveries", settings.max_recoveries)
    kwargs.setdefault("step_timeout", settings.step_timeout)
    engine = Engine(settings.database_url, execute=execute, **kwargs)
    engine.memory = build_memory(settings, engine)
    if execute and settings.slack_bot_token is not None:
        # Agent steps whose output is posted publish their progress, so the process rendering the run (this
        # one or another replica) can stream the answer into the run's Slack thread as it is written.
        engine.progress = ProgressStore(engine.db)
    engine.register(*(load_workflows(settings.workflows) if workflows is None else workflows))
    return engine
