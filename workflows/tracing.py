"""Log context and trace spans: which run, step and Slack thread a log line or a span belongs to.

Why contextvars: a run executes as an asyncio task and every task copies the context it was created in,
so fields set around a run (``log_context(run_id=...)``) follow it into its steps, agent calls and the
tasks they start, without passing a logger around. :class:`ContextFilter` copies them onto each log record
(``bot/logs.py`` installs it), where the JSON formatter prints them.

Spans use OpenTelemetry when ``opentelemetry-api`` is installed (the ``otel`` extra; an SDK and exporter
configured by the deployment decide where they go). Without it, :func:`span` is a no-op context manager,
so the engine never depends on it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

#: Fields a log line may carry; the JSON formatter prints these when present.
CONTEXT_FIELDS = ("run_id", "workflow_id", "path", "step_id", "slack_thread", "team_id", "channel_id", "schedule_id")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("threadflow_log_context", default=_EMPTY)

_otel_trace: Any
try:  # pragma: no cover - depends on the optional extra
    _otel_trace = importlib.import_module("opentelemetry.trace")
except ImportError:  # the default: spans are no-ops
    _otel_trace = None


def tracing_available() -> bool:
    """True when opentelemetry-api is installed (spans then go wherever its SDK is configured to send them)."""
    return _otel_trace is not None


def current_context() -> dict[str, Any]:
    return dict(_context.get())


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Add ``fields`` (``run_id=..., path=...``; None values are ignored) to every log line inside the block."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current log context onto each record (fields passed with ``extra=`` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


def _attribute(value: Any) -> str | bool | int | float:
    return value if isinstance(value, str | bool | int | float) else str(value)


@contextlib.contextmanager
def span(name: str, **attrs: Any) -> Iterator[Any]:
    """An OpenTelemetry span named ``name`` (``threadflow.*`` attributes), or nothing without opentelemetry.

    Yields the span (or None) so callers may add attributes; an exception leaving the block is recorded
    on the span and marks it as an error, then propagates unchanged.
    """
    if _otel_trace is None:
        yield None
        return
    attributes = {f"threadflow.{k}": _attribute(v) for k, v in attrs.items() if v is not None}
    tracer = _otel_trace.get_tracer("threadflow")
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


class scope:  # noqa: N801 (used like the context-manager functions beside it)
    """Both at once: ``fields`` on every log line inside the block, and a span named ``name`` around it.

    The engine wraps a run (``scope("run", run_id=..., workflow_id=...)``) and each step attempt
    (``scope("step", path=..., step_id=...)``); agents wrap model and tool calls in :func:`span`.
    A class, not a generator: it runs once per step, and without OpenTelemetry it only sets the log context.
    """

    __slots__ = ("_fields", "_name", "_span", "_token")

    def __init__(self, name: str, **fields: Any) -> None:
        self._name = name
        self._fields = fields
        for value in fields.values():  # None values are left out (a step's fields have none: no second dict)
            if value is None:
                self._fields = {k: v for k, v in fields.items() if v is not None}
                break
        self._span: Any = None

    def __enter__(self) -> Any:
        self._token = _context.set({**_context.get(), **self._fields})
        if _otel_trace is None:
            return None
        self._span = span(self._name, **self._fields)
        try:
            return self._span.__enter__()
        except BaseException:
            _context.reset(self._token)
            raise

    def __exit__(self, *exc: Any) -> bool | None:
        try:
            if self._span is not None:
                return bool(self._span.__exit__(*exc))
            return None
        finally:
            _context.reset(self._token)


__all__ = ["CONTEXT_FIELDS", "ContextFilter", "current_context", "log_context", "scope", "span", "tracing_available"]
