"""In-process observation hooks: metrics, logs and traces subscribe here; the engine only emits.

Observers are plain callables ``observer(kind, data)``. A failing observer is logged and never breaks a run.

Kinds and their data:
    run.started      workflow_id
    run.finished     workflow_id, status
    step.finished    workflow_id, step_id, status ("success"|"failed"|"suspended"), duration
    step.retrying    workflow_id, step_id, attempt
    step.timeout     workflow_id, step_id (an attempt ran past its timeout)
    run.recovered    workflow_id, recoveries (a run taken over from a process that died holding it)
    loop.stalled     seconds, workflow_id, step_id (None when no step was running)
    approval.decided workflow_id, step_id, decision ("approved"|"rejected"|"resumed"), by
    llm.call         model, prompt_tokens, completion_tokens, duration, error (None or the error type)
    llm.output_retry model, agent (a structured answer did not fit and was asked for again)
    llm.fallback     model, capability (refused by the server: json_schema, json_object, stream_options, ...)
    commit           batch_size, duration
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("threadflow.observe")

Observer = Callable[[str, dict[str, Any]], None]
_observers: list[Observer] = []


def add_observer(observer: Observer) -> None:
    if observer not in _observers:
        _observers.append(observer)


def remove_observer(observer: Observer) -> None:
    if observer in _observers:
        _observers.remove(observer)


def observing() -> bool:
    """Whether anything observes: per-step emits skip building their data when nothing would read it."""
    return bool(_observers)


def emit(kind: str, **data: Any) -> None:
    for observer in list(_observers):
        try:
            observer(kind, data)
        except Exception:
            log.exception("observer %r failed on %s", observer, kind)
